"""The HTTP fallback transports of the client port, as thin shells on the session core.

- **HTTP-streaming** (``http_stream``): the client POSTs its connect command; the response
  streams replies and pushes, newline-delimited JSON, or varint-delimited Protobuf when the
  request's ``Content-Type`` is ``application/octet-stream``.
- **SSE** (``sse``): the connect command in the ``cf_connect`` query parameter (or a POST
  body); replies and pushes as ``data:`` events (JSON only).
- **Unidirectional** (``uni_http_stream``, ``uni_sse``): for clients without an SDK (a plain
  ``fetch`` or ``EventSource``): the body (or ``cf_connect``) is a ConnectRequest object; the
  client gets pushes only, without the Reply wrapper (``{"connect":{...}}``, then
  ``{"channel":...,"pub":{...}}``), and subscriptions are the server-side ones (token
  ``channels``, the connect hook).
- **Emulation** (``/emulation``): the later commands of those clients, one POST each,
  naming the session and the node that holds it (``session``/``node`` of the connect
  reply). A POST for a session on another node is forwarded over the node channel.

A stream's session reads its frames from a queue that the emulation endpoint fills, one
frame at a time, in order: the same serial processing a WebSocket read loop gives. Writes go
straight into the socket as HTTP/1.1 chunks (the response is chunked; aiohttp sends its
head), so the hub's shared frames work here too: a Wire per (transport, codec) frames each
publication once. The end of a stream is a disconnect push (the code tells the SDK whether
to reconnect) and the last chunk.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from google.protobuf.message import DecodeError

from livegate.handlers import HANDLERS
from livegate.node import Node
from livegate.protocol import codes
from livegate.protocol.codec import Codec, Unencodable, Wire
from livegate.protocol.json_codec import JSON
from livegate.protocol.proto.client_pb2 import EmulationRequest
from livegate.protocol.protobuf_codec import PROTOBUF
from livegate.protocol.unidirectional import connect_command, unwrapped
from livegate.server.websocket import origin_allowed
from livegate.session import Session, State

__all__ = ["StreamTransport", "Streams", "STREAM_WIRES", "chunk", "add_stream_routes", "EMULATION_OP"]

log = logging.getLogger("livegate.http_stream")

#: The cluster operation that delivers an emulation request to the node holding the session.
EMULATION_OP = "emulation"
#: Frames an emulated session may have waiting (the client sends one POST per batch of
#: commands and does not wait for replies, so a few can be in flight).
EMULATION_QUEUE = 64

_NO_CACHE = {
    "Cache-Control": "private, no-cache, no-store, must-revalidate, max-age=0",
    "Pragma": "no-cache", "Expires": "0", "X-Accel-Buffering": "no",
}


def chunk(body: bytes) -> bytes:
    """One HTTP/1.1 chunk (RFC 9112 7.1)."""
    return b"%x\r\n%s\r\n" % (len(body), body)


def _sse_frame(body: bytes) -> bytes:
    # One event; every line of it a data: line (the JSON codec joins messages with \n, and
    # EventSource joins data lines with \n again, so the SDK sees the same text).
    return chunk(b"data: " + body.replace(b"\n", b"\ndata: ") + b"\n\n")


#: One Wire per (transport, codec): frames are shared by every connection of a Wire.
STREAM_WIRES: dict[tuple[str, str], Wire] = {
    ("http_stream", "json"): Wire("http_stream/json", JSON, lambda body: chunk(body + b"\n")),
    ("http_stream", "protobuf"): Wire("http_stream/protobuf", PROTOBUF, chunk),
    ("sse", "json"): Wire("sse/json", JSON, _sse_frame),
    ("uni_http_stream", "json"): Wire("uni_http_stream/json", JSON, lambda body: chunk(unwrapped(body) + b"\n"),
                                      unidirectional=True),
    # One event per message: a client without an SDK JSON.parses each event's data.
    ("uni_sse", "json"): Wire("uni_sse/json", JSON, lambda body: chunk(b"".join(
        b"data: " + line + b"\n\n" for line in unwrapped(body).split(b"\n"))), unidirectional=True),
}


class StreamTransport:
    """The session's Transport over one streaming HTTP response (chunked, written directly)."""

    __slots__ = ("wire", "session_token", "remote", "_transport", "ended", "frames")

    def __init__(self, wire: Wire, transport: asyncio.Transport, remote: str, *, emulated: bool = True) -> None:
        self.wire = wire
        # A secret: it lets its holder send commands (emulation); none for unidirectional streams.
        self.session_token = secrets.token_urlsafe(24) if emulated else ""
        self.remote = remote
        self._transport = transport
        self.ended: asyncio.Event = asyncio.Event()
        #: Frames from the emulation endpoint, processed in order by the stream's handler.
        self.frames: asyncio.Queue[bytes] = asyncio.Queue(EMULATION_QUEUE)

    def write(self, frame: bytes) -> bool:
        if self.ended.is_set() or self._transport.is_closing():
            return False
        self._transport.write(frame)
        return True

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    def is_open(self) -> bool:
        return not self.ended.is_set() and not self._transport.is_closing()

    def close(self, code: int, reason: str) -> None:
        if self.ended.is_set():
            return
        if code != codes.SLOW.code and not self._transport.is_closing():
            try:
                self._transport.write(self.wire.frame(self.wire.codec.encode_disconnect(code, reason)))
            except Unencodable:  # a reason is plain text: cannot happen; never a reason to hang
                pass
        self.ended.set()


class Streams:
    """The emulated sessions of this node, by session token, and the HTTP handlers."""

    def __init__(self, node: Node, registry: set[Session]) -> None:
        self.node = node
        self.registry = registry
        self.sessions: dict[str, StreamTransport] = {}
        self._running: set[asyncio.Task[None]] = set()  # the streams' session tasks
        cfg = node.config
        self.origins = cfg.client.allowed_origins
        self.write_timeout = cfg.websocket.write_timeout

    # -- common checks -------------------------------------------------------------------

    def _cors(self, request: web.Request) -> dict[str, str] | web.Response:
        """CORS headers for an allowed Origin (none without one); a 403 for another."""
        origins = request.headers.getall("Origin", [])
        if len(origins) > 1:
            return web.Response(status=400, text="more than one Origin header\n")
        if not origins:
            return {}
        if not origin_allowed(origins[0], request.host, self.origins):
            log.info("origin rejected", extra={"origin": origins[0], "path": request.path})
            return web.Response(status=403, text="origin not allowed\n")
        return {"Access-Control-Allow-Origin": origins[0], "Access-Control-Allow-Credentials": "true",
                "Vary": "Origin"}

    def preflight(self, request: web.Request, methods: str) -> web.Response:
        cors = self._cors(request)
        if isinstance(cors, web.Response):
            return cors
        return web.Response(status=204, headers={
            **cors, "Access-Control-Allow-Methods": methods, "Access-Control-Max-Age": "300",
            "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "Content-Type")})

    async def _body(self, request: web.Request, limit: int) -> bytes | web.Response:
        """The whole request body (it may arrive in many segments), or 413 over ``limit``."""
        if request.content_length is not None and request.content_length > limit:
            return web.Response(status=413, text=f"request body over {limit} bytes\n")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                return web.Response(status=413, text=f"request body over {limit} bytes\n")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- streams ------------------------------------------------------------------------

    async def _connect_request(self, request: web.Request, kind: str, methods: str,
                               cf_connect_default: str = "") -> bytes | web.Response:
        """What opens a stream of ``kind``: a POST body, or with GET (SSE) the ``cf_connect``
        query parameter (``cf_connect_default`` when absent; "": required); or the answer to
        give instead (a CORS preflight when ``methods`` has OPTIONS, 400, 405, 413)."""
        limit = getattr(self.node.config, kind).max_request_body_size
        if request.method == "OPTIONS" and "OPTIONS" in methods:
            return self.preflight(request, methods)
        if request.method == "GET" and "GET" in methods:
            connect = request.query.get("cf_connect", cf_connect_default)
            if not connect:
                return web.Response(status=400, text="cf_connect: the connect command is missing\n")
            if len(connect) > limit:
                return web.Response(status=413, text=f"cf_connect over {limit} bytes\n")
            return connect.encode()
        if request.method == "POST":
            return await self._body(request, limit)
        return web.Response(status=405, headers={"Allow": methods})

    async def http_stream(self, request: web.Request) -> web.StreamResponse:
        body = await self._connect_request(request, "http_stream", "POST, OPTIONS")
        if isinstance(body, web.Response):
            return body
        protobuf = request.content_type == "application/octet-stream"
        return await self._stream(request, "http_stream", PROTOBUF if protobuf else JSON, body,
                                  "application/octet-stream" if protobuf else "application/json")

    async def sse(self, request: web.Request) -> web.StreamResponse:
        body = await self._connect_request(request, "sse", "GET, POST")
        if isinstance(body, web.Response):
            return body
        return await self._stream(request, "sse", JSON, body, "text/event-stream; charset=utf-8")

    async def uni_http_stream(self, request: web.Request) -> web.StreamResponse:
        body = await self._connect_request(request, "uni_http_stream", "POST, OPTIONS")
        if isinstance(body, web.Response):
            return body
        return await self._uni(request, "uni_http_stream", body, "application/json")

    async def uni_sse(self, request: web.Request) -> web.StreamResponse:
        body = await self._connect_request(request, "uni_sse", "GET, POST, OPTIONS", cf_connect_default="{}")
        if isinstance(body, web.Response):
            return body
        return await self._uni(request, "uni_sse", body, "text/event-stream; charset=utf-8")

    async def _uni(self, request: web.Request, kind: str, connect: bytes, content_type: str) -> web.StreamResponse:
        """A unidirectional stream: the body is a ConnectRequest (JSON object; empty: {}),
        run as the connect command; the client gets pushes only."""
        command = connect_command(connect)
        if command is None:
            return web.Response(status=400, text="the connect request must be a JSON object\n")
        return await self._stream(request, kind, JSON, command, content_type)

    def _refused(self) -> web.Response | None:
        node = self.node
        if node.draining:
            return web.Response(status=503, text="shutting down\n")
        refused = node.limits.admit_connection(node.hub.num_clients, node.clock.monotonic())
        if refused is not None:
            return web.Response(status=503, text=f"{refused.replace('_', ' ')} limit reached\n")
        return None

    async def _stream(self, request: web.Request, kind: str, codec: Codec, first: bytes,
                      content_type: str) -> web.StreamResponse:
        cors = self._cors(request)
        if isinstance(cors, web.Response):
            return cors
        refused = self._refused()
        if refused is not None:
            return refused
        if request.version < (1, 1):  # the stream is chunked
            return web.Response(status=505, text="streaming needs HTTP/1.1\n")
        sock = request.transport
        if sock is None:
            return web.Response(status=499)
        resp = web.StreamResponse(headers={**_NO_CACHE, **cors, "Content-Type": content_type})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"\r\n" if kind == "sse" else b"")  # sends the head (SSE: a blank line, as Centrifugo)
        peer = request.remote or "?"
        wire = STREAM_WIRES[(kind, codec.name)]
        transport = StreamTransport(wire, sock, peer, emulated=not wire.unidirectional)
        session = Session(self.node, transport, HANDLERS)
        self.registry.add(session)
        if transport.session_token:
            self.sessions[transport.session_token] = transport
        lifetime = getattr(self.node.config, kind).max_lifetime
        timer = asyncio.get_running_loop().call_later(lifetime, session.close, codes.SHUTDOWN) if lifetime else None
        # The session runs in a task of its own: aiohttp cancels this handler when the client
        # goes away, and a cancellation landing in a command or in release() would leave
        # subscriptions and presence behind. The task ends the session and cleans up whatever
        # happens to the handler.
        task = asyncio.get_running_loop().create_task(self._serve(session, transport, wire, first, timer))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            transport.ended.set()  # the client left: the task stops at its next frame and releases
            raise
        if not sock.is_closing():
            try:
                async with asyncio.timeout(self.write_timeout):
                    await resp.write_eof()
            except (TimeoutError, ConnectionError):
                sock.abort()
        return resp

    async def _serve(self, session: Session, transport: StreamTransport, wire: Wire, first: bytes,
                     timer: asyncio.TimerHandle | None) -> None:
        """A stream's session from its first frame to its release."""
        try:
            await session.handle_frame(first)
            if wire.unidirectional and session.closing is None and session.state is not State.CONNECTED:
                session.close(codes.BAD_REQUEST)  # the connect failed (its error was written): nothing more to do
            while session.closing is None:
                frame = await self._next(transport)
                if frame is None:
                    break
                await session.handle_frame(frame)
        finally:
            if timer is not None:
                timer.cancel()
            self.sessions.pop(transport.session_token, None)
            self.registry.discard(session)
            await session.release()

    @staticmethod
    async def _next(transport: StreamTransport) -> bytes | None:
        """The next frame from the emulation endpoint; None when the stream ends first."""
        if not transport.frames.empty():
            return transport.frames.get_nowait()
        get = asyncio.ensure_future(transport.frames.get())
        ended = asyncio.ensure_future(transport.ended.wait())
        try:
            await asyncio.wait((get, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not get.done():
                get.cancel()
        return get.result() if get.done() and not get.cancelled() else None

    # -- emulation ------------------------------------------------------------------------

    def deliver(self, session: str, data: bytes) -> int:
        """Queue a frame for a session of this node: 0 queued, 404 unknown session, 429 full."""
        transport = self.sessions.get(session)
        if transport is None or not transport.is_open():
            return 404
        if transport.frames.full():
            return 429
        transport.frames.put_nowait(data)
        return 0

    def deliver_remote(self, m: Any) -> int:
        """The cluster operation EMULATION_OP: a request forwarded by another node."""
        if not isinstance(m, dict) or not isinstance(m.get("session"), str) or not isinstance(m.get("data"), bytes):
            return 400
        return self.deliver(m["session"], m["data"])

    async def emulation(self, request: web.Request) -> web.Response:
        if request.method == "OPTIONS":
            return self.preflight(request, "POST, OPTIONS")
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST, OPTIONS"})
        cors = self._cors(request)
        if isinstance(cors, web.Response):
            return cors
        body = await self._body(request, self.node.config.emulation.max_request_body_size)
        if isinstance(body, web.Response):
            return body
        parsed = _emulation_request(body, request.content_type == "application/octet-stream")
        if isinstance(parsed, str):
            return _error(400, parsed, cors)
        node_id, session, data = parsed
        node = self.node
        if not node_id or node_id == node.uid:
            status = self.deliver(session, data)
        else:
            status = await self._forward(node_id, session, data)
        if status == 0:
            return web.Response(status=204, headers=cors)
        return _error(status, {404: "unknown or closed session", 429: "too many requests in flight for this session",
                               503: "the node holding the session did not answer",
                               400: "bad request"}.get(status, "error"), cors)

    async def _forward(self, node_id: str, session: str, data: bytes) -> int:
        cluster = self.node.cluster
        if not cluster.knows(node_id):
            return 404
        try:
            answer = await cluster.ask(node_id, EMULATION_OP, {"session": session, "data": data})
        except Exception as exc:  # the engine is unreachable: nothing was delivered
            log.warning("emulation request not forwarded: %s", exc, extra={"node": node_id})
            return 503
        return 503 if answer is None else int(answer)


def _error(status: int, message: str, headers: Mapping[str, str]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}), content_type="application/json",
                        headers=headers)


def _emulation_request(body: bytes, protobuf: bool) -> tuple[str, str, bytes] | str:
    """(node, session, frame) of an emulation request body, or what is wrong with it."""
    if protobuf:
        try:
            req = EmulationRequest.FromString(body)
        except DecodeError:
            return "malformed EmulationRequest"
        if not req.session:
            return "session is missing"
        return req.node, req.session, req.data
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "body is not JSON"
    if not isinstance(obj, dict):
        return "body must be a JSON object"
    node, session, data = obj.get("node", ""), obj.get("session"), obj.get("data")
    if not isinstance(session, str) or not session:
        return "session must be a non-empty string"
    if not isinstance(node, str):
        return "node must be a string"
    if not isinstance(data, str):
        return "data must be a string (the encoded commands)"
    return node, session, data.encode()


def add_stream_routes(app: web.Application, streams: Streams) -> None:
    """The routes of the enabled HTTP transports (and /emulation with either)."""
    cfg = streams.node.config
    routes: list[tuple[str, Callable[[web.Request], Any]]] = []
    if cfg.http_stream.enabled:
        routes.append((cfg.http_stream.handler_prefix, streams.http_stream))
    if cfg.sse.enabled:
        routes.append((cfg.sse.handler_prefix, streams.sse))
    if routes:
        routes.append((cfg.emulation.handler_prefix, streams.emulation))
    if cfg.uni_http_stream.enabled:
        routes.append((cfg.uni_http_stream.handler_prefix, streams.uni_http_stream))
    if cfg.uni_sse.enabled:
        routes.append((cfg.uni_sse.handler_prefix, streams.uni_sse))
    for path, handler in routes:
        app.router.add_route("*", path, handler)

