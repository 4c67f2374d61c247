"""The WebSocket transport shell: websockets' Sans-I/O protocol driven from an asyncio
Protocol of our own, the handshake checks, and direct writes.

``websockets`` implements the protocol (the opening handshake, frame parsing, pings, the
closing handshake, size limits); this module does the I/O. A connection is one object, the
socket's Protocol and the session's Transport at once, with no task while it is idle: a task
runs only while a message is being handled (messages that arrive meanwhile wait in order).
Measured against ``websockets``' asyncio server (a handler task, futures, a handshake
timeout and a message assembler per connection): see the README's Performance section.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from livegate.node import Node
from livegate.protocol import codes
from livegate.protocol.codec import Wire
from livegate.protocol.codecs import CODECS, DEFAULT_CODEC
from livegate.protocol.unidirectional import connect_command, unwrapped
from livegate.session import Handler, Session, State

__all__ = ["WebSocketConnection", "WsContext", "WIRES", "WS_JSON", "UNI_WS_JSON", "text_frame", "origin_allowed",
           "select_subprotocol", "requested_format", "make_request_check"]

log = logging.getLogger("livegate.websocket")
_OPEN = WsState.OPEN
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
#: Messages a connection may have waiting while one is handled; past this its socket is not
#: read until half of them are done (TCP then pushes back on the client).
INBOX_LIMIT = 64


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


def select_subprotocol(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
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


#: Unidirectional WebSocket (JSON): pushes without their Reply wrapper, in text frames.
#: One message per WebSocket message (a client without an SDK JSON.parses each).
UNI_WS_JSON = Wire("uni_websocket/json", WS_JSON.codec,
                   lambda body: b"".join(text_frame(line) for line in unwrapped(body).split(b"\n")),
                   unidirectional=True)


def wire_for(request: Request, subprotocol: Subprotocol | None, uni_path: str | None = None) -> Wire:
    """The negotiated codec's Wire: the subprotocol, else the URL, else the default codec
    (the unidirectional WebSocket speaks JSON only)."""
    path, _, query = request.path.partition("?")
    if uni_path is not None and path == uni_path:
        return UNI_WS_JSON
    if subprotocol is not None and subprotocol.startswith(_SUBPROTOCOL):
        return WIRES[subprotocol[len(_SUBPROTOCOL):]]
    fmt = requested_format(query)
    return WIRES.get(fmt or DEFAULT_CODEC.name, WIRES[DEFAULT_CODEC.name])


def make_request_check(node: Node) -> Callable[[Request], tuple[int, str] | None]:
    """The server's checks of a WebSocket handshake request, before websockets' own: the
    refusal (HTTP status and text), or None to go on with the handshake."""
    cfg = node.config
    paths = {cfg.websocket.handler_prefix} if not cfg.websocket.disabled else set()
    if cfg.uni_websocket.enabled:
        paths.add(cfg.uni_websocket.handler_prefix)
    origins = node.config.client.allowed_origins
    limits = node.limits

    def check(request: Request) -> tuple[int, str] | None:
        # The front door sends only WebSocket upgrades to the WebSocket path here (front.py).
        path = request.path.partition("?")[0]
        if path not in paths:
            return http.HTTPStatus.NOT_FOUND, "not found\n"
        if node.draining:
            return http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n"
        headers = request.headers
        origin = headers.get_all("Origin")
        if len(origin) > 1:
            return http.HTTPStatus.BAD_REQUEST, "more than one Origin header\n"
        host = headers.get_all("Host")
        if not origin_allowed(origin[0] if origin else None, host[0] if len(host) == 1 else None, origins):
            log.info("origin rejected", extra={"origin": origin[0]})
            return http.HTTPStatus.FORBIDDEN, "origin not allowed\n"
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
            return http.HTTPStatus.SERVICE_UNAVAILABLE, f"{refused.replace('_', ' ')} limit reached\n"
        return None

    return check


class WsContext:
    """What every WebSocket connection of one server shares."""

    def __init__(self, node: Node, handlers: Mapping[str, Handler], registry: set[Session]) -> None:
        cfg = node.config
        self.node = node
        self.handlers = handlers
        self.registry = registry
        self.check = make_request_check(node)
        self.max_size = cfg.websocket.message_size_limit
        # permessage-deflate for what clients send: the server's own frames go uncompressed (the
        # same bytes for every subscriber; RFC 7692 lets each message say), so it keeps no
        # compressor (no context takeover), and a small window for what it decompresses.
        self.extensions: list[ServerExtensionFactory] | None = (
            [ServerPerMessageDeflateFactory(server_no_context_takeover=True, client_max_window_bits=12,
                                            compress_settings={"memLevel": 5})]
            if cfg.websocket.compression else None)
        self.uni_path = cfg.uni_websocket.handler_prefix if cfg.uni_websocket.enabled else None
        #: A closing peer that does not answer the close frame (or never reads) is cut off after this.
        self.close_timeout = cfg.websocket.write_timeout
        #: Connections whose session is being released (their tasks must stay referenced).
        self.releasing: set[asyncio.Task[None]] = set()


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket client connection after the front door has read its request head: the
    socket's asyncio Protocol, driving a websockets ``ServerProtocol``, and the Transport
    of its session."""

    __slots__ = ("wire", "_ctx", "_proto", "_transport", "_session", "_inbox", "_worker", "_parts", "_lost",
                 "_paused", "_closer")
    session_token = ""  # not emulated

    def __init__(self, ctx: WsContext, transport: asyncio.Transport) -> None:
        self._ctx = ctx
        self._transport = transport
        self._proto = ServerProtocol(select_subprotocol=select_subprotocol, max_size=ctx.max_size,
                                     extensions=ctx.extensions)
        self.wire = WS_JSON
        self._session: Session | None = None
        self._inbox: collections.deque[str | bytes] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._parts: list[bytes] | None = None  # a fragmented message so far (its first frame's opcode first)
        self._lost = False
        self._paused = False
        self._closer: asyncio.TimerHandle | None = None

    # -- the opening handshake -------------------------------------------------------

    def start(self, head: bytes) -> None:
        """Answer the handshake whose request (and maybe more) is ``head``."""
        proto, ctx = self._proto, self._ctx
        proto.receive_data(head)
        events = proto.events_received()
        if not events or not isinstance(events[0], Request):  # not a valid request: websockets ends it
            self._flush()
            self._transport.close()
            return
        request = events[0]
        try:
            refusal = ctx.check(request)
        except Exception:
            log.exception("handshake check failed", extra={"remote": self.remote})
            refusal = (http.HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error\n")
        response = proto.reject(*refusal) if refusal is not None else proto.accept(request)
        response.headers["Server"] = "livegate"  # no version: it tells an attacker which bugs to try
        proto.send_response(response)
        self._flush()
        if response.status_code != 101:
            return
        self.wire = wire_for(request, proto.subprotocol, ctx.uni_path)
        session = self._session = Session(ctx.node, self, ctx.handlers)
        ctx.registry.add(session)
        if len(events) > 1:  # frames sent right behind the request
            self._events(events[1:])
            self._flush()

    # -- asyncio Protocol --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        proto = self._proto
        proto.receive_data(data)
        self._events(proto.events_received())
        self._flush()

    def eof_received(self) -> bool | None:
        self._proto.receive_eof()
        self._flush()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        try:
            self._proto.receive_eof()  # a reset comes without eof_received: the protocol is CLOSED now
        except Exception:  # pragma: no cover - already at EOF
            pass
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        if self._session is not None and self._worker is None:
            self._release()

    # -- input -------------------------------------------------------------------------

    def _events(self, events: list[Any]) -> None:
        """Whole messages go to the session; websockets answers pings and closes itself."""
        for frame in events:
            if self._proto.state is not _OPEN:
                break  # failed (1007) or closing: the rest of the read is not handled (RFC 6455 7.1.7)
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if frame.fin:
                    self._message(opcode is _TEXT, frame.data)
                else:
                    self._parts = [b"t" if opcode is _TEXT else b"b", frame.data]
            elif opcode is _CONT and self._parts is not None:
                self._parts.append(frame.data)
                if frame.fin:
                    parts, self._parts = self._parts, None
                    self._message(parts[0] == b"t", b"".join(parts[1:]))

    def _message(self, text: bool, data: bytes) -> None:
        session = self._session
        if session is None or session.closing is not None:
            return
        message: str | bytes = data
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError as exc:
                self._proto.fail(1007, f"{exc.reason} at position {exc.start}")
                return
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(session, message))
            return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = collections.deque()
        inbox.append(message)
        if len(inbox) >= INBOX_LIMIT and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    async def _work(self, session: Session, message: str | bytes) -> None:
        """Handle ``message`` and then every message that arrived meanwhile, in order."""
        try:
            while True:
                await self._handle(session, message)
                inbox = self._inbox
                if session.closing is not None or not inbox or self._lost:
                    break
                message = inbox.popleft()
                if self._paused and len(inbox) <= INBOX_LIMIT // 2 and not self._lost:
                    self._paused = False
                    self._transport.resume_reading()
        except Exception:
            log.exception("connection handler failed", extra={"client": session.client_id, "user": session.user})
            session.close(codes.INTERNAL)
        finally:
            self._worker = None
            self._inbox = None
            if self._paused and not self._lost:
                self._paused = False
                self._transport.resume_reading()  # the peer's close reply must still be read
            if self._lost:
                self._release()  # in a task the shutdown waits for

    async def _handle(self, session: Session, message: str | bytes) -> None:
        if self.wire.unidirectional:
            # uni_websocket: the first message is a ConnectRequest object; later messages are
            # ignored (the client only listens).
            if session.state is not State.CONNECTING:
                return
            command = connect_command(message.encode() if isinstance(message, str) else message)
            if command is None:
                session.close(codes.BAD_REQUEST)
                return
            await session.handle_frame(command)
            if session.closing is None and session.state is not State.CONNECTED:
                session.close(codes.BAD_REQUEST)
            return
        if isinstance(message, str) == session.codec.binary:
            log.info("frame of the wrong type", extra={"client": session.client_id, "user": session.user})
            session.close(codes.BAD_REQUEST)
            return
        await session.handle_frame(message)

    def _release(self) -> None:
        session = self._session
        assert session is not None
        task = asyncio.get_running_loop().create_task(self._released(session))
        self._ctx.releasing.add(task)
        task.add_done_callback(self._ctx.releasing.discard)

    async def _released(self, session: Session) -> None:
        self._ctx.registry.discard(session)
        try:
            await session.release()
        except Exception:
            log.exception("releasing a connection failed", extra={"client": session.client_id, "user": session.user})

    # -- output --------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send what websockets has queued (handshake response, pongs, close frames)."""
        transport = self._transport
        proto = self._proto
        for chunk in proto.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # the server ends the TCP connection after the closing handshake
                transport.close()
        if proto.close_expected() and self._closer is None and not self._lost:
            # Closing, whoever began it: a peer that does not read what is left is cut off.
            self._closer = asyncio.get_running_loop().call_later(self._ctx.close_timeout or 1.0, self._abort)

    # -- the session's Transport -----------------------------------------------------------

    @property
    def remote(self) -> str:
        peer = self._transport.get_extra_info("peername")
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
        proto = self._proto
        if proto.state is _OPEN:
            # A close reason is at most 123 bytes of UTF-8; cut at a character boundary.
            cut = reason.encode()[:123].decode(errors="ignore")
            try:
                proto.send_close(code, cut)
                self._flush()
            except Exception:
                log.exception("close failed", extra={"remote": self.remote, "code": code})
                self._transport.abort()
                return
        # A peer that does not answer the close frame (or never reads) is cut off.
        if not self._lost and self._closer is None:  # (_flush armed it already when websockets closes)
            self._closer = asyncio.get_running_loop().call_later(self._ctx.close_timeout or 1.0, self._abort)

    def _abort(self) -> None:
        self._closer = None
        if not self._lost:
            self._transport.abort()
