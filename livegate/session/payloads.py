"""Payloads as application code sees them.

Payloads travel as opaque bytes; hooks and RPC handlers get them decoded. Today every
payload is JSON (the JSON codec hands over its JSON text), so decoding is ``orjson.loads``.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["payload_value"]


def payload_value(data: bytes | None) -> Any:
    """The decoded payload (None when the client sent none)."""
    return None if data is None else orjson.loads(data)
