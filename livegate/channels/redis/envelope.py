"""The envelope: how publications, joins and leaves travel between nodes over Redis pub/sub
(and how publications sit in a channel's history stream). msgpack arrays:

version 1 (no version field; what livegate wrote before envelopes were versioned)::

    ["p", offset, epoch, data, info_json, tags_json, time_ms]
    ["j", info_json]        ["l", info_json]

version 2::

    [2, "p", offset, epoch, data, info_json, tags_json, time_ms, key, removed, prev, ...]

    (``key`` and ``removed``, of map channels, may be absent: "" and false; ``prev``, the map
    entry's value before the change, only in what is published (never stored), the base of
    per-key deltas; a reader that predates them ignores them, as the rule below says.)
    [2, "j", info_json, ...]        [2, "l", info_json, ...]

Rules that keep rolling upgrades safe: a reader of version N reads every version up to N and
ignores fields appended after the ones it knows; it refuses (never guesses at) a newer
version. Writers write the newest version every live node reads (negotiated by the cluster,
see livegate/cluster.py), so an old and a new instance on one prefix understand each other.
The Redis functions (livegate.lua) write publication envelopes in the version they are told.
``decode_envelope`` is the only reader.
"""

from __future__ import annotations

from typing import Any, Literal

import msgpack
import orjson

from livegate.protocol.types import ClientInfo, Publication

__all__ = ["ENVELOPE_VERSION", "EnvelopeError", "decode_envelope", "encode_presence_event", "Decoded"]

#: The newest envelope version this build reads and writes.
ENVELOPE_VERSION = 2

Decoded = tuple[Literal["p"], Publication] | tuple[Literal["j", "l"], ClientInfo]


class EnvelopeError(ValueError):
    """Not an envelope this build can read (garbage, or a newer version)."""


_unpackb = msgpack.unpackb


def decode_envelope(raw: bytes) -> Decoded:
    """Read any envelope version up to ENVELOPE_VERSION.

    Raises:
        EnvelopeError: the bytes are not an envelope, or one of a newer version.
    """
    try:
        message = _unpackb(raw, raw=True, use_list=True)
        if type(message) is not list or not message:
            raise EnvelopeError("not an envelope")
        head = message[0]
        # The common cases first: publications of version 2 and version 1.
        if head == 2 and len(message) >= 8 and message[1] == b"p":
            offset, data, info, tags, ms = message[2], message[4], message[5], message[6], message[7]
        elif head == b"p" and len(message) == 7:
            offset, data, info, tags, ms = message[1], message[3], message[4], message[5], message[6]
        else:
            return _other(message, head)
        if type(offset) is not int or type(data) is not bytes or type(ms) is not int:
            raise EnvelopeError("malformed publication envelope")
        if head == 2 and len(message) >= 10 and message[8]:
            key, removed = message[8], message[9]
            if type(key) is not bytes:
                raise EnvelopeError("malformed publication envelope")
            prev = message[10] if len(message) >= 11 and type(message[10]) is bytes else None
            return "p", Publication(data, offset, info or None, orjson.loads(tags) if tags else None, ms,
                                    key.decode(), removed is True or removed == 1, prev)
        return "p", Publication(data, offset, info or None, orjson.loads(tags) if tags else None, ms)
    except EnvelopeError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            orjson.JSONDecodeError, AttributeError) as exc:
        raise EnvelopeError(f"undecodable envelope: {exc}") from None


def _other(message: list[Any], head: Any) -> Decoded:
    """Joins and leaves of both versions; everything else is refused."""
    if type(head) is int:
        if head > ENVELOPE_VERSION or head < 2:
            raise EnvelopeError(f"envelope version {head} (this build reads up to {ENVELOPE_VERSION})")
        kind, fields = (message[1] if len(message) > 1 else None), message[2:]
    elif type(head) is bytes:
        kind, fields = head, message[1:]
    else:
        raise EnvelopeError("not an envelope")
    if kind in (b"j", b"l") and fields and type(fields[0]) is bytes:
        return ("j" if kind == b"j" else "l"), ClientInfo.from_json(fields[0])
    if kind == b"p":
        raise EnvelopeError("malformed publication envelope")
    raise EnvelopeError(f"unknown envelope kind {kind!r}")


def encode_presence_event(kind: Literal["j", "l"], info: ClientInfo, version: int) -> bytes:
    """A join or leave envelope of ``version``."""
    if version >= 2:
        return msgpack.packb([2, kind, info.to_json()])
    return msgpack.packb([kind, info.to_json()])
