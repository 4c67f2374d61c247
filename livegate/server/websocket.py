"""The WebSocket transport: handshake checks, the read loop, and direct writes.

Writes go straight into the asyncio transport, as ``websockets.broadcast`` does, but the
frame is built once per payload and shared: server frames are unmasked, so the bytes are
the same for every connection. The transport's buffer is the connection's queue, bounded
by ``client.queue_max_size``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import http
import logging
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.protocol import State as WsState
from websockets.typing import Subprotocol

from livegate.handlers.client import Client
from livegate.metrics import METRICS
from livegate.protocol import codes
from livegate.protocol.codes import Disconnect

if TYPE_CHECKING:
    from livegate.node import Node

__all__ = ["WebSocketClient", "text_frame", "origin_allowed", "select_subprotocol"]

log = logging.getLogger("livegate.websocket")
_OPEN = WsState.OPEN
_CLOSED = WsState.CLOSED


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 5.2) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class WebSocketClient(Client):
    __slots__ = ("ws", "_proto", "_transport", "_write_timeout")

    def __init__(self, node: Node, ws: ServerConnection) -> None:
        super().__init__(node)
        self.ws = ws
        self._proto = ws.protocol
        self._transport = ws.transport
        self._write_timeout = node.config.websocket.write_timeout

    def _send(self, payload: bytes, frame: bytes | None) -> None:
        if self._proto.state is not _OPEN:
            return
        if frame is None:
            frame = text_frame(payload)
        transport = self._transport
        if transport.get_write_buffer_size() + len(frame) > self._queue_max:
            self.close(codes.SLOW)
            return
        transport.write(frame)
        METRICS.bytes_out.value += len(frame)

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    def _close(self, disconnect: Disconnect) -> None:
        if self._proto.state is _OPEN:
            # A close reason is at most 123 bytes of UTF-8; cut at a character boundary.
            reason = disconnect.reason.encode()[:123].decode(errors="ignore")
            try:
                self._proto.send_close(disconnect.code, reason)
                self.ws.send_data()
            except Exception:
                log.exception("close failed", extra={"client": self.client_id, "code": disconnect.code})
                self._transport.abort()
                return
        # A peer that does not answer the close frame (or never reads) is cut off.
        asyncio.get_running_loop().call_later(self._write_timeout, self._abort)

    def _abort(self) -> None:
        if self._proto.state is not _CLOSED:
            self._transport.abort()


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """A request without Origin is not from a browser and passes; a browser needs its
    origin in the allow-list ("*" and shell-style patterns work), or the same host."""
    if origin is None:
        return True
    origin = origin.lower()
    for pattern in allowed:
        if pattern == "*" or fnmatch.fnmatchcase(origin, pattern.lower()):
            return True
    return not allowed and host is not None and urlsplit(origin).netloc == host.lower()


def select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """JSON only: accept no subprotocol or centrifuge-json; refuse a protobuf-only client."""
    if not offered:
        return None
    if "centrifuge-json" in offered:
        return Subprotocol("centrifuge-json")
    if "centrifuge-protobuf" in offered:
        raise NegotiationError("this server speaks the JSON protocol only")
    return None


def make_process_request(node: Node):  # type: ignore[no-untyped-def]
    prefix = node.config.websocket.handler_prefix
    origins = node.config.client.allowed_origins

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path == "/health":
            return connection.respond(http.HTTPStatus.OK, '{"status":"ok"}\n')
        if path == "/ready":
            if not node.ready:
                status = "draining" if node.draining else "engine unavailable"
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f'{{"status":"{status}"}}\n')
            return connection.respond(http.HTTPStatus.OK, '{"status":"ready"}\n')
        if path != prefix:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        if node.draining:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        if "format=protobuf" in query or "cf_protocol=protobuf" in query:
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "this server speaks the JSON protocol only\n")
        if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), origins):
            log.info("origin rejected", extra={"origin": request.headers.get("Origin")})
            return connection.respond(http.HTTPStatus.FORBIDDEN, "origin not allowed\n")
        return None

    return process_request


async def serve_connection(node: Node, ws: ServerConnection, registry: set[Client]) -> None:
    """The read loop of one connection: the only task a connection has."""
    from livegate.server.lifecycle import release_client

    client = WebSocketClient(node, ws)
    registry.add(client)
    try:
        async for message in ws:
            if not isinstance(message, str):
                log.info("binary frame", extra={"client": client.client_id, "user": client.user})
                client.close(codes.BAD_REQUEST)
                break
            await client.handle_frame(message)
            if client.closing is not None:
                break
    except ConnectionClosed:
        pass
    finally:
        registry.discard(client)
        await release_client(client)
