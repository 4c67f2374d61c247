"""The memory engine: broker and presence for one process. History and offsets live here."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from livegate.channels.broker import (
    BrokerEventHandler,
    EngineEvents,
    HistoryOptions,
    HistoryResult,
    PresenceStats,
    PublishOptions,
    PublishResult,
)
from livegate.protocol.types import ClientInfo, Publication, StreamPosition

__all__ = ["MemoryEngine", "MemoryBroker", "MemoryPresence", "MemoryUserConnections", "new_epoch"]


def new_epoch() -> str:
    return secrets.token_hex(4)


class _Stream:
    __slots__ = ("epoch", "top", "pubs", "expires_at", "ttl_ms")

    def __init__(self, maxlen: int | None) -> None:
        self.epoch = new_epoch()
        self.top = 0
        self.pubs: deque[Publication] = deque(maxlen=maxlen)
        self.expires_at = 0.0  # 0: the position never expires
        self.ttl_ms = 0  # how long a publication stays (from the latest publish's options)


def select(pubs: list[Publication], opts: HistoryOptions) -> list[Publication]:
    """Apply limit/since/reverse to the retained publications (oldest first). Shared by engines."""
    if opts.since is not None:
        if opts.reverse:
            pubs = [p for p in pubs if p.offset < opts.since.offset][::-1]
        else:
            pubs = [p for p in pubs if p.offset > opts.since.offset]
    elif opts.reverse:
        pubs = pubs[::-1]
    if opts.limit == 0:
        return []
    if opts.limit > 0:
        return pubs[: opts.limit]
    return pubs


class MemoryBroker:
    """Publishes to this process's hub; keeps history in deques.

    Appending to the history runs without an ``await``, so offsets are atomic per channel.
    Fan-out is deferred to the end of the current loop iteration: what is published in one
    iteration reaches the hub as one batch, so a connection gets one frame for it. A history
    read first hands the waiting batch to the hub, so a subscribe in flight merges it by
    offset (nothing lost or duplicated).
    """

    def __init__(self, handler: BrokerEventHandler, *, clock: Callable[[], float] = time.time,
                 sweep_interval: float = 30.0, batch: bool = True) -> None:
        #: False: fan out inside ``publish`` (one publication per batch), e.g. for handler tests.
        self.batch = batch
        self._clock = clock
        self._handler = handler
        self._streams: dict[str, _Stream] = {}
        self._idempotent: dict[tuple[str, str], tuple[float, StreamPosition]] = {}
        self._sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None
        self._queue: list[tuple[str, str, Any]] = []  # ("p" | "j" | "l", channel, publication | info)
        self._flush_scheduled = False

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()

    def sweep(self) -> None:
        """Drop expired positions, publications past their TTL and old idempotency keys."""
        now = self._clock()
        for channel in [c for c, s in self._streams.items() if s.expires_at and s.expires_at <= now]:
            del self._streams[channel]
        for key in [k for k, (exp, _) in self._idempotent.items() if exp <= now]:
            del self._idempotent[key]

    def _stream(self, channel: str, maxlen: int | None, meta_ttl: float, create: bool) -> _Stream | None:
        now = self._clock()
        stream = self._streams.get(channel)
        if stream is not None and stream.expires_at and stream.expires_at <= now:
            stream = None
            del self._streams[channel]
        if stream is None:
            if not create:
                return None
            stream = self._streams[channel] = _Stream(maxlen)
        elif maxlen is not None and stream.pubs.maxlen != maxlen:
            stream.pubs = deque(stream.pubs, maxlen=maxlen)
        if meta_ttl > 0:
            stream.expires_at = now + meta_ttl
        return stream

    def _trim(self, stream: _Stream) -> None:
        oldest_kept = int(self._clock() * 1000) - stream.ttl_ms
        pubs = stream.pubs
        while pubs and pubs[0].time <= oldest_kept:
            pubs.popleft()

    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        now = self._clock()
        if opts.idempotency_key:
            seen = self._idempotent.get((channel, opts.idempotency_key))
            if seen is not None and seen[0] > now:
                return PublishResult(seen[1], suppressed=True)
        pub = Publication(data, 0, opts.info, opts.tags or None)
        position = StreamPosition()
        if opts.history_size > 0 and opts.history_ttl > 0:
            stream = self._stream(channel, opts.history_size, opts.history_meta_ttl, True)
            assert stream is not None
            stream.top += 1
            stream.ttl_ms = int(opts.history_ttl * 1000)
            pub = replace(pub, offset=stream.top, time=int(now * 1000))
            stream.pubs.append(pub)
            self._trim(stream)
            position = StreamPosition(stream.top, stream.epoch)
        if opts.idempotency_key:
            self._idempotent[(channel, opts.idempotency_key)] = (now + opts.idempotent_result_ttl, position)
        self._enqueue("p", channel, pub)
        return PublishResult(position)

    def _enqueue(self, kind: str, channel: str, item: Any) -> None:
        self._queue.append((kind, channel, item))
        if not self.batch:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Hand everything queued to the hub, in order: publications in batches."""
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        handler = self._handler
        if not queue:
            return
        pubs: list[tuple[str, Publication]] = []
        for kind, channel, item in queue:
            if kind == "p":
                pubs.append((channel, item))
                continue
            if pubs:
                handler.handle_publications(pubs)
                pubs = []
            if kind == "j":
                handler.handle_join(channel, item)
            else:
                handler.handle_leave(channel, item)
        if pubs:
            handler.handle_publications(pubs)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        self._enqueue("j", channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        self._enqueue("l", channel, info)

    async def subscribe(self, channel: str) -> None:
        return None  # the hub already knows its local subscribers

    async def unsubscribe(self, channel: str) -> None:
        return None

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult:
        self.flush()  # what is published so far reaches subscribers (and subscribes in flight) first
        stream = self._stream(channel, None, 0.0, True)
        assert stream is not None
        ttl = opts.unpublished_ttl if stream.top == 0 and opts.unpublished_ttl > 0 else opts.meta_ttl
        if ttl > 0:
            stream.expires_at = self._clock() + ttl
        self._trim(stream)
        position = StreamPosition(stream.top, stream.epoch)
        if opts.limit == 0:
            return HistoryResult([], position)
        return HistoryResult(select(list(stream.pubs), opts), position)

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.pubs.clear()


class MemoryPresence:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._channels: dict[str, dict[str, tuple[float, ClientInfo]]] = {}

    def _live(self, channel: str) -> dict[str, tuple[float, ClientInfo]]:
        entries = self._channels.get(channel)
        if not entries:
            return {}
        now = self._clock()
        dead = [cid for cid, (exp, _) in entries.items() if exp <= now]
        for cid in dead:
            del entries[cid]
        if not entries:
            del self._channels[channel]
        return entries

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return {cid: info for cid, (_, info) in self._live(channel).items()}

    async def presence_stats(self, channel: str) -> PresenceStats:
        entries = self._live(channel)
        return PresenceStats(len(entries), len({info.user for _, info in entries.values()}))

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        self._channels.setdefault(channel, {})[info.client] = (self._clock() + ttl, info)

    async def add_presence_many(self, entries: Sequence[tuple[str, ClientInfo]], ttl: float) -> int:
        for channel, info in entries:
            await self.add_presence(channel, info, ttl)
        return 0

    async def remove_presence(self, channel: str, client_id: str, user: str) -> None:
        entries = self._channels.get(channel)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._channels[channel]


class MemoryUserConnections:
    """Connections per user, each entry expiring ``ttl`` seconds after its last refresh."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._users: dict[str, dict[str, float]] = {}  # user -> client id -> expiry time

    def _live(self, user: str, now: float) -> dict[str, float]:
        entries = self._users.get(user)
        if entries is None:
            return {}
        for client_id in [c for c, exp in entries.items() if exp <= now]:
            del entries[client_id]
        if not entries:
            del self._users[user]
        return entries

    async def add_user_connection(self, user: str, client_id: str, limit: int, ttl: float) -> bool:
        now = self._clock()
        entries = self._live(user, now)
        if client_id not in entries and limit > 0 and len(entries) >= limit:
            return False
        self._users.setdefault(user, entries)[client_id] = now + ttl
        return True

    async def refresh_user_connections(self, user: str, client_ids: Sequence[str], ttl: float) -> list[str]:
        now = self._clock()
        entries = self._live(user, now)
        missing = [client_id for client_id in client_ids if client_id not in entries]
        for client_id in client_ids:
            if client_id in entries:
                entries[client_id] = now + ttl
        return missing

    async def remove_user_connection(self, user: str, client_id: str) -> None:
        entries = self._users.get(user)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._users[user]

    async def user_connection_count(self, user: str) -> int:
        return len(self._live(user, self._clock()))


class MemoryEngine:
    """The one-process engine: nothing to reach, so always healthy; no other nodes."""

    name = "memory"
    envelope_version = 1
    nodes = None
    shards = ()

    def __init__(self, events: EngineEvents, *, clock: Callable[[], float] = time.time, batch: bool = True) -> None:
        self.broker = MemoryBroker(events, clock=clock, batch=batch)
        self.presence = MemoryPresence(clock=clock)
        self.users = MemoryUserConnections(clock=clock)

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        await self.broker.start()

    async def close(self) -> None:
        await self.broker.close()

    def use_envelope_version(self, version: int) -> None:
        return None  # nothing crosses a process boundary
