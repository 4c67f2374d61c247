"""JSON text exactly as RFC 8259 defines it, and payloads kept as their sender wrote them.

orjson is fast and strict, but stricter than the RFC in two ways that matter here: it refuses
lone surrogate escapes (``"\\ud83d"``: valid JSON, what a browser sends after cutting a string
in the middle of an emoji) and turns integers beyond 64 bits into floats. Payloads must pass
through byte for byte, so:

* ``loads`` parses with orjson and, where orjson refuses valid JSON, with the standard library's
  parser (``NaN``/``Infinity`` refused, as the RFC does);
* ``loads_with_spans`` also returns where each member's value stands in the text, two levels
  deep, so a payload can be cut out of a command or a request body as raw text;
* ``dumps`` encodes a value back to compact JSON (``\\u`` escapes where orjson cannot encode).
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["JsonTextError", "RawJson", "loads", "loads_with_spans", "dumps", "is_json", "MAX_DEPTH",
           "depth_within", "has_surrogate_escape"]

Span = tuple[int, int]

#: Payloads may nest arrays and objects this deep, at every door (the Redis function too).
MAX_DEPTH = 250


class JsonTextError(ValueError):
    """Not JSON text (RFC 8259)."""


class RawJson(bytes):
    """A JSON value as its sender wrote it (compact or not, escapes untouched)."""

    __slots__ = ()


def _refuse_constant(name: str) -> Any:
    raise JsonTextError(f"{name} is not JSON")


#: The standard library's string scanner (C): (text, index after the quote) -> (str, end).
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_raw_decode = _DECODER.raw_decode
_WS = re.compile(r"[ \t\n\r]*")
_ws_match = _WS.match


def _skip(s: str, pos: int) -> int:
    """The position after the whitespace at ``pos``."""
    return _ws_match(s, pos).end()  # type: ignore[union-attr]  # "*" always matches


def loads(text: str | bytes) -> Any:
    """Parse JSON text. Raises JsonTextError."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        value, _ = _whole(text)
    except JsonTextError:
        raise
    except (ValueError, RecursionError) as exc:
        raise JsonTextError(str(exc) if not isinstance(exc, RecursionError) else "nested too deeply") from None
    return value


def _text(text: str | bytes) -> str:
    if isinstance(text, bytes | bytearray | memoryview):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonTextError(f"not UTF-8: {exc.reason}") from None
    return text


def _whole(text: str | bytes) -> tuple[Any, str]:
    s = _text(text)
    pos = _skip(s, 0)
    value, end = _raw_decode(s, pos)
    if _skip(s, end) != len(s):
        raise JsonTextError("extra data after the JSON value")
    return value, s


def loads_with_spans(text: str | bytes) -> tuple[dict[str, Any], dict[tuple[str, ...], Span], str]:
    """Parse a JSON object; also return the spans of its members' values and of the members of
    object-valued members (keys ``(name,)`` and ``(name, inner)``), and the text as a str.

    Raises:
        JsonTextError: not JSON text, or not an object.
    """
    s = _text(text)
    try:
        start = _skip(s, 0)
        if start >= len(s) or s[start] != "{":
            raise JsonTextError("not a JSON object")
        spans: dict[tuple[str, ...], Span] = {}
        obj, end = _object(s, start, (), spans, 2)
        if _skip(s, end) != len(s):
            raise JsonTextError("extra data after the JSON value")
    except JsonTextError:
        raise
    except RecursionError:
        raise JsonTextError("nested too deeply") from None
    except (ValueError, IndexError) as exc:
        raise JsonTextError(str(exc) or "invalid JSON") from None
    return obj, spans, s


def _object(s: str, pos: int, path: tuple[str, ...], spans: dict[tuple[str, ...], Span],
            levels: int) -> tuple[dict[str, Any], int]:
    """The object at ``s[pos] == "{"``; records member spans ``levels`` deep."""
    obj: dict[str, Any] = {}
    pos = _skip(s, pos + 1)
    if s[pos] == "}":
        return obj, pos + 1
    while True:
        if s[pos] != '"':
            raise JsonTextError(f"expected a member name at {pos}")
        key, pos = scanstring(s, pos + 1)
        pos = _skip(s, pos)
        if s[pos] != ":":
            raise JsonTextError(f"expected ':' at {pos}")
        start = pos = _skip(s, pos + 1)
        if levels > 1 and s[pos] == "{":
            value, pos = _object(s, pos, (*path, key), spans, levels - 1)
        else:
            value, pos = _raw_decode(s, pos)
        obj[key] = value
        spans[(*path, key)] = (start, pos)
        pos = _skip(s, pos)
        if s[pos] == ",":
            pos = _skip(s, pos + 1)
            continue
        if s[pos] == "}":
            return obj, pos + 1
        raise JsonTextError(f"expected ',' or '}}' at {pos}")


def dumps(value: Any) -> bytes:
    """Compact JSON bytes on one line. Raises JsonTextError (nested too deeply, not JSON-able)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        first = str(exc)
    try:
        # What orjson cannot encode but JSON can: lone surrogates (as \\u escapes), big integers.
        return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError):
        raise JsonTextError(first) from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def depth_within(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects at most ``limit`` deep."""
    if text.count("[") + text.count("{") <= limit:
        return True
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def has_surrogate_escape(text: str, start: int = 0, end: int | None = None) -> bool:
    """Whether a ``\\uD800``-``\\uDFFF`` escape stands in ``text[start:end]``."""
    return _SURROGATE.search(text, start, len(text) if end is None else end) is not None


def is_json(raw: bytes) -> bool:
    """Whether ``raw`` is one JSON value (RFC 8259, UTF-8)."""
    try:
        loads(raw)
    except JsonTextError:
        return False
    return True
