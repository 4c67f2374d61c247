"""Two real `livegate serve` processes over two Redis servers (engine.redis.address with two
entries): channels are spread by jump hash, every channel lives on exactly one server, and the
instances behave as one server whichever shard a channel is on."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis
from cent import AsyncClient, DisconnectRequest, InfoRequest, PublishRequest
from conftest import REDIS_URL, REDIS_URL_2, NoEngineEvents, delete_prefix, make_config, scaled, token, unique_prefix
from procs import start_instance
from sdk import sdk_subscription

from livegate.channels.redis import RedisEngine


@pytest.fixture
async def servers():
    assert REDIS_URL_2, "REDIS_URL_2 is not set: `make test` (scripts/services.sh) starts a second Redis"
    clients = [aioredis.Redis.from_url(url) for url in (REDIS_URL, REDIS_URL_2)]
    for c in clients:
        await c.ping()
    yield clients
    for c in clients:
        await c.aclose()


@pytest.fixture
async def sharded(tmp_path, servers):
    prefix = unique_prefix()
    override = {"engine": {"type": "redis", "redis": {"address": [REDIS_URL, REDIS_URL_2], "prefix": prefix}}}
    instances = [await start_instance(tmp_path, override, name) for name in ("a", "b")]
    # The same placement the instances compute (never started: placement is pure).
    placement = RedisEngine(make_config(override), NoEngineEvents())
    yield prefix, instances, placement
    for inst in instances:
        if inst.proc.returncode is None:
            inst.proc.kill()
            await inst.proc.wait()
    for client in servers:
        await delete_prefix(client, prefix)


def channels_per_shard(placement: RedisEngine, per_shard: int = 2) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {0: [], 1: []}
    i = 0
    while min(len(v) for v in found.values()) < per_shard:
        channel = f"chat:s{i}"
        shard = placement.shard_for(channel).index
        if len(found[shard]) < per_shard:
            found[shard].append(channel)
        i += 1
    return found


async def test_channels_on_both_shards_reach_the_other_instance(sharded, servers, clients):
    prefix, (a, b), placement = sharded
    by_shard = channels_per_shard(placement)
    channels = by_shard[0] + by_shard[1]
    alice, _ = clients(a.url, token("alice"))
    await alice.connect()
    subs = {}
    for channel in channels:
        sub, events = sdk_subscription(alice, channel)
        await sub.subscribe()
        await events.wait("subscribed")
        subs[channel] = events
    api_b = AsyncClient(b.api_url, "test-api-key")
    try:
        for n in range(3):
            for channel in channels:
                await api_b.publish(PublishRequest(channel=channel, data={"n": n, "ch": channel}))
        for channel, events in subs.items():
            pubs = await events.wait("publication", 3)
            assert [(p.pub.offset, p.pub.data) for p in pubs] == [(n + 1, {"n": n, "ch": channel}) for n in range(3)]
    finally:
        await api_b.close()
    # Each channel's history lives on its own shard's server, and only there.
    for shard, names in by_shard.items():
        for channel in names:
            key = f"{prefix}.history.{{{channel}}}"
            assert await servers[shard].exists(key) == 1, (channel, shard)
            assert await servers[1 - shard].exists(key) == 0, (channel, shard)


async def test_node_channel_presence_and_doors_with_two_shards(sharded, servers, clients):
    prefix, (a, b), placement = sharded
    by_shard = channels_per_shard(placement, per_shard=1)
    far = by_shard[1][0]  # a channel on the second server
    alice, alice_events = clients(a.url, token("alice"))
    bob, _ = clients(b.url, token("bob"))
    sub_a, ev_a = sdk_subscription(alice, far, join_leave=True)
    sub_b, _ = sdk_subscription(bob, far)
    await alice.connect()
    await sub_a.subscribe()
    await ev_a.wait("subscribed")
    await bob.connect()
    await sub_b.subscribe()
    joins = await ev_a.wait("join", 2)
    assert sorted(j.info.user for j in joins) == ["alice", "bob"]
    stats = await sub_a.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)
    # A backend publishes straight into the right server with the Redis function.
    opts = orjson.dumps({"prefix": prefix})
    offset, _ = await servers[1].fcall("livegate_publish", 1, far, b'{"via":"fcall"}', opts)
    (pub,) = await ev_a.wait("publication")
    assert (pub.pub.offset, pub.pub.data) == (offset, {"via": "fcall"})
    # The node channel (on the first server) still joins the instances.
    api_b = AsyncClient(b.api_url, "test-api-key")
    try:
        async with asyncio.timeout(scaled(10)):  # heartbeats every 3 s
            while len((info := await api_b.info(InfoRequest())).nodes) < 2:
                await asyncio.sleep(0.2)
        assert len({n.uid for n in info.nodes}) == 2
        await api_b.disconnect(DisconnectRequest(user="alice"))
        (ctx,) = await alice_events.wait("disconnected")
        assert ctx.code == 3503
    finally:
        await api_b.close()
