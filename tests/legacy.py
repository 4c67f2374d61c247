"""How the previous release of livegate read things, for tests of upgrades next to it."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

from livegate.protocol.types import ClientInfo, Publication


def old_reader(raw: bytes) -> tuple[str, Any]:
    """How livegate read Redis envelopes before they were versioned (its code, verbatim in effect)."""
    message = msgpack.unpackb(raw, raw=True, use_list=True)
    kind = message[0]
    if kind == b"p":
        _, offset, _epoch, payload, info, tags, ms = message
        return "p", Publication(payload, offset, info or None, orjson.loads(tags) if tags else None, ms)
    return kind.decode(), ClientInfo.from_json(message[1])
