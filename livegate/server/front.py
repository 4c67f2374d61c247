"""The client port's front door: one listener for WebSocket and plain HTTP.

A new connection starts as a ``FrontDoor`` (the listener's asyncio Protocol), which holds its
first bytes until the request head is complete, then hands the socket to a
``WebSocketConnection`` (websocket.py: a WebSocket upgrade to a WebSocket path) or to an
aiohttp request handler (everything else on the same port: HTTP-streaming, SSE, the emulation
endpoint, /health, /ready, the demo page). A peer must send its head within HEAD_TIMEOUT
(``close_stalled``, called by the server's sweep).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Collection
from typing import Any

__all__ = ["FrontDoor", "front_door_class", "MAX_HEAD", "HEAD_TIMEOUT"]

#: A request head larger than this is refused (aiohttp and websockets limit headers to 8 KiB
#: per line; this bounds what the front holds before either sees it).
MAX_HEAD = 65536
#: Seconds a new connection has to send its whole request head.
HEAD_TIMEOUT = 10.0


#: The Upgrade header asking for WebSocket, anywhere in the head (few allocations: this runs
#: for every connection, and its garbage shows in the memory a connection costs).
_UPGRADE = re.compile(rb"\r\nupgrade[ \t]*:[^\r\n]*websocket", re.IGNORECASE)
_REQUEST_LINE = re.compile(rb"GET ([^ ?\r\n]*)[^ \r\n]* HTTP/1\.[01]\r\n")


_ANY_PATH = re.compile(rb"[A-Z]+ ([^ ?\r\n]*)")


def _is_api_request(head: bytes, prefixes: Collection[bytes]) -> bool:
    """A request to one of ``prefixes`` (a path equal to one, or below it)."""
    line = _ANY_PATH.match(head)
    if line is None:
        return False
    path = line.group(1)
    return any(path == p or path.startswith(p + b"/") for p in prefixes)


def _is_websocket_request(head: bytes, paths: Collection[bytes]) -> bool:
    """A GET to a WebSocket path with ``Upgrade: websocket`` (any case, any place)."""
    line = _REQUEST_LINE.match(head)
    return line is not None and line.group(1) in paths and _UPGRADE.search(head) is not None


class FrontDoor(asyncio.Protocol):
    """A client-port connection until its request head is read (see the module docstring).

    Subclasses made by ``front_door_class`` set ``ws_paths`` (paths served as WebSocket),
    ``ws_factory`` (makes the WebSocket connection for a transport), ``http_factory``
    (aiohttp's protocol factory for the rest) and ``pending`` (connections still reading
    their head, for ``close_stalled``: a set and the sweep, not a timer per connection)."""

    __slots__ = ("transport", "_head", "_since")
    ws_paths: Collection[bytes] = ()
    ws_factory: Callable[[asyncio.Transport], Any] | None = None
    http_factory: Callable[[], asyncio.Protocol] | None = None
    #: With the server API on this port: its paths, and the factory of its connections.
    api_prefixes: Collection[bytes] = ()
    api_factory: Callable[[], asyncio.Protocol] | None = None
    pending: set[FrontDoor] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self._head: bytes | bytearray = b""
        self._since = time.monotonic()
        self.pending.add(self)

    @classmethod
    def close_stalled(cls, now: float, timeout: float | None = None) -> int:
        """Close the connections that have not sent their whole request head within
        ``timeout`` (HEAD_TIMEOUT) seconds (a slowloris); returns how many."""
        limit = HEAD_TIMEOUT if timeout is None else timeout
        stalled = [conn for conn in cls.pending if now - conn._since > limit]
        for conn in stalled:
            cls.pending.discard(conn)
            conn.transport.close()
        return len(stalled)

    def data_received(self, data: bytes) -> None:
        head = self._head
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
                self._head = bytearray(head)
            return
        head = bytes(head)
        self.pending.discard(self)
        if self.ws_factory is not None and (self.http_factory is None or _is_websocket_request(head, self.ws_paths)):
            conn = self.ws_factory(transport)
            transport.set_protocol(conn)
            conn.start(head)
            return
        if self.api_factory is not None and _is_api_request(head, self.api_prefixes):
            proto = self.api_factory()
        else:
            assert self.http_factory is not None
            proto = self.http_factory()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(head)

    def eof_received(self) -> bool | None:
        return None  # before the head: the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending.discard(self)  # closed before the head was complete: nothing was started


def front_door_class(ws_paths: Collection[str], ws_factory: Callable[[asyncio.Transport], Any],
                     http_factory: Callable[[], asyncio.Protocol], *, api_prefixes: Collection[str] = (),
                     api_factory: Callable[[], asyncio.Protocol] | None = None) -> Any:
    """The listener's protocol class: WebSocket requests to ``ws_paths`` go to ``ws_factory``,
    requests to ``api_prefixes`` to ``api_factory`` (the server API on the client port),
    everything else to ``http_factory``."""
    return type("ClientPortDoor", (FrontDoor,), {
        "ws_paths": frozenset(p.encode() for p in ws_paths), "ws_factory": staticmethod(ws_factory),
        "http_factory": staticmethod(http_factory), "pending": set(), "__slots__": (),
        "api_prefixes": tuple(p.encode() for p in api_prefixes),
        "api_factory": staticmethod(api_factory) if api_factory is not None else None})
