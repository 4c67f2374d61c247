"""The codecs a server speaks, by name. Transports negotiate one of these per connection
(WebSocket: subprotocol ``centrifuge-<name>`` or ``?format=<name>``); adding a codec is its
module plus an entry here."""

from __future__ import annotations

from livegate.protocol.codec import Codec
from livegate.protocol.json_codec import JSON
from livegate.protocol.protobuf_codec import PROTOBUF

__all__ = ["CODECS", "DEFAULT_CODEC"]

CODECS: dict[str, Codec] = {JSON.name: JSON, PROTOBUF.name: PROTOBUF}

#: What a client that names no codec gets.
DEFAULT_CODEC: Codec = JSON
