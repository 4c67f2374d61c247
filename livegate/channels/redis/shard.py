"""One Redis server of the engine: a command client and a pub/sub connection that reconnects.

Pub/sub uses one connection per shard per process, read by a thin asyncio Protocol around
``hiredis.Reader``: every chunk read from the socket becomes one batch for the engine.
Subscribes issued in the same loop iteration share one SUBSCRIBE command. When the pub/sub
connection drops, publishes and subscribes on the shard fail fast with BrokerUnavailable; it
reconnects with backoff, resubscribes every channel it needs, and reports them as a gap.
A PING every PING_INTERVAL seconds catches half-open sockets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as ssl_module
from collections import deque
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from livegate.channels.redis.functions import load_functions
from livegate.errors import BrokerError, BrokerUnavailable
from livegate.sharding import jump_hash
from livegate.tasks import cancel_and_wait

__all__ = ["Shard", "ShardOwner", "UNAVAILABLE", "jump_hash", "redact", "resp"]

log = logging.getLogger("livegate.redis")

PING_INTERVAL = 2.0  # seconds between pub/sub liveness checks
PING_TIMEOUT = 3.0

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)


class ShardOwner(Protocol):
    """What a shard reports to, and asks of, the engine that owns it."""

    def deliver(self, batch: list[tuple[bytes, bytes]]) -> None: ...
    def fixed_channels(self, shard_index: int) -> set[bytes]: ...
    async def write_config(self, client: aioredis.Redis) -> None: ...
    def report_gap(self, channels: list[bytes]) -> None: ...


def resp(*parts: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}").geturl()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # marks it retrieved: a failed confirmation nobody waits for is not an error


class _PubSubProtocol(asyncio.Protocol):
    """RESP3-free pub/sub reader: parses with hiredis, hands batches to the shard."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[tuple[bytes, asyncio.Future[None] | None]] = deque()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (create_connection); uvloop's do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        batch: list[tuple[bytes, bytes]] = []
        shard = self.shard
        while True:
            msg = self.reader.gets()
            if msg is False:
                break
            if type(msg) is list and msg[0] == b"message":
                batch.append((msg[1], msg[2]))
                continue
            if batch:
                shard.deliver(batch)
                batch = []
            self._reply(msg)
        if batch:
            shard.deliver(batch)

    def _reply(self, msg: Any) -> None:
        # Confirmations and replies arrive in the order the commands were written.
        kind = msg[0] if type(msg) is list else b"+"
        if kind == b"unsubscribe" and not self.waiters:
            return  # confirmation of an UNSUBSCRIBE nobody waits for
        if not self.waiters:
            return
        expected, future = self.waiters.popleft()
        if future is not None and not future.done():
            if isinstance(msg, hiredis.ReplyError):
                future.set_exception(BrokerError(f"redis: {msg}"))
            else:
                future.set_result(None)
        # A PING is answered ["pong", ""] while subscribed, +PONG otherwise.
        if kind != expected and not isinstance(msg, hiredis.ReplyError) and not (expected == b"pong" and kind == b"+"):
            log.warning("unexpected pub/sub reply order", extra={"got": str(kind), "expected": str(expected)})

    def connection_lost(self, exc: Exception | None) -> None:
        error = BrokerUnavailable("redis pub/sub connection lost")
        while self.waiters:
            _, future = self.waiters.popleft()
            if future is not None and not future.done():
                future.set_exception(error)
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, payload: bytes, expect: list[tuple[bytes, asyncio.Future[None] | None]]) -> None:
        assert self.transport is not None
        self.waiters.extend(expect)
        self.transport.write(payload)


class Shard:
    """One Redis server: a command client and a pub/sub connection that reconnects."""

    def __init__(self, owner: ShardOwner, index: int, url: str) -> None:
        self.owner = owner
        self.index = index
        self.url = url
        self.address = redact(url)
        # A bounded pool: a burst of subscribes waits for a free connection (3 s at most)
        # instead of opening hundreds of connections or failing. No retries, so that commands
        # fail fast while Redis is away: set on the pool's connections, since redis-py ignores
        # a client's ``retry`` when it is given a pool.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=3.0, socket_connect_timeout=1.0, socket_timeout=3.0,
            retry=Retry(NoBackoff(), 0))
        self.client = aioredis.Redis(connection_pool=pool)
        # Pub/sub channels this process needs -> confirmation of their SUBSCRIBE.
        self.channels: dict[bytes, asyncio.Future[None]] = {}
        self.proto: _PubSubProtocol | None = None
        self.healthy = False
        self.ever_connected = False
        self._pending: list[tuple[bytes, bytes, asyncio.Future[None] | None]] = []
        self._flush_scheduled = False
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
        await self.client.aclose(close_connection_pool=True)  # the pool is ours: close it too

    async def _open(self) -> _PubSubProtocol:
        parts = urlsplit(self.url)
        loop = asyncio.get_running_loop()
        ssl_ctx = ssl_module.create_default_context() if parts.scheme == "rediss" else None
        if parts.scheme == "unix":
            _, proto = await asyncio.wait_for(loop.create_unix_connection(lambda: _PubSubProtocol(self), parts.path), 2)
        else:
            _, proto = await asyncio.wait_for(loop.create_connection(
                lambda: _PubSubProtocol(self), parts.hostname or "127.0.0.1", parts.port or 6379, ssl=ssl_ctx), 2)
        if parts.password:
            auth = asyncio.get_running_loop().create_future()
            args = ("AUTH", unquote(parts.username), unquote(parts.password)) if parts.username else ("AUTH", unquote(parts.password))
            proto.send(resp(*args), [(b"+", auth)])
            await asyncio.wait_for(auth, 2)
        return proto

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                proto = await self._open()
                # Connections of the command pool may predate a Redis restart: drop them all
                # before saying healthy, rather than retry (and maybe repeat) a publish.
                await self.client.connection_pool.disconnect()
                await load_functions(self.client)
                await self.owner.write_config(self.client)
                self.proto = proto
                wanted = sorted(set(self.channels) | self.owner.fixed_channels(self.index))
                if wanted:
                    futures = self._send_now(b"subscribe", wanted)
                    for channel, future in zip(wanted, futures, strict=True):
                        if channel in self.channels:
                            self.channels[channel] = future
                    await asyncio.wait_for(asyncio.gather(*futures), 5)
                reconnect = self.ever_connected
                self.healthy = self.ever_connected = True
                self._connected.set()
                delay = 0.05
                log.info("redis connected", extra={"shard": self.index, "channels": len(wanted)})
                if reconnect:
                    self.owner.report_gap([c for c in wanted if c in self.channels])
                watchdog = asyncio.get_running_loop().create_task(self._watch(proto))
                try:
                    await proto.lost
                finally:
                    watchdog.cancel()
                log.warning("redis pub/sub connection lost", extra={"shard": self.index})
            except asyncio.CancelledError:
                raise
            except (*UNAVAILABLE, BrokerError, RedisError) as exc:
                log.warning("redis unavailable: %s", exc, extra={"shard": self.index, "retry_in_s": round(delay, 2)})
            finally:
                self.healthy = False
                self._connected.clear()
                if self.proto is not None and self.proto.transport is not None:
                    self.proto.transport.close()
                self.proto = None
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 3.0)

    async def _watch(self, proto: _PubSubProtocol) -> None:
        """A half-open socket (failover behind a VIP, a NAT timeout, a dead host) never
        reports itself: PING through the subscribed connection and drop it when Redis
        does not answer in time, so the reconnect (and gap recovery) happens."""
        while True:
            await asyncio.sleep(PING_INTERVAL)
            pong = asyncio.get_running_loop().create_future()
            pong.add_done_callback(_retrieve)
            proto.send(resp("PING"), [(b"pong", pong)])
            try:
                await asyncio.wait_for(asyncio.shield(pong), PING_TIMEOUT)
            except TimeoutError:
                log.warning("redis pub/sub connection does not answer; reconnecting", extra={"shard": self.index})
                if proto.transport is not None:
                    proto.transport.abort()
                return
            except BrokerError:
                return

    # -- pub/sub commands -------------------------------------------------------------

    def _send_now(self, kind: bytes, channels: list[bytes]) -> list[asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in channels]
        assert self.proto is not None
        self.proto.send(resp(kind.upper(), *channels), [(kind, f) for f in futures])
        return futures

    def _queue(self, kind: bytes, channel: bytes, future: asyncio.Future[None] | None) -> None:
        self._pending.append((kind, channel, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send queued (UN)SUBSCRIBEs, consecutive ones of a kind in one command."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        proto = self.proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            for _, _, future in pending:
                if future is not None and not future.done():
                    future.set_exception(BrokerUnavailable("redis is not connected"))
            return
        i = 0
        while i < len(pending):
            kind = pending[i][0]
            j = i
            while j < len(pending) and pending[j][0] == kind:
                j += 1
            group = pending[i:j]
            proto.send(resp(kind.upper(), *[c for _, c, _ in group]), [(kind, f) for _, _, f in group])
            i = j

    async def subscribe(self, channel: bytes) -> None:
        """Returns once Redis confirmed the channel's subscription (at once when it already had)."""
        if not self.healthy:
            raise BrokerUnavailable("redis is not connected")
        future = self.channels.get(channel)
        if future is None or (future.done() and future.exception() is not None):
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
            self.channels[channel] = future
            self._queue(b"subscribe", channel, future)
        await asyncio.shield(future)

    def unsubscribe(self, channel: bytes) -> None:
        if self.channels.pop(channel, None) is None:
            return
        if self.healthy:
            self._queue(b"unsubscribe", channel, None)

    def deliver(self, batch: list[tuple[bytes, bytes]]) -> None:
        self.owner.deliver(batch)

    def check(self) -> None:
        if not self.healthy:
            raise BrokerUnavailable("redis is not connected")

    async def fcall(self, name: str, key: str, *args: Any) -> Any:
        """One Redis function call on this server, with one key.

        Raises:
            BrokerUnavailable: the server cannot be reached (now or during the call).
            BrokerError: the function refused the call.
        """
        self.check()
        try:
            return await self.client.fcall(name, 1, key, *args)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None
        except RedisError as exc:
            raise BrokerError(f"redis: {exc}") from None


