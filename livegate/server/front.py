"""The client port's front door: one listener for WebSocket and plain HTTP.

``websockets`` serves the WebSocket handshakes and connections; aiohttp serves everything
else on the same port (HTTP-streaming, SSE, the emulation endpoint, /health, /ready, the demo
page). A new connection starts as a ``FrontConnection`` (the ``websockets`` connection class
of the listener), which holds its first bytes until the request head is complete, then either
behaves as a plain ``websockets`` connection (a WebSocket upgrade to a WebSocket path) or hands
the socket to an aiohttp request handler. A peer must send its head within HEAD_TIMEOUT
(``close_stalled``, called by the server's sweep).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Collection
from typing import Any

from websockets.asyncio.server import ServerConnection

__all__ = ["FrontConnection", "front_connection_class", "MAX_HEAD", "HEAD_TIMEOUT"]

#: A request head larger than this is refused (aiohttp and websockets limit headers to 8 KiB
#: per line; this bounds what the front holds before either sees it).
MAX_HEAD = 65536
#: Seconds a new connection has to send its whole request head (websockets' open_timeout).
HEAD_TIMEOUT = 10.0


#: The Upgrade header asking for WebSocket, anywhere in the head (few allocations: this runs
#: for every connection, and its garbage shows in the memory a connection costs).
_UPGRADE = re.compile(rb"\r\nupgrade[ \t]*:[^\r\n]*websocket", re.IGNORECASE)
_REQUEST_LINE = re.compile(rb"GET ([^ ?\r\n]*)[^ \r\n]* HTTP/1\.[01]\r\n")


def _is_websocket_request(head: bytes, paths: Collection[bytes]) -> bool:
    """A GET to a WebSocket path with ``Upgrade: websocket`` (any case, any place)."""
    line = _REQUEST_LINE.match(head)
    return line is not None and line.group(1) in paths and _UPGRADE.search(head) is not None


class FrontConnection(ServerConnection):
    """A client-port connection (see the module docstring). Until its request head is read
    it only buffers; then it either behaves as a plain ``websockets`` connection (every
    method delegates to ``ServerConnection``) or hands its socket to aiohttp.

    Subclasses made by ``front_connection_class`` set ``ws_paths`` (paths served by
    ``websockets``), ``http_factory`` (aiohttp's protocol factory for the rest) and
    ``pending`` (connections still reading their head, for ``close_stalled``). After the
    hand-over a connection keeps two small attributes (``_front_head`` None, ``_front_since``):
    measured, a WebSocket connection costs what it did before (S4 RSS within 0.05 KiB). A
    dict of pending connections with their transports cost 1.3 KiB a connection in RSS,
    a per-connection timer more: hence the set and the sweep."""

    ws_paths: Collection[bytes] = ()
    http_factory: Callable[[], asyncio.Protocol] | None = None
    pending: set[FrontConnection] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not passed to websockets yet: its handler task starts only for WebSocket requests.
        self.transport = transport  # type: ignore[assignment]  # websockets sets it again at the hand-over
        self._front_head: bytes | bytearray | None = b""
        self._front_since = time.monotonic()
        self.pending.add(self)

    @classmethod
    def close_stalled(cls, now: float, timeout: float | None = None) -> int:
        """Close the connections that have not sent their whole request head within
        ``timeout`` (HEAD_TIMEOUT) seconds (a slowloris); returns how many."""
        limit = HEAD_TIMEOUT if timeout is None else timeout
        stalled = [conn for conn in cls.pending if now - conn._front_since > limit]
        for conn in stalled:
            cls.pending.discard(conn)
            conn.transport.close()
        return len(stalled)

    def data_received(self, data: bytes) -> None:
        head = self._front_head
        if head is None:
            ServerConnection.data_received(self, data)
            return
        transport = self.transport
        if isinstance(head, bytearray):  # the head comes in pieces: search the new bytes (and 3 before)
            start = len(head) - 3
            head.extend(data)
            complete = head.find(b"\r\n\r\n", start) >= 0
        else:
            complete = b"\r\n\r\n" in data
            head = data
        if not complete:
            if len(head) > MAX_HEAD:
                self.pending.discard(self)
                transport.close()
            elif isinstance(head, bytes):
                self._front_head = bytearray(head)
            return
        head = bytes(head)
        self._front_head = None
        self.pending.discard(self)
        if self.http_factory is None or _is_websocket_request(head, self.ws_paths):
            ServerConnection.connection_made(self, transport)
            ServerConnection.data_received(self, head)
            return
        proto = self.http_factory()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(head)

    def eof_received(self) -> None:
        if self._front_head is None:
            return ServerConnection.eof_received(self)
        return None  # before the head: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._front_head is None:
            ServerConnection.connection_lost(self, exc)
        else:
            self.pending.discard(self)  # closed before the head was complete: nothing was started

    def pause_writing(self) -> None:
        if self._front_head is None:
            ServerConnection.pause_writing(self)

    def resume_writing(self) -> None:
        if self._front_head is None:
            ServerConnection.resume_writing(self)


def front_connection_class(ws_paths: Collection[str], http_factory: Callable[[], asyncio.Protocol]) -> Any:
    """The ``create_connection`` class for ``websockets.serve`` that sends WebSocket requests
    to ``ws_paths`` to websockets and everything else to ``http_factory``."""
    return type("ClientPortConnection", (FrontConnection,), {
        "ws_paths": frozenset(p.encode() for p in ws_paths), "http_factory": staticmethod(http_factory),
        "pending": set()})
