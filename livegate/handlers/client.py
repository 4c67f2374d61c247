"""Client: the protocol state of one connection, transport-independent.

The transport (``livegate.server``) subclasses it and supplies ``_send`` (write framed bytes,
never await), ``_close`` and ``buffered``. Everything else here is protocol: decoding frames,
dispatching commands to handlers in order, coalescing replies and pushes, timers.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from livegate.errors import ClientError, DisconnectRequested
from livegate.handlers.context import Context, Subscription
from livegate.metrics import METRICS
from livegate.protocol import codes
from livegate.protocol.codec import PING, Command, FrameError, decode_frame, encode_error, encode_reply
from livegate.protocol.codes import Disconnect, ErrInternal
from livegate.protocol.types import ClientInfo

if TYPE_CHECKING:
    from livegate.node import Node

__all__ = ["Client", "State", "Followup"]

log = logging.getLogger("livegate.client")

#: Something a handler wants done right after its reply was queued (no await before it).
Followup = Callable[[], Awaitable[None] | None]


class State(enum.Enum):
    CONNECTING = 0
    CONNECTED = 1
    CLOSED = 2


class Client:
    __slots__ = (
        "node", "client_id", "user", "conn_info", "name", "version", "state", "subs",
        "created_at", "expire_at", "next_ping_at", "pong_deadline", "sub_expiry", "reply_sent",
        "_collect", "_collect_size", "_queue_max", "closing", "__weakref__",
    )

    def __init__(self, node: Node) -> None:
        self.node = node
        self.client_id = str(uuid.uuid4())
        self.user = ""
        self.conn_info: bytes | None = None
        self.name = ""
        self.version = ""
        self.state = State.CONNECTING
        self.subs: dict[str, Subscription] = {}
        self.created_at = time.monotonic()
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

    # -- transport hooks (overridden by the server) ----------------------------------

    def _send(self, payload: bytes, frame: bytes | None) -> None:
        raise NotImplementedError

    def _close(self, disconnect: Disconnect) -> None:
        raise NotImplementedError

    def buffered(self) -> int:
        """Bytes written but not yet sent."""
        return 0

    # -- output ------------------------------------------------------------------------

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        """Queue messages for the client; never awaits. Used by the hub's fan-out."""
        collect = self._collect
        if collect is not None:
            collect.append(payload)
            self._collect_size += len(payload)
            if self._collect_size + self.buffered() > self._queue_max:
                self.close(codes.SLOW)
            return
        if self.closing is None:
            self._send(payload, frame)

    def flush(self) -> None:
        """Send what was collected while a frame was processed, joined into one frame."""
        collect = self._collect
        if collect:
            self._collect = []
            self._collect_size = 0
            if self.closing is None or self.closing is not codes.SLOW:
                self._send(collect[0] if len(collect) == 1 else b"\n".join(collect), None)
                self.reply_sent = True

    def close(self, disconnect: Disconnect) -> None:
        """Start closing with a disconnect code; idempotent, never awaits."""
        if self.closing is not None:
            return
        if disconnect is not codes.SLOW:
            self.flush()
        self.closing = disconnect
        self._collect = None
        METRICS.disconnects.labels_inc((str(disconnect.code),))
        log.info("disconnect", extra={"client": self.client_id, "user": self.user,
                                      "code": disconnect.code, "reason": disconnect.reason})
        self._close(disconnect)

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
        METRICS.bytes_in.value += len(frame)
        try:
            commands = decode_frame(frame)
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
        from livegate.handlers import HANDLERS  # the table imports handler modules that import Client

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
        request_type, handler = HANDLERS[method]
        try:
            request = request_type.model_validate(cmd.params)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or method
            self._bad_request(f"{method}.{where}: {first['msg']}")
            return False
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await handler(self, request)
            outcome = "ok"
        except ClientError as err:
            if err.code == ErrInternal.code:
                log.warning("command failed: %s", err.__cause__ or err.message,
                            extra={"client": self.client_id, "user": self.user, "method": method})
            if cmd.id:
                self.write(encode_error(cmd.id, err))
            # After a failed connect the client closes; the rest of its frame is not for us.
            return method != "connect"
        except DisconnectRequested as req:
            self.close(Disconnect(req.code, req.reason))
            return False
        except Exception:
            log.exception("command failed", extra={"client": self.client_id, "user": self.user, "method": method})
            if cmd.id:
                self.write(encode_error(cmd.id, ErrInternal()))
            return True
        finally:
            elapsed = time.perf_counter() - started
            METRICS.commands.labels_inc((method, outcome))
            METRICS.command_duration.observe((method,), elapsed)
        followup = None
        if isinstance(result, tuple):
            result, followup = result
        if cmd.id and result is not None and self.closing is None:
            self.write(encode_reply(cmd.id, method, result))
        if followup is not None:
            pending = followup()
            if pending is not None:
                await pending
        return True

    def _bad_request(self, why: str) -> None:
        log.info("bad request: %s", why, extra={"client": self.client_id, "user": self.user})
        self.close(codes.BAD_REQUEST)

    # -- timers (driven by the server's sweep) ----------------------------------------

    def tick(self, now_mono: float, now_wall: float) -> None:
        """Pings, pong deadline, stale and expired connections, expired subscriptions."""
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
            if not self.pong_deadline:
                self.pong_deadline = now_mono + cfg.pong_timeout
            self._send(PING, None)  # not held back behind a frame being processed

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
