"""Payloads as application code sees them.

Payloads travel as opaque bytes. Hooks and RPC handlers get them decoded: JSON text (all a
JSON client can send) as the Python value, decoded with livegate.protocol.jsontext so a lone
surrogate or a big integer arrives as Python has them, not as an error; bytes that are not
JSON (a Protobuf client's binary payload) as ``bytes``. What a hook or handler returns as
data goes the other way: ``bytes`` are passed on as they are (for Protobuf clients; a JSON
client that would receive bytes that are not JSON is closed with 3506), anything else is
encoded as JSON.
"""

from __future__ import annotations

from typing import Any

from livegate.protocol.jsontext import JsonTextError, loads
from livegate.protocol.types import raw_json

__all__ = ["payload_value", "payload_bytes"]


def payload_value(data: bytes | None) -> Any:
    """The decoded payload (None when the client sent none; ``bytes`` when it is not JSON)."""
    if data is None:
        return None
    try:
        return loads(data)
    except JsonTextError:
        return data


def payload_bytes(value: Any) -> bytes | None:
    """Data an application returned, as payload bytes (None stays None).

    Raises:
        JsonTextError: ``value`` is not bytes and cannot be JSON.
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return raw_json(value)
