"""What the async and sync publishers share: results, errors, encodings, routing, and the
reading of each door's replies. No I/O here.

Errors are the server's own classes (``livegate.protocol.codes``): a door that answers with
error code 102 raises ``ErrUnknownChannel`` whichever door it was, and any other code the
matching ``ClientError`` subclass (a plain ``ClientError`` for a code livegate does not
define). A door that cannot be reached raises ``PublisherUnavailable``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from livegate.errors import BrokerUnavailable, ClientError
from livegate.protocol import codes
from livegate.protocol.jsontext import JsonTextError, dumps, is_json, loads

__all__ = [
    "PublishResult", "PublisherUnavailable", "BroadcastResult", "need_channels", "error_for_code",
    "encode_data", "api_body", "fcall_options", "fcall_result", "fcall_error", "redis_failure", "http_error",
    "http_result", "broadcast_results", "shard_index", "dead_letter_error", "entry_id_key", "delivered",
    "dead_letter_scan_start", "dead_letter_page", "DEAD_PAGE", "STREAM_GROUP", "FUNCTION",
]

#: The Redis function a publish calls (livegate/channels/redis/livegate.lua).
FUNCTION = "livegate_publish"
#: The consumer group every livegate instance reads ``{prefix}.api.stream`` with.
STREAM_GROUP = "livegate"


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a publication landed in its channel's stream.

    ``offset`` and ``epoch`` are 0 and ``""`` when the namespace keeps no history. Through the
    Redis API stream the command runs later, on whichever instance reads it first: offset and
    epoch are not known then (0, ``""``) and ``entry_id`` is the stream entry's id (``wait``
    waits until an instance executed it and raises its error if it failed).
    """

    offset: int
    epoch: str
    entry_id: str = ""


class PublisherUnavailable(BrokerUnavailable):
    """The door cannot be reached right now (Redis or the HTTP API is down, unreachable, or
    timed out). A publish that timed out may or may not have happened: retry it with the same
    ``idempotency_key`` to publish it exactly once."""

    temporary = True


_BY_CODE: dict[int, type[ClientError]] = {
    cls.code: cls for cls in (
        codes.ErrInternal, codes.ErrUnauthorized, codes.ErrUnknownChannel, codes.ErrPermissionDenied,
        codes.ErrMethodNotFound, codes.ErrAlreadySubscribed, codes.ErrLimitExceeded, codes.ErrBadRequest,
        codes.ErrNotAvailable, codes.ErrTokenExpired, codes.ErrExpired, codes.ErrTooManyRequests,
        codes.ErrUnrecoverablePosition, codes.ErrConflict,
    )
}


def error_for_code(code: int, message: str) -> ClientError:
    """The ``ClientError`` subclass of a server error code, carrying the server's message."""
    cls = _BY_CODE.get(code)
    return cls(message=message) if cls is not None else ClientError(code, message)


# -- encoding --------------------------------------------------------------------------------

_BYTES = (bytes, bytearray, memoryview)


def encode_data(data: Any, *, binary: bool = False) -> bytes:
    """Publication data as bytes: ``bytes`` are taken as they are (JSON text, or any bytes
    with ``binary=True``), anything else is encoded as JSON (a ``str`` is a JSON string).

    Raises:
        ErrBadRequest: ``data`` cannot be encoded as JSON, or bytes are not JSON text.
        TypeError: ``binary=True`` with something that is not bytes.
    """
    if binary:
        if not isinstance(data, _BYTES):
            raise TypeError(f"binary=True needs bytes, not {type(data).__name__}")
        return bytes(data)
    if isinstance(data, _BYTES):
        raw = bytes(data)
        # Checked before it leaves: in a request body, bytes that are not one JSON value would
        # change the body around them; and every door answers alike.
        if not is_json(raw):
            raise codes.ErrBadRequest(message="bad request: data must be JSON text (binary=True for other bytes)")
        return raw
    try:
        return dumps(data)
    except JsonTextError as exc:
        raise codes.ErrBadRequest(message=f"bad request: data is not JSON-serializable: {exc}") from None


def _json(value: Any) -> bytes:
    try:
        return dumps(value)
    except JsonTextError as exc:
        raise codes.ErrBadRequest(message=f"bad request: {exc}") from None


def api_body(method: str, target: str | Sequence[str], data: Any, *, binary: bool = False,
             idempotency_key: str | None = None, tags: Mapping[str, str] | None = None) -> bytes:
    """The server API body of ``publish`` (``target`` a channel) or ``broadcast`` (a list of
    channels). ``data`` is encoded as ``encode_data`` does and spliced in as it is, so that it
    reaches subscribers byte for byte; with ``binary`` it goes as ``b64data``. The HTTP API,
    the Redis API stream and the PostgreSQL outbox all take this body.

    Raises:
        ErrBadRequest: as ``encode_data``.
    """
    if method not in ("publish", "broadcast"):
        raise ValueError(f"api_body builds publish and broadcast bodies, not {method!r}")
    if (method == "publish") != isinstance(target, str):
        raise TypeError("publish takes one channel, broadcast a list of channels")
    raw = encode_data(data, binary=binary)
    key = b"channel" if method == "publish" else b"channels"
    parts = [b'{"', key, b'":', _json(target if isinstance(target, str) else list(target))]
    if binary:
        parts += [b',"b64data":"', base64.b64encode(raw), b'"']
    else:
        parts += [b',"data":', raw]
    if idempotency_key:
        parts += [b',"idempotency_key":', _json(idempotency_key)]
    if tags:
        parts += [b',"tags":', _json(dict(tags))]
    parts.append(b"}")
    return b"".join(parts)


BroadcastResult = list[PublishResult | ClientError]


def need_channels(channels: Sequence[str]) -> list[str]:
    """The channels of a broadcast: a list, not empty."""
    if isinstance(channels, str):
        raise TypeError("broadcast takes a list of channels")
    if not channels:
        raise codes.ErrBadRequest(message="bad request: channels is required")
    return list(channels)


# -- the Redis function door -----------------------------------------------------------------


def fcall_options(prefix: str, idempotency_key: str | None, tags: Mapping[str, str] | None) -> bytes:
    options: dict[str, Any] = {"prefix": prefix}
    if idempotency_key:
        options["idempotency_key"] = idempotency_key
    if tags:
        options["tags"] = dict(tags)
    return _json(options)


def fcall_result(reply: Any) -> PublishResult:
    """``[offset, epoch]`` (``[offset, epoch, 1]`` when an earlier publish with the same
    idempotency key won: the same position, nothing published again)."""
    offset, epoch = reply[0], reply[1]
    return PublishResult(int(offset), epoch.decode() if isinstance(epoch, bytes) else str(epoch))


#: Redis errors that say "not now" rather than "never": the door is unavailable.
_REDIS_TEMPORARY = ("LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY")


def fcall_error(message: str) -> ClientError | PublisherUnavailable:
    """The typed error of an error reply to ``FCALL livegate_publish`` (redis-py's message,
    without the ``ERR`` prefix)."""
    text = message.removeprefix("ERR ").strip()
    if text.startswith(_REDIS_TEMPORARY):
        return PublisherUnavailable(f"redis: {text}")
    if text.startswith(("NOPERM", "NOAUTH", "WRONGPASS")):
        return codes.ErrPermissionDenied(message=f"permission denied: redis: {text}")
    if "function not found" in text.lower():
        return codes.ErrNotAvailable(message="not available: the livegate Redis functions are not loaded "
                                             "(no livegate server has started on this Redis)")
    if not text.startswith(f"{FUNCTION}: "):
        return codes.ErrInternal(message=f"internal server error: redis: {text}")
    text = text.removeprefix(f"{FUNCTION}: ")
    if text.startswith("unknown channel namespace"):
        return codes.ErrUnknownChannel(message=f"unknown channel: {text}")
    if text.startswith("no livegate config under prefix"):
        return codes.ErrNotAvailable(message=f"not available: {text} (is the prefix engine.redis.prefix?)")
    if text.startswith("bad config entry"):
        return codes.ErrInternal(message=f"internal server error: {text}")
    return codes.ErrBadRequest(message=f"bad request: {text}")


def redis_failure(exc: BaseException) -> ClientError | PublisherUnavailable:
    """The typed error of a failed Redis call (redis-py's exceptions, sync or asyncio)."""
    from redis import exceptions as rx

    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError | rx.NoPermissionError):
        return codes.ErrPermissionDenied(message=f"permission denied: redis: {exc}")
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | rx.ReadOnlyError | OSError | TimeoutError):
        return PublisherUnavailable(f"redis: {exc or type(exc).__name__}")
    if isinstance(exc, rx.ResponseError):
        return fcall_error(str(exc))
    return codes.ErrInternal(message=f"internal server error: redis: {exc}")


def shard_index(channel: str, shards: int) -> int:
    """Which of ``engine.redis.address`` holds a channel: a jump consistent hash of the
    channel name's BLAKE2b-64, as livegate's redis engine computes it."""
    if shards <= 1:
        return 0
    key = int.from_bytes(hashlib.blake2b(channel.encode(), digest_size=8).digest(), "big")
    b, j = -1, 0
    while j < shards:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


# -- the HTTP API door -----------------------------------------------------------------------


def http_error(status: int, body: bytes, url: str) -> ClientError | PublisherUnavailable:
    """The typed error of an HTTP answer other than 200."""
    text = body.decode("utf-8", "replace").strip()[:200]
    said = f": {text}" if text else ""
    if status == 401:
        return codes.ErrUnauthorized(message="unauthorized: the server API refused the API key (HTTP 401)")
    if status == 404:
        return codes.ErrMethodNotFound(
            message=f"method not found: {url} answered 404 (the URL must be the API's prefix, e.g. "
                    "http://127.0.0.1:8001/api)")
    if status == 413:
        return codes.ErrBadRequest(message=f"bad request: body larger than http_api.max_body_size (HTTP 413){said}")
    if status in (400, 415):
        return codes.ErrBadRequest(message=f"bad request: HTTP {status}{said}")
    if status >= 500:
        return PublisherUnavailable(f"{url}: HTTP {status}{said}")
    return codes.ErrInternal(message=f"internal server error: {url}: unexpected HTTP {status}{said}")


def _reply(body: bytes) -> Any:
    try:
        reply = loads(body)
    except JsonTextError:
        reply = None
    if not isinstance(reply, dict):
        raise codes.ErrInternal(message="internal server error: the server API answered something else than JSON")
    return reply


def _error_of(reply: dict[str, Any]) -> ClientError | None:
    error = reply.get("error")
    if isinstance(error, dict):
        return error_for_code(int(error.get("code", 100)), str(error.get("message", "")))
    return None


def _position(result: Any) -> PublishResult:
    if not isinstance(result, dict):
        return PublishResult(0, "")
    return PublishResult(int(result.get("offset") or 0), str(result.get("epoch") or ""))


def http_result(body: bytes) -> PublishResult:
    """``{"result": {"offset", "epoch"}}`` (``{}`` without history) or ``{"error": ...}``."""
    reply = _reply(body)
    if (error := _error_of(reply)) is not None:
        raise error
    return _position(reply.get("result"))


def broadcast_results(body: bytes, channels: int) -> list[PublishResult | ClientError]:
    """``{"result": {"responses": [...]}}``: one result or error per channel, in order."""
    reply = _reply(body)
    if (error := _error_of(reply)) is not None:
        raise error
    responses = (reply.get("result") or {}).get("responses")
    if not isinstance(responses, list) or len(responses) != channels:
        raise codes.ErrInternal(message="internal server error: broadcast answered no response per channel")
    out: list[PublishResult | ClientError] = []
    for item in responses:
        item = item if isinstance(item, dict) else {}
        out.append(_error_of(item) or _position(item.get("result")))
    return out


# -- the Redis API stream door ---------------------------------------------------------------


def entry_id_key(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry id (``"<ms>-<seq>"``) as a sortable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def dead_letter_error(error: str) -> ClientError:
    """The typed error of a dead letter's ``error`` field: ``"<code>: <message>"`` for a
    command that failed, or why the entry could not be run at all."""
    code, sep, message = error.partition(": ")
    if sep and code.isdigit():
        return error_for_code(int(code), message)
    if error.startswith("internal error"):
        return codes.ErrInternal(message=f"internal server error: {error}", temporary=False)
    return codes.ErrBadRequest(message=f"bad request: {error}")


def delivered(groups: Sequence[Mapping[Any, Any]], entry_id: str) -> bool:
    """Whether livegate's consumer group has read past ``entry_id`` (XINFO GROUPS)."""
    for group in groups:
        name = group.get("name", group.get(b"name"))
        if name in (STREAM_GROUP, STREAM_GROUP.encode()):
            last = group.get("last-delivered-id", group.get(b"last-delivered-id"))
            return last is not None and entry_id_key(last) >= entry_id_key(entry_id)
    return False


def dead_letter_scan_start(entry_id: str) -> str:
    """Where to look for an entry's dead letter: it was written after the entry was read, so
    after the entry's time (a minute earlier, in case the Redis clock stepped back)."""
    ms, _ = entry_id_key(entry_id)
    return f"{max(ms - 60_000, 0)}-0"


#: Entries of the dead-letter stream read per XRANGE.
DEAD_PAGE = 500


def dead_letter_page(entries: Any, entry_id: str) -> str | None:
    """Look for ``entry_id``'s dead letter in one page of ``XRANGE {prefix}.api.dead`` (at
    most ``DEAD_PAGE`` entries): raise its error if it is there; else return where the next
    page starts, or None after the last page.

    Raises:
        ClientError: the error the entry was dead-lettered with.
    """
    wanted = entry_id.encode()
    for _, fields in entries or ():
        if fields and fields.get(b"id") == wanted:
            raise dead_letter_error(fields.get(b"error", b"").decode("utf-8", "replace"))
    if not entries or len(entries) < DEAD_PAGE:
        return None
    last = entries[-1][0]
    return "(" + (last.decode() if isinstance(last, bytes) else str(last))
