"""The client port's front door: one listener for WebSocket and plain HTTP.

``websockets`` serves the WebSocket handshakes and connections; aiohttp serves everything
else on the same port (HTTP-streaming, SSE, the emulation endpoint, /health, /ready, the demo
page). A new connection starts as a ``FrontConnection`` (the ``websockets`` connection class
of the listener), which holds its first bytes until the request head is complete, then either
becomes a plain ``websockets`` connection (a WebSocket upgrade to a WebSocket path) or hands
the socket to an aiohttp request handler. Nothing changes for WebSocket connections after the
switch: their class is ``ServerConnection`` again, with no per-read cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any

from websockets.asyncio.server import ServerConnection

__all__ = ["FrontConnection", "front_connection_class", "MAX_HEAD", "HEAD_TIMEOUT"]

#: A request head larger than this is refused (aiohttp and websockets limit headers to 8 KiB
#: per line; this bounds what the front holds before either sees it).
MAX_HEAD = 65536
#: Seconds a new connection has to send its whole request head (websockets' open_timeout).
HEAD_TIMEOUT = 10.0


def _is_websocket_request(head: bytes, paths: Collection[bytes]) -> bool:
    """A GET to a WebSocket path with ``Upgrade: websocket`` (any case, any place)."""
    line_end = head.find(b"\r\n")
    parts = head[:line_end].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET":
        return False
    if parts[1].partition(b"?")[0] not in paths:
        return False
    for line in head[line_end + 2:].split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


class FrontConnection(ServerConnection):
    """A connection whose request head has not been read yet (see the module docstring).

    Subclasses made by ``front_connection_class`` set ``ws_paths`` (paths served by
    ``websockets``) and ``http_factory`` (aiohttp's protocol factory for the rest)."""

    ws_paths: Collection[bytes] = ()
    http_factory: Callable[[], asyncio.Protocol] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not passed to websockets yet: its handler task starts only for WebSocket requests.
        self._front_transport = transport
        self._front_head = b""
        # A peer that never completes its request head (a slowloris) is cut off.
        asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._head_timeout)

    def _head_timeout(self) -> None:
        transport = self._front_transport
        if isinstance(self, FrontConnection) and transport.get_protocol() is self:
            transport.close()  # still reading the head

    def data_received(self, data: bytes) -> None:
        head = self._front_head + data
        if b"\r\n\r\n" not in head:
            if len(head) > MAX_HEAD:
                self._front_transport.close()
            else:
                self._front_head = head
            return
        transport = self._front_transport
        self._front_head = b""
        if self.http_factory is None or _is_websocket_request(head, self.ws_paths):
            self.__class__ = ServerConnection  # type: ignore[assignment]  # a plain websockets connection from here on
            transport.set_protocol(self)  # uvloop keeps the protocol's bound methods: renew them
            ServerConnection.connection_made(self, transport)
            ServerConnection.data_received(self, head)
            return
        proto = self.http_factory()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(head)

    def eof_received(self) -> None:
        return None  # before the head: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # closed before the head was complete: nothing was started

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def front_connection_class(ws_paths: Collection[str], http_factory: Callable[[], asyncio.Protocol]) -> Any:
    """The ``create_connection`` class for ``websockets.serve`` that sends WebSocket requests
    to ``ws_paths`` to websockets and everything else to ``http_factory``."""
    return type("ClientPortConnection", (FrontConnection,), {
        "ws_paths": frozenset(p.encode() for p in ws_paths), "http_factory": staticmethod(http_factory)})
