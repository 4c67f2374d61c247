"""The WebSocket transport shell: handshake checks, the read loop, and direct writes.

Writes go straight into the asyncio transport, as ``websockets.broadcast`` does, but the
frame is built once per payload and shared (the hub frames a publication once per Wire):
server frames are unmasked, so the bytes are the same for every connection. The transport's
buffer is the connection's queue; the session bounds it (``client.queue_max_size``).
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import http
import logging
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State as WsState
from websockets.typing import Subprotocol

from livegate.node import Node
from livegate.protocol import codes
from livegate.protocol.codec import Wire
from livegate.protocol.codecs import CODECS, DEFAULT_CODEC
from livegate.protocol.unidirectional import connect_command, unwrapped
from livegate.session import Handler, Session, State

__all__ = ["WebSocketTransport", "WIRES", "WS_JSON", "UNI_WS_JSON", "text_frame", "origin_allowed", "select_subprotocol",
           "requested_format", "make_process_request", "serve_connection"]

log = logging.getLogger("livegate.websocket")
_OPEN = WsState.OPEN
_CLOSED = WsState.CLOSED


def _framer(first_byte: int) -> Callable[[bytes], bytes]:
    """Unmasked, final frames (RFC 6455 5.2) of one opcode: 0x81 text, 0x82 binary."""

    def frame(payload: bytes) -> bytes:
        n = len(payload)
        if n < 126:
            return bytes((first_byte, n)) + payload
        if n < 65536:
            return struct.pack("!BBH", first_byte, 126, n) + payload
        return struct.pack("!BBQ", first_byte, 127, n) + payload

    return frame


text_frame = _framer(0x81)

#: One Wire per codec the server speaks: text frames, or binary frames for a binary codec.
WIRES: dict[str, Wire] = {
    name: Wire(f"websocket/{name}", codec, _framer(0x82) if codec.binary else text_frame)
    for name, codec in CODECS.items()
}
WS_JSON = WIRES["json"]
_SUBPROTOCOL = "centrifuge-"


class WebSocketTransport:
    """The session's Transport over one ``websockets`` server connection."""

    __slots__ = ("ws", "wire", "_proto", "_transport")  # few: one of these per connection
    session_token = ""  # not emulated

    def __init__(self, ws: ServerConnection, wire: Wire) -> None:
        self.ws = ws
        self.wire = wire
        self._proto = ws.protocol
        self._transport = ws.transport

    @property
    def remote(self) -> str:
        peer = self.ws.remote_address
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)

    def write(self, frame: bytes) -> bool:
        if self._proto.state is _OPEN:
            self._transport.write(frame)
            return True
        return False

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    def is_open(self) -> bool:
        return self._proto.state is _OPEN

    def close(self, code: int, reason: str) -> None:
        ws = self.ws
        if ws.protocol.state is _OPEN:
            # A close reason is at most 123 bytes of UTF-8; cut at a character boundary.
            cut = reason.encode()[:123].decode(errors="ignore")
            try:
                ws.protocol.send_close(code, cut)
                ws.send_data()
            except Exception:
                log.exception("close failed", extra={"remote": self.remote, "code": code})
                ws.transport.abort()
                return
        # A peer that does not answer the close frame (or never reads) is cut off.
        # (the server passes websocket.write_timeout to websockets as the close timeout)
        asyncio.get_running_loop().call_later(self.ws.close_timeout or 1.0, self._abort)

    def _abort(self) -> None:
        if self.ws.protocol.state is not _CLOSED:
            self.ws.transport.abort()


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
    """The first ``centrifuge-<codec>`` the client offers that the server speaks
    (``centrifuge-json``, ``centrifuge-protobuf``); none when it offers none of them (the
    codec may then come from the URL, else it is JSON), as with Centrifugo."""
    for sub in offered:
        if sub.startswith(_SUBPROTOCOL) and sub[len(_SUBPROTOCOL):] in WIRES:
            return sub
    return None


def requested_format(query: str) -> str | None:
    """The codec a URL asks for (``?format=`` or Centrifugo's ``?cf_protocol=``), if any."""
    params = parse_qs(query)
    for key in ("format", "cf_protocol"):
        if params.get(key):
            return params[key][0]
    return None


class _SmallQueue(list[Any]):
    """What websockets' frame queue needs of a deque (append, popleft, extendleft), on a list:
    an empty deque takes 760 bytes, and this queue holds a frame or two at a time."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def extendleft(self, items: Iterable[Any]) -> None:
        for item in items:
            self.insert(0, item)


def _small_frame_queue(ws: ServerConnection) -> None:
    """Give the connection's incoming-frame queue the small list above (when this websockets
    keeps it where 17.x does, as an empty deque; otherwise leave it)."""
    queue = getattr(getattr(getattr(ws, "recv_messages", None), "frames", None), "queue", None)
    if type(queue) is collections.deque and not queue:
        ws.recv_messages.frames.queue = _SmallQueue()  # type: ignore[assignment]


#: What stands in for a connection's handshake request once the handshake is over.
_HANDSHAKE_DONE = Request("", Headers())

#: Unidirectional WebSocket (JSON): pushes without their Reply wrapper, in text frames.
#: One message per WebSocket message (a client without an SDK JSON.parses each).
UNI_WS_JSON = Wire("uni_websocket/json", WS_JSON.codec,
                   lambda body: b"".join(text_frame(line) for line in unwrapped(body).split(b"\n")),
                   unidirectional=True)


def wire_for(ws: ServerConnection, uni_path: str | None = None) -> Wire:
    """The negotiated codec's Wire: the subprotocol, else the URL, else the default codec
    (the unidirectional WebSocket speaks JSON only)."""
    if uni_path is not None and ws.request is not None and ws.request.path.partition("?")[0] == uni_path:
        return UNI_WS_JSON
    sub = ws.subprotocol
    if sub is not None and sub.startswith(_SUBPROTOCOL):
        return WIRES[sub[len(_SUBPROTOCOL):]]
    fmt = requested_format(ws.request.path.partition("?")[2]) if ws.request is not None else None
    return WIRES.get(fmt or DEFAULT_CODEC.name, WIRES[DEFAULT_CODEC.name])


def make_process_request(node: Node) -> Callable[[ServerConnection, Request], Response | None]:
    cfg = node.config
    paths = {cfg.websocket.handler_prefix} if not cfg.websocket.disabled else set()
    if cfg.uni_websocket.enabled:
        paths.add(cfg.uni_websocket.handler_prefix)
    origins = node.config.client.allowed_origins
    limits = node.limits

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        # The front door sends only WebSocket upgrades to the WebSocket path here (front.py).
        path = request.path.partition("?")[0]
        if path not in paths:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        if node.draining:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        headers = request.headers
        origin = headers.get_all("Origin")
        if len(origin) > 1:
            return connection.respond(http.HTTPStatus.BAD_REQUEST, "more than one Origin header\n")
        host = headers.get_all("Host")
        if not origin_allowed(origin[0] if origin else None, host[0] if len(host) == 1 else None, origins):
            log.info("origin rejected", extra={"origin": origin[0]})
            return connection.respond(http.HTTPStatus.FORBIDDEN, "origin not allowed\n")
        offered = headers.get_all("Sec-WebSocket-Protocol")
        if offered and not any(value.strip() for value in offered):
            # Older SDKs (centrifuge-python before 0.7) send an empty header for JSON, which
            # Centrifugo takes as no subprotocol: so do we.
            del headers["Sec-WebSocket-Protocol"]
        # Last, so that only handshakes that would succeed count against the rate. As Centrifugo:
        # HTTP 503, which SDKs take as a transport failure and retry with backoff (a close code
        # would need the upgrade first, and 3504 would stop them for good).
        refused = limits.admit_connection(node.hub.num_clients, node.clock.monotonic())
        if refused is not None:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{refused.replace('_', ' ')} limit reached\n")
        return None

    return process_request


async def _unidirectional(session: Session, ws: ServerConnection) -> None:
    """uni_websocket: the first message is a ConnectRequest object; later messages are
    ignored (the client only listens)."""
    first = await ws.recv()
    command = connect_command(first.encode() if isinstance(first, str) else first)
    if command is None:
        session.close(codes.BAD_REQUEST)
        return
    await session.handle_frame(command)
    if session.closing is None and session.state is not State.CONNECTED:
        session.close(codes.BAD_REQUEST)
    async for _ in ws:
        if session.closing is not None:
            break


async def serve_connection(node: Node, ws: ServerConnection, handlers: Mapping[str, Handler],
                           registry: set[Session]) -> None:
    """The read loop of one connection: the only task a connection has."""
    cfg = node.config
    wire = wire_for(ws, cfg.uni_websocket.handler_prefix if cfg.uni_websocket.enabled else None)
    # The handshake's request and response (their headers: about 2 KiB) are not read again;
    # websockets keeps them for the connection's life, so they go here. (websockets tells the
    # handshake phase by ``request is None``: a shared, empty request stands in.)
    ws.request, ws.response = _HANDSHAKE_DONE, None
    # websockets' writers wait in a deque (760 bytes, empty); nothing here awaits drain (frames go
    # straight to the transport), so a list does (append, remove, iterate: all it needs).
    ws.drain_waiters = []  # type: ignore[assignment]
    _small_frame_queue(ws)
    session = Session(node, WebSocketTransport(ws, wire), handlers)
    registry.add(session)
    try:
        if wire.unidirectional:
            await _unidirectional(session, ws)
            return
        async for message in ws:
            if isinstance(message, str) == session.codec.binary:
                log.info("frame of the wrong type", extra={"client": session.client_id, "user": session.user})
                session.close(codes.BAD_REQUEST)
                break
            await session.handle_frame(message)
            if session.closing is not None:
                break
    except ConnectionClosed:
        pass
    finally:
        registry.discard(session)
        await session.release()
