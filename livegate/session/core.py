"""Session: the protocol state of one client connection, whatever carries its bytes.

A session talks to an injected ``Transport`` (write framed bytes, close with a code and a
reason, say how much is still buffered) and to the ``Codec`` of the transport's ``Wire``.
Everything else here is protocol: decoding frames, dispatching commands to the handlers in
order, coalescing replies and pushes into one frame, the output buffer and its slow-consumer
rule, timers. A transport shell (WebSocket, SSE, HTTP-streaming) feeds frames to
``handle_frame`` and calls ``Session.release`` when the connection ends.

Every command passes one rate-limit check first (``limits.CommandLimiter``, client.rate_limit):
over a limit it is answered with error 111, and a connection refused too often in a row is
closed with 3013.

Output has one path: ``write`` (coalesced while a frame is processed) and ``_emit``, the only
place bytes reach the transport. One rule bounds what a connection may hold: bytes collected
plus bytes buffered by the transport over ``client.queue_max_size`` close it with 3008.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from livegate.errors import ClientError, DisconnectRequested
from livegate.limits import CommandLimiter
from livegate.metrics import NodeMetrics
from livegate.node import Node
from livegate.protocol import codes
from livegate.protocol.codec import Codec, Command, FrameError, Unencodable, Wire
from livegate.protocol.codes import Disconnect, ErrInternal, ErrTooManyRequests
from livegate.protocol.types import ClientInfo
from livegate.session.context import Context, Subscription

__all__ = ["SessionCore", "State", "Transport", "Followup", "Handler"]

log = logging.getLogger("livegate.client")


class Transport(Protocol):
    """What carries one connection's bytes. Every method returns at once (never awaits)."""

    #: The codec and framing of this connection: shared by all connections of its kind.
    wire: Wire
    #: Emulated transports (HTTP-streaming, SSE): the secret the client's later commands
    #: name (the connect reply's ``session``); "" for others.
    session_token: str

    @property
    def remote(self) -> str:
        """Peer address for logs ("host:port")."""
        ...

    def write(self, frame: bytes) -> bool:
        """Send framed bytes (``wire.frame`` output). False when the transport is closing
        (or closed) and dropped them."""
        ...

    def is_open(self) -> bool:
        """Still taking frames (not closing or closed)."""
        ...

    def buffered(self) -> int:
        """Bytes written but not yet sent."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start closing with a disconnect code and a reason (called once)."""
        ...


class Followup(Protocol):
    """Work a handler wants done right after its reply was queued (no await before it)."""

    def complete(self) -> Awaitable[None] | None: ...


#: ``handler(session, request)`` returns a result, ``(result, followup)``, or None (no reply).
Handler = Callable[[Any, Any], Awaitable[Any]]


class State(enum.Enum):
    CONNECTING = 0
    CONNECTED = 1
    CLOSED = 2


class SessionCore:
    __slots__ = (
        "node", "transport", "wire", "handlers", "client_id", "user", "conn_info", "name",
        "version", "state", "subs", "created_at", "expire_at", "next_ping_at", "pong_deadline", "sub_expiry",
        "reply_sent", "_collect", "_collect_size", "_queue_max", "closing", "limiter", "map_pending",
    )

    def __init__(self, node: Node, transport: Transport, handlers: Mapping[str, Handler]) -> None:
        self.node = node
        self.transport = transport
        self.wire = transport.wire
        self.handlers = handlers
        self.client_id = str(uuid.uuid4())
        self.user = ""
        self.conn_info: bytes | None = None
        self.name = ""
        self.version = ""
        self.state = State.CONNECTING
        self.subs: dict[str, Subscription] = {}
        #: Map subscriptions still paging through state or stream (livegate.session.maps); None: none yet.
        self.map_pending: dict[str, Any] | None = None
        self.created_at = node.clock.monotonic()
        self.expire_at = 0.0  # unix s; 0 = never
        self.next_ping_at = 0.0
        self.pong_deadline = 0.0
        self.sub_expiry = 0.0  # earliest expire_at among subscriptions; 0: none expires
        # Whether anything (the connect reply first of all) has reached the transport: pings
        # wait for it, since SDKs answer pings only after a connect reply said pong: true.
        self.reply_sent = False
        self._collect: list[bytes] | None = None
        self._collect_size = 0
        self._queue_max = node.config.client.queue_max_size
        self.closing: Disconnect | None = None
        #: The command budget (client.rate_limit); None when no command limit is configured.
        self.limiter: CommandLimiter | None = node.limits.new_limiter()

    # Derived, not stored: every slot is paid for by every connection.
    @property
    def codec(self) -> Codec:
        return self.wire.codec

    @property
    def metrics(self) -> NodeMetrics:
        return self.node.metrics

    # -- output ------------------------------------------------------------------------

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        """Queue encoded messages for the client; never awaits. While a frame is processed
        they are collected and go out joined into one frame; otherwise at once.

        ``frame`` is ``payload`` already framed by ``self.wire`` (the hub shares one frame
        between subscribers)."""
        collect = self._collect
        if collect is not None:
            collect.append(payload)
            self._collect_size += len(payload)
            if self._overflows(0):
                self.close(codes.SLOW)
            return
        if self.closing is None:
            self._emit(payload, frame)

    def _overflows(self, extra: int) -> bool:
        """The slow-consumer rule: what this connection holds (collected, plus buffered by the
        transport, plus ``extra`` about to be written) may not exceed the queue bound."""
        return self._collect_size + self.transport.buffered() + extra > self._queue_max

    def _emit(self, payload: bytes, frame: bytes | None) -> None:
        """The only place bytes go to the transport."""
        if frame is None:
            frame = self.wire.frame(payload)
        size = len(frame)
        transport = self.transport
        if self._collect_size + transport.buffered() + size > self._queue_max:  # _overflows(size), inlined: hot path
            if transport.is_open():  # a transport already closing is not a slow consumer
                self.close(codes.SLOW)
            return
        if transport.write(frame):
            self.node.metrics.bytes_out += size

    def flush(self) -> None:
        """Send what was collected while a frame was processed, joined into one frame."""
        collect = self._collect
        if collect:
            self._collect = []
            self._collect_size = 0
            if self.closing is not codes.SLOW:
                self._emit(self.codec.join(collect), None)
                self.reply_sent = True

    def close(self, disconnect: Disconnect) -> None:
        """Start closing with a disconnect code; idempotent, never awaits."""
        if self.closing is not None:
            return
        if disconnect is not codes.SLOW:
            self.flush()
            if self.closing is not None:
                return  # flushing found the connection over its queue bound: closed as slow
        self.closing = disconnect
        self._collect = None
        self.metrics.count(self.metrics.disconnects, str(disconnect.code))
        log.info("disconnect", extra={"client": self.client_id, "user": self.user,
                                      "code": disconnect.code, "reason": disconnect.reason})
        self.transport.close(disconnect.code, disconnect.reason)

    def info(self, chan_info: bytes | None = None) -> ClientInfo:
        return ClientInfo(self.user, self.client_id, self.conn_info, chan_info)

    def context(self) -> Context:
        return Context(self.client_id, self.user, self.conn_info, self.name, self.version, self.node)

    async def call_app(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run application code (an RPC handler or a hook) with this connection's context,
        bounded by ``client.hook_timeout``: a hung handler fails the command with error 100
        (temporary) instead of pinning the connection."""
        try:
            async with asyncio.timeout(self.node.config.client.hook_timeout):
                return await fn(self.context(), *args)
        except TimeoutError:
            log.warning("application handler timed out", extra={"client": self.client_id, "user": self.user,
                                                                  "handler": getattr(fn, "__name__", "?")})
            raise ErrInternal(message="internal server error: handler timed out") from None

    # -- input -------------------------------------------------------------------------

    async def handle_frame(self, frame: str | bytes) -> None:
        """Process one inbound frame: every command in order, replies coalesced into one frame."""
        if self.closing is not None:
            return
        self.metrics.bytes_in += len(frame)
        try:
            commands = self.codec.decode_frame(frame)
        except FrameError as exc:
            log.info("bad frame: %s", exc, extra={"client": self.client_id, "user": self.user})
            self.close(codes.BAD_REQUEST)
            return
        self._collect = []
        self._collect_size = 0
        try:
            for cmd in commands:
                if self.closing is not None or not await self._dispatch(cmd):
                    break
        finally:
            if self.closing is None:
                self.flush()
            self._collect = None

    async def _dispatch(self, cmd: Command) -> bool:
        """Run one command. Returns False when the rest of the frame must be skipped."""
        method = cmd.method
        if method == "":
            self.pong_deadline = 0.0  # a pong; an unsolicited one is harmless
            return True
        if self.state is State.CONNECTING:
            if method != "connect":
                self._bad_request(f"{method} before connect")
                return False
        elif method == "connect":
            self._bad_request("second connect")
            return False
        limiter = self.limiter
        if limiter is not None:  # the one rate-limit check; allocates nothing under the limits
            refused = limiter.check(method, self.node.clock.monotonic())
            if refused is not None:
                return self._rate_limited(cmd, refused)
        if cmd.request is None:
            if cmd.error is None:
                self._bad_request(cmd.problem)
                return False
            self.metrics.count(self.metrics.commands, f"{method}|error")
            if cmd.id:
                self.write(self.codec.encode_error(cmd.id, cmd.error))
            return True
        handler = self.handlers[method]
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await handler(self, cmd.request)
            outcome = "ok"
        except ClientError as err:
            if err.code == ErrInternal.code:
                log.warning("command failed: %s", err.__cause__ or err.message,
                            extra={"client": self.client_id, "user": self.user, "method": method})
            if cmd.id:
                self.write(self.codec.encode_error(cmd.id, err))
            # After a failed connect the client closes; the rest of its frame is not for us.
            return method != "connect"
        except DisconnectRequested as req:
            self.close(Disconnect(req.code, req.reason))
            return False
        except Exception:
            log.exception("command failed", extra={"client": self.client_id, "user": self.user, "method": method})
            if cmd.id:
                self.write(self.codec.encode_error(cmd.id, ErrInternal()))
            return True
        finally:
            metrics = self.metrics
            metrics.count(metrics.commands, f"{method}|{outcome}")
            metrics.command_duration.observe(method, time.perf_counter() - started)
        followup: Followup | None = None
        if isinstance(result, tuple):
            result, followup = result
        if cmd.id and result is not None and self.closing is None:
            try:
                reply = self.codec.encode_reply(cmd.id, method, result)
            except Unencodable:  # binary data for a JSON connection
                log.info("reply not encodable in %s", self.codec.name, extra={"client": self.client_id,
                                                                             "user": self.user, "method": method})
                self.close(codes.INAPPROPRIATE_PROTOCOL)
                return False
            except Exception:  # a result the codec cannot encode is a bug: answer 100, keep serving
                log.exception("reply not encodable", extra={"client": self.client_id, "user": self.user,
                                                            "method": method})
                reply = self.codec.encode_error(cmd.id, ErrInternal())
            self.write(reply)
        if followup is not None:
            pending = followup.complete()
            if pending is not None:
                await pending
        return True

    def _rate_limited(self, cmd: Command, limit: str) -> bool:
        """A command over a rate limit: error 111 (temporary), or, after
        client.rate_limit.disconnect_after refusals in a row, close with 3013."""
        metrics = self.metrics
        metrics.count(metrics.commands, f"{cmd.method}|limited")
        self.node.limits.refused(limit, self.node.clock.monotonic(), client=self.client_id, user=self.user)
        if cmd.id:
            self.write(self.codec.encode_error(cmd.id, ErrTooManyRequests()))
        limiter = self.limiter
        if limiter is not None and limiter.exhausted:
            self.close(codes.TOO_MANY_REQUESTS)
            return False
        return True

    def _bad_request(self, why: str) -> None:
        log.info("bad request: %s", why, extra={"client": self.client_id, "user": self.user})
        self.close(codes.BAD_REQUEST)

    # -- timers (driven by the server's sweep) ----------------------------------------

    def tick(self, now_mono: float, now_wall: float) -> None:
        """Pings, pong deadline, stale and expired connections."""
        if self.closing is not None:
            return
        cfg = self.node.config.client
        if self.state is State.CONNECTING:
            if now_mono - self.created_at > cfg.stale_close_delay:
                self.close(codes.STALE)
            return
        if self.pong_deadline and now_mono > self.pong_deadline:
            if self._collect is not None:
                # Busy with a frame (a slow RPC or hook): the pong may be waiting behind it.
                self.pong_deadline = now_mono + cfg.pong_timeout
            else:
                self.close(codes.NO_PONG)
                return
        if self.expire_at and now_wall > self.expire_at + cfg.expired_close_delay:
            self.close(codes.EXPIRED)
            return
        if now_mono >= self.next_ping_at and self.reply_sent:
            self.next_ping_at = now_mono + cfg.ping_interval
            if not self.pong_deadline and not self.wire.unidirectional:
                self.pong_deadline = now_mono + cfg.pong_timeout
            self._emit(self.codec.ping, None)  # not held back behind a frame being processed

    def recompute_sub_expiry(self) -> None:
        self.sub_expiry = min((sub.expire_at for sub in self.subs.values() if sub.expire_at), default=0.0)

    def expired_subscriptions(self, now_wall: float) -> list[str]:
        """Channels whose subscription token expired (cheap when none can have)."""
        # Same grace as connections: the SDK refreshes at ttl, plus its getToken round trip.
        grace = self.node.config.client.expired_close_delay
        if not self.sub_expiry or now_wall <= self.sub_expiry + grace:
            return []
        expired = [ch for ch, sub in self.subs.items()
                   if sub.expire_at and sub.live and now_wall > sub.expire_at + grace]
        self.sub_expiry = min((sub.expire_at for ch, sub in self.subs.items()
                               if sub.expire_at and ch not in expired), default=0.0)
        return expired

    def presence_subscriptions(self) -> list[tuple[str, Subscription]]:
        return [(ch, sub) for ch, sub in self.subs.items() if sub.presence and sub.live]

    def map_presence_subscriptions(self) -> list[Subscription]:
        return [sub for sub in self.subs.values() if sub.live and (sub.clients_presence or sub.users_presence)]
