"""Payloads as application code sees them.

Payloads travel as opaque bytes; hooks and RPC handlers get them decoded. Today every
payload is JSON (the JSON codec hands over its JSON text as the client wrote it): decoded
with livegate.protocol.jsontext, so a lone surrogate or a big integer reaches the
application as Python has them, not as an error.
"""

from __future__ import annotations

from typing import Any

from livegate.protocol.jsontext import loads

__all__ = ["payload_value"]


def payload_value(data: bytes | None) -> Any:
    """The decoded payload (None when the client sent none)."""
    return None if data is None else loads(data)
