"""The memory engine: broker and presence for one process. History and offsets live here."""

from __future__ import annotations

import asyncio
import bisect
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from livegate.channels.broker import (
    MAP_UNWRITTEN_TTL,
    BrokerEventHandler,
    EngineEvents,
    HistoryOptions,
    HistoryResult,
    MapSettings,
    MapStateResult,
    MapUpdateResult,
    MapWriteOptions,
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


class _Map:
    """A map channel's entries: key -> (its latest publication, when it expires or 0)."""

    __slots__ = ("epoch", "entries", "settings", "keys")

    def __init__(self, epoch: str, settings: MapSettings) -> None:
        self.epoch = epoch
        self.entries: dict[str, tuple[Publication, float]] = {}
        self.settings = settings
        self.keys: list[str] = []  # the entries' keys, sorted: state pages without sorting the map

    def put(self, key: str, pub: Publication, expires_at: float) -> None:
        if key not in self.entries:
            bisect.insort(self.keys, key)
        self.entries[key] = (pub, expires_at)

    def drop(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            del self.keys[bisect.bisect_left(self.keys, key)]


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
        self._maps: dict[str, _Map] = {}
        self._map_sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep_forever())
        self._map_sweeper = loop.create_task(self._expire_forever())

    async def close(self) -> None:
        for task in (self._sweeper, self._map_sweeper):
            if task is not None:
                task.cancel()
        self._sweeper = self._map_sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.map_expire()

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

    # -- map channels ------------------------------------------------------------------------

    def _map(self, channel: str, settings: MapSettings, write: bool) -> tuple[_Map, _Stream]:
        """The channel's map and stream; both start over (new epoch) once the stream's
        position expired. ``write``: the map lives ``meta_ttl`` from now."""
        created = channel not in self._streams
        stream = self._stream(channel, settings.stream_size or 1, settings.meta_ttl if write else 0.0, True)
        assert stream is not None
        if write and not settings.meta_ttl:
            stream.expires_at = 0.0  # persistent: a position a read created briefly now stays
        elif created and not write:
            stream.expires_at = self._clock() + (settings.meta_ttl or MAP_UNWRITTEN_TTL)
        m = self._maps.get(channel)
        if m is None or m.epoch != stream.epoch:
            m = self._maps[channel] = _Map(stream.epoch, settings)
        if write:
            m.settings = settings
        return m, stream

    def _live_entry(self, m: _Map, key: str, now: float) -> Publication | None:
        found = m.entries.get(key)
        if found is None:
            return None
        if found[1] and found[1] <= now:
            return None  # expired: the sweep removes it (with its removal publication)
        return found[0]

    def _suppressed(self, channel: str, opts: MapWriteOptions, now: float) -> MapUpdateResult | None:
        if opts.idempotency_key:
            seen = self._idempotent.get((channel, opts.idempotency_key))
            if seen is not None and seen[0] > now:
                return MapUpdateResult(seen[1], True, "idempotency")
        return None

    def _map_write(self, channel: str, m: _Map, stream: _Stream, pub: Publication, opts: MapWriteOptions,
                   now: float, prev: bytes | None = None) -> MapUpdateResult:
        """``prev``: the entry's value before, sent with the fan-out only (per-key delta base)."""
        settings = opts.settings
        if settings.stream_size > 0:
            stream.top += 1
            stream.ttl_ms = int(settings.stream_ttl * 1000)
            pub = replace(pub, offset=stream.top)
            stream.pubs.append(pub)
            self._trim(stream)
        if pub.removed:
            m.drop(pub.key)
        else:
            m.put(pub.key, pub, now + settings.key_ttl if settings.key_ttl > 0 else 0.0)
        position = StreamPosition(stream.top, stream.epoch)
        if opts.idempotency_key:
            self._idempotent[(channel, opts.idempotency_key)] = (now + opts.idempotent_result_ttl, position)
        self._enqueue("p", channel, pub if prev is None or pub.removed else replace(pub, prev=prev))
        return MapUpdateResult(position)

    def _begin_write(self, channel: str, key: str, opts: MapWriteOptions, removing: bool,
                     ) -> MapUpdateResult | tuple[_Map, _Stream, Publication | None, float]:
        """The checks of a write, in the Redis function's order: idempotency, key_mode,
        compare-and-set, a removal of nothing. Returns the result of a suppressed write, or what
        the write needs (map, stream, current entry, time)."""
        now = self._clock()
        early = self._suppressed(channel, opts, now)
        if early is not None:
            return early
        m, stream = self._map(channel, opts.settings, True)
        current = self._live_entry(m, key, now)
        position = StreamPosition(stream.top, stream.epoch)
        reason = ""
        if not removing and opts.key_mode == "if_new" and current is not None:
            reason = "key_exists"
        elif not removing and opts.key_mode == "if_exists" and current is None:
            reason = "key_not_found"
        elif opts.expected is not None and (opts.expected.epoch != stream.epoch or opts.expected.offset != (
                current.offset if current is not None else 0)):
            return MapUpdateResult(position, True, "position_mismatch", current)
        elif removing and current is None:
            reason = "key_not_found"
        if reason:
            if opts.refresh_ttl_on_suppress and current is not None and opts.settings.key_ttl > 0:
                m.put(key, current, now + opts.settings.key_ttl)
            return MapUpdateResult(position, True, reason)
        return m, stream, current, now

    async def map_publish(self, channel: str, key: str, data: bytes, opts: MapWriteOptions) -> MapUpdateResult:
        begun = self._begin_write(channel, key, opts, False)
        if isinstance(begun, MapUpdateResult):
            return begun
        m, stream, current, now = begun
        pub = Publication(data, 0, opts.info, opts.tags or None, int(now * 1000), key)
        return self._map_write(channel, m, stream, pub, opts, now, current.data if current is not None else None)

    async def map_remove(self, channel: str, key: str, opts: MapWriteOptions) -> MapUpdateResult:
        begun = self._begin_write(channel, key, opts, True)
        if isinstance(begun, MapUpdateResult):
            return begun
        m, stream, current, now = begun
        assert current is not None
        pub = Publication(b"", 0, opts.info, (opts.tags or current.tags) or None, int(now * 1000), key, True)
        return self._map_write(channel, m, stream, pub, opts, now)

    async def map_state(self, channel: str, settings: MapSettings, *, cursor: str = "", limit: int = 100,
                        key: str = "") -> MapStateResult:
        self.flush()  # as history(): what is written so far reaches subscribers first
        now = self._clock()
        m, stream = self._map(channel, settings, False)
        position = StreamPosition(stream.top, stream.epoch)
        if key:
            found = self._live_entry(m, key, now)
            return MapStateResult([found] if found is not None else [], position)
        entries = m.entries
        page: list[str] = []
        more = False
        for key in m.keys[bisect.bisect_right(m.keys, cursor) if cursor else 0:]:
            exp = entries[key][1]
            if exp and exp <= now:
                continue  # expired: the sweep removes it
            if limit > 0 and len(page) == limit:
                more = True
                break
            page.append(key)
        return MapStateResult([entries[k][0] for k in page], position, page[-1] if more else "")

    async def map_stats(self, channel: str) -> int:
        m = self._maps.get(channel)
        stream = self._streams.get(channel)
        now = self._clock()
        if m is None or stream is None or stream.epoch != m.epoch or (stream.expires_at and stream.expires_at <= now):
            return 0
        return sum(1 for _, exp in m.entries.values() if not exp or exp > now)

    async def map_clear(self, channel: str) -> None:
        self._maps.pop(channel, None)
        self._streams.pop(channel, None)

    async def map_expire(self) -> int:
        now = self._clock()
        removed = 0
        for channel, m in list(self._maps.items()):
            stream = self._streams.get(channel)
            if stream is None or stream.epoch != m.epoch or (stream.expires_at and stream.expires_at <= now):
                del self._maps[channel]  # the whole map expired (meta_ttl): nothing to announce
                continue
            for key in [k for k, (_, exp) in m.entries.items() if exp and exp <= now]:
                opts = MapWriteOptions(settings=m.settings)
                old = m.entries[key][0]
                pub = Publication(b"", 0, None, old.tags, int(now * 1000), key, True)
                self._map_write(channel, m, stream, pub, opts, now)
                removed += 1
        return removed


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
