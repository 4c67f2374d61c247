"""The redis engine: broker, presence and the node channel for many processes on many hosts.

The engine is one object with separate units for its roles:

* ``shard.Shard``: one Redis server (command client, pub/sub connection, reconnects);
  several servers spread channels by a jump consistent hash of the channel name;
* ``broker.RedisBroker``: publish, join/leave, subscribe, history, map channels (the engine
  removes map entries past their key_ttl once a second);
* ``presence.RedisPresence``: presence entries with expiry;
* ``users.RedisUserConnections``: every node's connections per user, with expiry;
* ``RedisNodeChannel``: messages between the nodes of a cluster (``{prefix}.node`` on shard 0);
* ``envelope``: the versioned wire format between nodes, decoded in one place;
* ``functions``: the Redis function library (livegate.lua) that publishes atomically with
  history, the same step a backend runs with ``FCALL livegate_publish 1 <channel> <data>``.

What arrives over pub/sub is decoded here and reported to the ``EngineEvents`` the engine
was built with; gaps (a shard's pub/sub connection was lost and came back) too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from livegate.channels.broker import EngineEvents
from livegate.channels.redis.broker import RedisBroker
from livegate.channels.redis.envelope import ENVELOPE_VERSION, EnvelopeError, decode_envelope
from livegate.channels.redis.functions import FUNCTION_VERSION, load_functions
from livegate.channels.redis.presence import RedisPresence
from livegate.channels.redis.shard import UNAVAILABLE, Shard
from livegate.channels.redis.users import RedisUserConnections
from livegate.config import Config
from livegate.errors import BrokerError, BrokerUnavailable
from livegate.sharding import jump_hash, shard_index
from livegate.tasks import cancel_and_wait

__all__ = ["RedisEngine", "RedisNodeChannel", "jump_hash", "FUNCTION_VERSION", "load_functions"]

log = logging.getLogger("livegate.redis")

#: Seconds between two sweeps of map entries past their key_ttl.
MAP_EXPIRE_INTERVAL = 1.0


class RedisNodeChannel:
    """Node-to-node messages over the ``{prefix}.node`` pub/sub channel of the first shard."""

    def __init__(self, shard: Shard, channel: bytes) -> None:
        self._shard = shard
        self.channel = channel

    async def publish_node(self, data: bytes) -> None:
        self._shard.check()
        try:
            await self._shard.client.publish(self.channel, data)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None


class RedisEngine:
    name = "redis"
    envelope_version = ENVELOPE_VERSION

    def __init__(self, config: Config, events: EngineEvents) -> None:
        rcfg = config.engine.redis
        self.config = config
        self.prefix = rcfg.prefix
        self._events = events
        self._client_prefix = f"{self.prefix}.client.".encode()
        self.shards = [Shard(self, i, url) for i, url in enumerate(rcfg.address)]
        self._shard_of = lru_cache(maxsize=65536)(self._compute_shard)
        self.broker = RedisBroker(self.prefix, self._shard_of, self.shards)
        self.presence = RedisPresence(self.prefix, self._shard_of)
        # Not the cached channel lookup: user ids would crowd channels out of its cache.
        self.users = RedisUserConnections(self.prefix, self._compute_shard)
        self.nodes = RedisNodeChannel(self.shards[0], f"{self.prefix}.node".encode())
        self.undecodable = 0
        self._closed = False
        self._config_writes: set[asyncio.Task[Any]] = set()
        self._map_expirer: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        for shard in self.shards:
            shard.start()
        try:
            await asyncio.gather(*(s.wait_connected(10.0) for s in self.shards))
        except TimeoutError:
            down = [s.address for s in self.shards if not s.healthy]
            raise BrokerUnavailable(f"cannot reach redis at {', '.join(down)}") from None
        if self._map_expirer is None:
            self._map_expirer = asyncio.get_running_loop().create_task(self._expire_maps_forever(),
                                                                        name="redis-map-expire")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(self._map_expirer)
        self._map_expirer = None
        for task in list(self._config_writes):
            task.cancel()
        for shard in self.shards:
            await shard.close()

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.shards)

    async def _expire_maps_forever(self) -> None:
        """Remove map entries past their key_ttl about once a second (every node does; each
        removal is one atomic function call, so two nodes never remove an entry twice). A
        failure (Redis down) is logged once until a sweep succeeds again; it never ends the task."""
        failing = False
        while True:
            await asyncio.sleep(MAP_EXPIRE_INTERVAL)
            try:
                await self.broker.map_expire()
            except BrokerError as exc:
                if not failing:
                    log.warning("map entry expiry failed: %s", exc)
                failing = True
                continue
            except Exception:
                log.exception("map entry expiry failed")
                failing = True
                continue
            if failing:
                log.info("map entry expiry works again")
            failing = False

    def _compute_shard(self, channel: str) -> Shard:
        return self.shards[shard_index(channel, len(self.shards))]

    def shard_for(self, channel: str) -> Shard:
        return self._shard_of(channel)

    # -- envelope version -------------------------------------------------------------

    def use_envelope_version(self, version: int) -> None:
        version = max(1, min(version, ENVELOPE_VERSION))
        if version == self.broker.write_version:
            return
        self.broker.write_version = version
        # Backends' FCALLs write what the config hash says: keep it in step.
        for shard in self.shards:
            if shard.healthy:
                task = asyncio.get_running_loop().create_task(self._write_envelope_field(shard.client, version))
                self._config_writes.add(task)
                task.add_done_callback(self._config_writes.discard)

    async def _write_envelope_field(self, client: aioredis.Redis, version: int) -> None:
        try:
            await client.hset(f"{self.prefix}.config", "envelope", str(version))
        except Exception as exc:  # rewritten on the next (re)connect
            log.warning("could not record the envelope version: %s", exc)

    # -- what shards ask of the engine ------------------------------------------------

    def fixed_channels(self, shard_index: int) -> set[bytes]:
        """Channels every process listens to on a shard: the node channel on shard 0."""
        return {self.nodes.channel} if shard_index == 0 else set()

    async def write_config(self, client: aioredis.Redis) -> None:
        """Namespace history settings and data formats (and the envelope version) for backends
        that FCALL livegate_publish directly."""
        ch = self.config.channel
        fields: dict[FieldT, EncodableT] = {
            "private_prefix": ch.private_prefix,
            "namespace_boundary": ch.namespace_boundary,
            "user_boundary": ch.user_boundary,
            "history_meta_ttl": f"{ch.history_meta_ttl:.3f}",
            "envelope": str(self.broker.write_version),
            "max_publication_size": str(ch.max_publication_size),
        }
        for name, opts in [("", ch.without_namespace), *((ns.name, ns) for ns in ch.namespaces)]:
            size, ttl = (opts.history_size, opts.history_ttl) if opts.history_enabled else (0, 0.0)
            # plain decimals: Lua parses them
            fields[f"ns:{name}"] = f"{size} {ttl:.3f} {opts.history_meta_ttl:.3f} {opts.publication_data_format}"
        key = f"{self.prefix}.config"
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            await pipe.execute()

    def report_gap(self, channels: list[bytes]) -> None:
        cut = len(self._client_prefix)
        names = [c[cut:].decode() for c in channels if c.startswith(self._client_prefix)]
        if names:
            self._events.handle_gap(names)

    def deliver(self, batch: list[tuple[bytes, bytes]]) -> None:
        """Decode what one socket read brought and report it, publications in batches.

        Only decoding is guarded: an envelope that cannot be read is skipped and counted. The
        events are called outside that guard, each message exactly once, even if a callback fails.
        """
        events = self._events
        pubs: list[tuple[str, Any]] = []
        cut = len(self._client_prefix)
        node_channel = self.nodes.channel
        for raw_channel, data in batch:
            if raw_channel == node_channel:
                _report(events.handle_node_message, data)
                continue
            if not raw_channel.startswith(self._client_prefix):
                continue
            try:
                channel = raw_channel[cut:].decode()
                kind, value = decode_envelope(data)
            except (EnvelopeError, UnicodeDecodeError) as exc:
                self.undecodable += 1
                if self.undecodable == 1 or self.undecodable % 1000 == 0:
                    log.warning("undecodable message on redis channel: %s", exc,
                                extra={"channel": raw_channel[cut:].decode(errors="replace"), "count": self.undecodable})
                continue
            if kind == "p":
                pubs.append((channel, value))
                continue
            if pubs:
                ready, pubs = pubs, []
                _report(events.handle_publications, ready)
            _report(events.handle_join if kind == "j" else events.handle_leave, channel, value)
        if pubs:
            _report(events.handle_publications, pubs)


def _report(callback: Callable[..., None], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        # A bug downstream: log it, and never hand the same messages over again.
        log.exception("engine event handler failed")
