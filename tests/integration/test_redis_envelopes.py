"""Envelope versions against a real Redis: what the Redis function writes, what history
returns to old and new readers, and instances of two envelope versions on one prefix (a
rolling upgrade) delivering to each other without loss."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import REDIS_URL, delete_prefix, make_config, scaled, unique_prefix
from legacy import old_reader

from livegate.channels.broker import HistoryOptions, PublishOptions
from livegate.channels.redis import RedisEngine
from livegate.channels.redis.envelope import decode_envelope
from livegate.protocol.types import ClientInfo, Publication

HIST = PublishOptions(history_size=50, history_ttl=60)


class Events:
    def __init__(self) -> None:
        self.pubs: list[tuple[str, Publication]] = []
        self.joins: list[ClientInfo] = []
        self.changed = asyncio.Event()

    def handle_publications(self, batch: list[tuple[str, Publication]]) -> None:
        self.pubs.extend(batch)
        self.changed.set()

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append(info)
        self.changed.set()

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        pass

    def handle_gap(self, channels: list[str]) -> None:
        pass

    def handle_node_message(self, data: bytes) -> None:
        pass

    async def wait_for(self, n: int) -> None:
        async with asyncio.timeout(scaled(5)):
            while len(self.pubs) < n:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture
async def redis_client(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await delete_prefix(client, prefix)
    await client.aclose()


async def open_engine(prefix: str, events: Events) -> RedisEngine:
    engine = RedisEngine(make_config({"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}},
                                      "channel": {"without_namespace": {"history_size": 50, "history_ttl": "1m"}}}),
                         events)
    await engine.start()
    return engine


async def raw_messages(client: aioredis.Redis, channel: str, n: int, publish: asyncio.Future) -> list[bytes]:
    """The raw envelopes of the next ``n`` messages of a pub/sub channel."""
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    publish.set_result(None)
    out = []
    async with asyncio.timeout(scaled(5)):
        while len(out) < n:
            msg = await pubsub.get_message(timeout=1, ignore_subscribe_messages=True)
            if msg is not None:
                out.append(msg["data"])
    await pubsub.aclose()
    return out


async def test_the_function_writes_the_version_it_is_told(prefix, redis_client):
    events = Events()
    engine = await open_engine(prefix, events)
    try:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reader = asyncio.create_task(raw_messages(redis_client, f"{prefix}.client.ch", 4, ready))
        await ready
        await engine.broker.subscribe("ch")
        for version in (1, 2):
            engine.use_envelope_version(version)
            await engine.broker.publish("ch", b'{"v":%d}' % version, HIST)
            await engine.broker.publish("ch", b'{"v":%d}' % version, PublishOptions())  # no history
        raw = await reader
        assert [msgpack.unpackb(r)[0] for r in raw] == ["p", "p", 2, 2]
        assert [old_reader(r)[1].offset for r in raw[:2]] == [1, 0]  # v1: what an older instance reads
        await events.wait_for(4)
        assert [(p.offset, p.data) for _, p in events.pubs] == [
            (1, b'{"v":1}'), (0, b'{"v":1}'), (2, b'{"v":2}'), (0, b'{"v":2}')]
    finally:
        await engine.close()


async def test_backend_fcall_follows_the_recorded_version(prefix, redis_client):
    engine = await open_engine(prefix, Events())
    try:
        opts = orjson.dumps({"prefix": prefix})

        async def stored_head() -> object:
            await redis_client.fcall("livegate_publish", 1, "be", b"1", opts)
            (_, fields), = await redis_client.xrevrange(f"{prefix}.history.{{be}}", count=1)
            return msgpack.unpackb(fields[b"p"])[0]

        assert await stored_head() == "p"  # nothing negotiated yet: version 1
        engine.use_envelope_version(2)
        async with asyncio.timeout(scaled(5)):  # the config field is written in the background
            while await redis_client.hget(f"{prefix}.config", "envelope") != b"2":
                await asyncio.sleep(0.01)
        assert await stored_head() == 2
        # An instance of the previous release publishes with its own options (trusted, no
        # envelope): version 1, whatever the config says, since it reads nothing else.
        old_opts = orjson.dumps({"prefix": prefix, "trusted": True, "history_size": 10, "history_ttl": 60})
        await redis_client.fcall("livegate_publish", 1, "be", b"2", old_opts)
        (_, fields), = await redis_client.xrevrange(f"{prefix}.history.{{be}}", count=1)
        assert old_reader(fields[b"p"])[1].data == b"2"
        # It also rewrites the config hash without the field at its start: version 1 again.
        await redis_client.hdel(f"{prefix}.config", "envelope")
        assert await stored_head() == "p"
    finally:
        await engine.close()


async def test_history_comes_back_in_the_version_the_caller_reads(prefix, redis_client):
    engine = await open_engine(prefix, Events())
    try:
        engine.use_envelope_version(1)
        await engine.broker.publish("h", b"1", HIST)
        engine.use_envelope_version(2)
        await engine.broker.publish("h", b"2", HIST)
        # A caller of the previous release passes no version argument: both entries as version 1.
        _, _, *old = await redis_client.fcall("livegate_history", 1, "h", prefix, -1, "", "0", "0")
        assert [old_reader(e)[1].data for e in old] == [b"1", b"2"]
        _, _, *new = await redis_client.fcall("livegate_history", 1, "h", prefix, -1, "", "0", "0", 2)
        assert [msgpack.unpackb(e)[0] for e in new] == ["p", 2]
        assert [decode_envelope(e)[1].offset for e in new] == [1, 2]
        result = await engine.broker.history("h", HistoryOptions(limit=-1))
        assert [(p.offset, p.data) for p in result.publications] == [(1, b"1"), (2, b"2")]
    finally:
        await engine.close()


async def test_two_envelope_versions_on_one_prefix_lose_nothing(prefix):
    """A rolling upgrade: one instance writes version 1 (an old one, or a new one that has not
    heard every node yet), the other version 2; both receive everything, in offset order."""
    old_events, new_events = Events(), Events()
    old, new = await open_engine(prefix, old_events), await open_engine(prefix, new_events)
    try:
        old.use_envelope_version(1)
        new.use_envelope_version(2)
        for engine in (old, new):
            await engine.broker.subscribe("up")
        info = ClientInfo("u", "c")
        for i in range(40):
            writer = old if i % 2 else new
            await writer.broker.publish("up", b"%d" % i, HIST)
        await old.broker.publish_join("up", info)
        await new.broker.publish_join("up", info)
        for events in (old_events, new_events):
            await events.wait_for(40)
            assert [p.offset for _, p in events.pubs] == list(range(1, 41))
            assert [p.data for _, p in events.pubs] == [b"%d" % i for i in range(40)]
        async with asyncio.timeout(scaled(5)):
            while len(old_events.joins) < 2 or len(new_events.joins) < 2:
                await asyncio.sleep(0.01)
        assert old.undecodable == new.undecodable == 0
    finally:
        await old.close()
        await new.close()
