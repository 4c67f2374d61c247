"""The redis engine: broker and presence for many processes on many hosts.

Commands (publish, history, presence) go through redis-py with hiredis. Pub/sub uses one
connection per shard per process, read by a thin asyncio Protocol around ``hiredis.Reader``:
every chunk read from the socket becomes one batch for the hub. A channel's Redis
subscription is reference counted by the hub (SUBSCRIBE on the first local subscriber,
UNSUBSCRIBE after the last) and subscribes issued in the same loop iteration share one
SUBSCRIBE command.

Publishing runs the Redis function ``livegate_publish`` (lua/livegate.lua): history append,
offset, epoch and PUBLISH in one atomic step per channel, the same step a backend runs with
``FCALL livegate_publish 1 <channel> <data> [<options-json>]``.

When a shard's pub/sub connection drops, publishes and subscribes on it fail fast with
BrokerUnavailable; it reconnects with backoff, resubscribes every channel it needs, and
reports the channels to ``on_gap`` so that their subscribers can recover what they missed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import ssl as ssl_module
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import msgpack
import orjson
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from livegate.channels.broker import (
    BrokerEventHandler,
    HistoryOptions,
    HistoryResult,
    PresenceStats,
    PublishOptions,
    PublishResult,
)
from livegate.config import Config
from livegate.errors import BrokerError, BrokerUnavailable
from livegate.protocol.types import ClientInfo, Publication, StreamPosition
from livegate.tasks import cancel_and_wait

__all__ = ["RedisEngine", "jump_hash", "FUNCTION_VERSION", "load_functions"]

log = logging.getLogger("livegate.redis")

LIBRARY = resources.files("livegate.channels").joinpath("lua/livegate.lua").read_text(encoding="utf-8")
FUNCTION_VERSION = int(next(line for line in LIBRARY.splitlines() if line.startswith("local VERSION")).split("=")[1])

PING_INTERVAL = 2.0  # seconds between pub/sub liveness checks
PING_TIMEOUT = 3.0

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach): adding a shard moves only 1/n of the keys."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def _resp(*parts: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}").geturl()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # marks it retrieved: a failed confirmation nobody waits for is not an error


def decode_envelope(raw: bytes) -> Publication:
    _, offset, _epoch, data, info, tags, ms = msgpack.unpackb(raw, raw=True, use_list=True)
    return Publication(data, offset, info or None, orjson.loads(tags) if tags else None, ms)


async def load_functions(client: aioredis.Redis) -> None:
    """Load the livegate function library unless the same or a newer version is there."""
    try:
        current = int(await client.fcall_ro("livegate_version", 0))
    except ResponseError:
        current = 0
    if current < FUNCTION_VERSION:
        await client.function_load(LIBRARY, replace=True)
        log.info("loaded redis functions", extra={"version": FUNCTION_VERSION, "previous": current})
    elif current > FUNCTION_VERSION:
        log.warning("redis has newer livegate functions; keeping them",
                    extra={"version": current, "ours": FUNCTION_VERSION})


class _PubSubProtocol(asyncio.Protocol):
    """RESP3-free pub/sub reader: parses with hiredis, hands batches to the shard."""

    def __init__(self, shard: _Shard) -> None:
        self.shard = shard
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[tuple[bytes, asyncio.Future[None] | None]] = deque()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

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


class _Shard:
    """One Redis server: a command client and a pub/sub connection that reconnects."""

    def __init__(self, engine: RedisEngine, index: int, url: str) -> None:
        self.engine = engine
        self.index = index
        self.url = url
        # A bounded pool: a burst of subscribes waits for a free connection (3 s at most)
        # instead of opening hundreds of connections or failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=3.0, socket_connect_timeout=1.0, socket_timeout=3.0)
        self.client = aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
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
            proto.send(_resp(*args), [(b"+", auth)])
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
                await self.engine.write_config(self.client)
                self.proto = proto
                wanted = sorted(set(self.channels) | self.engine.fixed_channels(self.index))
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
                    self.engine.report_gap([c for c in wanted if c in self.channels])
                watchdog = asyncio.get_running_loop().create_task(self._watch(proto))
                try:
                    await proto.lost
                finally:
                    watchdog.cancel()
                log.warning("redis pub/sub connection lost", extra={"shard": self.index})
            except asyncio.CancelledError:
                raise
            except (*_UNAVAILABLE, BrokerError, RedisError) as exc:
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
            proto.send(_resp("PING"), [(b"pong", pong)])
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
        self.proto.send(_resp(kind.upper(), *channels), [(kind, f) for f in futures])
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
            proto.send(_resp(kind.upper(), *[c for _, c, _ in group]), [(kind, f) for _, _, f in group])
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
        self.engine.deliver(batch)

    def check(self) -> None:
        if not self.healthy:
            raise BrokerUnavailable("redis is not connected")


class RedisEngine:
    """Broker and PresenceManager on Redis (one object serves both protocols)."""

    def __init__(self, config: Config, *, node_channel_handler: Callable[[bytes], None] | None = None) -> None:
        rcfg = config.engine.redis
        self.config = config
        self.prefix = rcfg.prefix
        self._client_prefix = f"{self.prefix}.client.".encode()
        self.node_channel = f"{self.prefix}.node".encode()
        self.shards = [_Shard(self, i, url) for i, url in enumerate(rcfg.address)]
        self._handler: BrokerEventHandler | None = None
        self.on_node_message = node_channel_handler
        self.on_gap: Callable[[list[str]], None] | None = None
        self._shard_of = lru_cache(maxsize=65536)(self._compute_shard)
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        for shard in self.shards:
            shard.start()
        try:
            await asyncio.gather(*(s.wait_connected(10.0) for s in self.shards))
        except TimeoutError:
            down = [_redact(s.url) for s in self.shards if not s.healthy]
            raise BrokerUnavailable(f"cannot reach redis at {', '.join(down)}") from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for shard in self.shards:
            await shard.close()

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.shards)

    def fixed_channels(self, shard_index: int) -> set[bytes]:
        """Channels every process listens to on a shard: the node control channel on shard 0."""
        return {self.node_channel} if shard_index == 0 else set()

    async def write_config(self, client: aioredis.Redis) -> None:
        """Namespace history settings for backends that FCALL livegate_publish directly."""
        ch = self.config.channel
        fields: dict[str, str] = {
            "private_prefix": ch.private_prefix,
            "namespace_boundary": ch.namespace_boundary,
            "history_meta_ttl": f"{ch.history_meta_ttl:.3f}",
        }
        for name, opts in [("", ch.without_namespace), *((ns.name, ns) for ns in ch.namespaces)]:
            size, ttl = (opts.history_size, opts.history_ttl) if opts.history_enabled else (0, 0.0)
            fields[f"ns:{name}"] = f"{size} {ttl:.3f} {opts.history_meta_ttl:.3f}"  # plain decimals: Lua parses them
        key = f"{self.prefix}.config"
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            await pipe.execute()

    def _compute_shard(self, channel: str) -> _Shard:
        if len(self.shards) == 1:
            return self.shards[0]
        digest = hashlib.blake2b(channel.encode(), digest_size=8).digest()
        return self.shards[jump_hash(int.from_bytes(digest, "big"), len(self.shards))]

    def shard_for(self, channel: str) -> _Shard:
        return self._shard_of(channel)

    # -- inbound ----------------------------------------------------------------------

    def deliver(self, batch: list[tuple[bytes, bytes]]) -> None:
        handler = self._handler
        if handler is None:
            return
        pubs: list[tuple[str, Publication]] = []
        cut = len(self._client_prefix)
        for raw_channel, data in batch:
            if raw_channel == self.node_channel:
                if self.on_node_message is not None:
                    self.on_node_message(data)
                continue
            if not raw_channel.startswith(self._client_prefix):
                continue
            channel = raw_channel[cut:].decode()
            try:
                message = msgpack.unpackb(data, raw=True, use_list=True)
                kind = message[0]
                if kind == b"p":
                    _, offset, _epoch, payload, info, tags, ms = message
                    pubs.append((channel, Publication(payload, offset, info or None,
                                                      orjson.loads(tags) if tags else None, ms)))
                    continue
                if pubs:
                    handler.handle_publications(pubs)
                    pubs = []
                if kind == b"j":
                    handler.handle_join(channel, ClientInfo.from_json(message[1]))
                elif kind == b"l":
                    handler.handle_leave(channel, ClientInfo.from_json(message[1]))
            except Exception:
                log.exception("undecodable message on redis channel", extra={"channel": channel})
        if pubs:
            handler.handle_publications(pubs)

    def report_gap(self, channels: list[bytes]) -> None:
        cut = len(self._client_prefix)
        names = [c[cut:].decode() for c in channels if c.startswith(self._client_prefix)]
        if names and self.on_gap is not None:
            self.on_gap(names)

    # -- broker -----------------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        shard = self.shard_for(channel)
        shard.check()
        options: dict[str, Any] = {
            "prefix": self.prefix,
            "trusted": True,  # orjson output: valid JSON on one line
            "history_size": opts.history_size if opts.history_ttl > 0 else 0,
            "history_ttl": opts.history_ttl,
            "history_meta_ttl": opts.history_meta_ttl,
        }
        if opts.idempotency_key:
            options["idempotency_key"] = opts.idempotency_key
            options["idempotent_ttl"] = opts.idempotent_result_ttl
        if opts.tags:
            options["tags"] = opts.tags
        info = opts.info.to_json() if opts.info is not None else b""
        try:
            reply = await shard.client.fcall("livegate_publish", 1, channel, data, orjson.dumps(options), info)
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None
        except RedisError as exc:
            raise BrokerError(f"redis: {exc}") from None
        offset, epoch = reply[0], reply[1]
        return PublishResult(StreamPosition(int(offset), epoch.decode() if isinstance(epoch, bytes) else epoch),
                             suppressed=len(reply) > 2)

    async def _publish_control(self, channel: str, message: list[Any]) -> None:
        shard = self.shard_for(channel)
        shard.check()
        try:
            await shard.client.publish(self._client_prefix + channel.encode(), msgpack.packb(message))
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._publish_control(channel, ["j", info.to_json()])

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_control(channel, ["l", info.to_json()])

    async def publish_node(self, data: bytes) -> None:
        shard = self.shards[0]
        shard.check()
        try:
            await shard.client.publish(self.node_channel, data)
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None

    async def subscribe(self, channel: str) -> None:
        await self.shard_for(channel).subscribe(self._client_prefix + channel.encode())

    async def unsubscribe(self, channel: str) -> None:
        self.shard_for(channel).unsubscribe(self._client_prefix + channel.encode())

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult:
        shard = self.shard_for(channel)
        shard.check()
        since = "" if opts.since is None else str(opts.since.offset)
        try:
            reply = await shard.client.fcall(
                "livegate_history", 1, channel, self.prefix, opts.limit, since,
                "1" if opts.reverse else "0", f"{opts.meta_ttl:g}")
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None
        except RedisError as exc:
            raise BrokerError(f"redis: {exc}") from None
        top, epoch, *envelopes = reply
        position = StreamPosition(int(top), epoch.decode() if isinstance(epoch, bytes) else epoch)
        return HistoryResult([decode_envelope(e) for e in envelopes], position)

    async def remove_history(self, channel: str) -> None:
        shard = self.shard_for(channel)
        shard.check()
        try:
            await shard.client.delete(f"{self.prefix}.history.{{{channel}}}")
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None

    # -- presence ---------------------------------------------------------------------

    async def _fcall(self, name: str, channel: str, *args: Any) -> Any:
        shard = self.shard_for(channel)
        shard.check()
        try:
            return await shard.client.fcall(name, 1, channel, self.prefix, *args)
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None
        except RedisError as exc:
            raise BrokerError(f"redis: {exc}") from None

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        await self._fcall("livegate_presence_add", channel, info.client, info.to_json(), f"{ttl:g}")

    async def remove_presence(self, channel: str, client_id: str, user: str) -> None:
        await self._fcall("livegate_presence_remove", channel, client_id)

    async def _presence_raw(self, channel: str) -> dict[bytes, bytes]:
        flat = await self._fcall("livegate_presence", channel)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return {cid.decode(): ClientInfo.from_json(raw) for cid, raw in (await self._presence_raw(channel)).items()}

    async def presence_stats(self, channel: str) -> PresenceStats:
        entries = await self._presence_raw(channel)
        users = {orjson.loads(raw).get("user", "") for raw in entries.values()}
        return PresenceStats(len(entries), len(users))
