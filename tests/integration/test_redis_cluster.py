"""Several real `livegate serve` processes on the redis engine behave as one server."""

from __future__ import annotations

import asyncio
import signal

import orjson
import pytest
from cent import AsyncClient, DisconnectRequest, InfoRequest, PublishRequest
from conftest import REDIS_URL, delete_prefix, scaled, token, unique_prefix
from procs import Balancer, kill_instances, start_instance
from sdk import sdk_subscription


@pytest.fixture
async def cluster(tmp_path, redis_client):
    """Two instances sharing one Redis under a prefix of their own."""
    prefix = unique_prefix()
    override = {"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}}}
    instances = [await start_instance(tmp_path, override, name) for name in ("a", "b")]
    yield prefix, instances
    await kill_instances(instances)
    await delete_prefix(redis_client, prefix)


async def subscribed(client, channel, **kw):
    sub, events = sdk_subscription(client, channel, **kw)
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    return sub, events


async def test_publication_through_one_instance_reaches_the_other(cluster, clients):
    _, (a, b) = cluster
    alice, _ = clients(a.url, token("alice"))
    bob, _ = clients(b.url, token("bob"))
    sub_a, ev_a = await subscribed(alice, "chat:x")
    sub_b, ev_b = await subscribed(bob, "chat:x")
    await sub_b.publish({"n": 1})
    await sub_a.publish({"n": 2})
    got_a = await ev_a.wait("publication", 2)
    got_b = await ev_b.wait("publication", 2)
    assert [(p.pub.offset, p.pub.data) for p in got_a] == [(1, {"n": 1}), (2, {"n": 2})]
    assert [(p.pub.offset, p.pub.data) for p in got_b] == [(1, {"n": 1}), (2, {"n": 2})]
    assert got_a[0].pub.info.user == "bob"


async def test_presence_and_join_leave_across_instances(cluster, clients):
    _, (a, b) = cluster
    alice, _ = clients(a.url, token("alice"))
    bob, _ = clients(b.url, token("bob"))
    sub_a, ev_a = await subscribed(alice, "chat:p", join_leave=True)
    sub_b, _ = await subscribed(bob, "chat:p")
    joins = await ev_a.wait("join", 2)
    assert sorted(j.info.user for j in joins) == ["alice", "bob"]
    presence = await sub_a.presence()
    assert sorted(i.user for i in presence.clients.values()) == ["alice", "bob"]
    stats = await sub_a.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)
    await sub_b.unsubscribe()
    (leave,) = await ev_a.wait("leave")
    assert leave.info.user == "bob"
    stats = await sub_a.presence_stats()
    assert (stats.num_clients, stats.num_users) == (1, 1)


async def test_api_disconnect_and_info_reach_every_instance(cluster, clients):
    _, (a, b) = cluster
    bob, events = clients(b.url, token("bob"))
    await bob.connect()
    api = AsyncClient(a.api_url, "test-api-key")
    try:
        async with asyncio.timeout(scaled(10)):  # node info travels with heartbeats (every 3 s)
            while True:
                info = await api.info(InfoRequest())
                if len(info.nodes) == 2 and sum(n.num_clients for n in info.nodes) == 1:
                    break
                await asyncio.sleep(0.2)
        assert len({n.uid for n in info.nodes}) == 2
        await api.disconnect(DisconnectRequest(user="bob"))
        (ctx,) = await events.wait("disconnected")
        assert ctx.code == 3503
    finally:
        await api.close()


async def test_fcall_door_publishes_with_offsets_and_history(cluster, clients, redis_client):
    prefix, (a, b) = cluster
    alice, _ = clients(a.url, token("alice"))
    bob, _ = clients(b.url, token("bob"))
    sub_a, ev_a = await subscribed(alice, "chat:door")
    _, ev_b = await subscribed(bob, "chat:door")
    opts = orjson.dumps({"prefix": prefix})
    first = await redis_client.fcall("livegate_publish", 1, "chat:door", b'{"via":"fcall"}', opts)
    second = await redis_client.fcall("livegate_publish", 1, "chat:door", b'{"via":"fcall2"}', opts)
    assert first[0] == 1 and second[0] == 2 and first[1] == second[1]
    for ev in (ev_a, ev_b):
        pubs = await ev.wait("publication", 2)
        assert [(p.pub.offset, p.pub.data["via"]) for p in pubs] == [(1, "fcall"), (2, "fcall2")]
    hist = await sub_a.history(limit=10)
    assert [p.offset for p in hist.publications] == [1, 2] and hist.epoch == first[1].decode()
    # no history in the namespace: offset 0 and an empty epoch
    assert await redis_client.fcall("livegate_publish", 1, "plain", b'{"x":1}', opts) == [0, b""]
    with pytest.raises(Exception, match="unknown channel namespace"):
        await redis_client.fcall("livegate_publish", 1, "nope:x", b'{"x":1}', opts)


async def test_api_stream_door_executes_each_entry_once(cluster, clients, redis_client):
    prefix, (a, b) = cluster
    alice, _ = clients(a.url, token("alice"))
    _, events = await subscribed(alice, "chat:stream")
    stream = f"{prefix}.api.stream"
    for n in range(20):
        payload = orjson.dumps({"channel": "chat:stream", "data": {"n": n}})
        await redis_client.xadd(stream, {"method": "publish", "payload": payload})
    import msgpack
    await redis_client.xadd(stream, {"method": "publish", "payload": msgpack.packb({"channel": "chat:stream", "data": {"n": 20}})})
    pubs = await events.wait("publication", 21, timeout=10)
    assert sorted(p.pub.data["n"] for p in pubs) == list(range(21))
    assert sorted(p.pub.offset for p in pubs) == list(range(1, 22))  # each executed exactly once
    # bad entries go to the dead-letter stream with their error, and the consumer goes on
    await redis_client.xadd(stream, {"method": "publish", "payload": b"\xc1 not json"})
    await redis_client.xadd(stream, {"method": "frobnicate", "payload": b"{}"})
    await redis_client.xadd(stream, {"method": "publish", "payload": b'{"channel": 5}'})
    await redis_client.xadd(stream, {"method": "publish", "payload": b'{"channel":"chat:stream","data":{"n":99}}'})
    (late,) = [p for p in await events.wait("publication", 22, timeout=10) if p.pub.data["n"] == 99]
    assert late.pub.offset == 22
    async with asyncio.timeout(scaled(5)):
        while await redis_client.xlen(f"{prefix}.api.dead") < 3:
            await asyncio.sleep(0.05)
    dead = await redis_client.xrange(f"{prefix}.api.dead")
    errors = [fields[b"error"].decode() for _, fields in dead]
    assert any("neither JSON nor msgpack" in e for e in errors)
    assert any(e.startswith("104") for e in errors)
    assert any(e.startswith("107") and "channel" in e for e in errors)
    async with asyncio.timeout(scaled(5)):  # each entry is acknowledged right after it ran
        while (await redis_client.xpending(stream, "livegate"))["pending"]:
            await asyncio.sleep(0.02)


async def test_killed_instance_client_recovers_on_the_other(cluster, clients):
    _, (a, b) = cluster
    lb = Balancer([a.port, b.port])
    port = await lb.start()
    try:
        client, cev = clients(f"ws://127.0.0.1:{port}/connection/websocket", token("alice"))
        sub, events = await subscribed(client, "chat:kill")
        api_b = AsyncClient(b.api_url, "test-api-key")
        for n in range(3):
            await api_b.publish(PublishRequest(channel="chat:kill", data={"n": n}))
        await events.wait("publication", 3)
        a.proc.send_signal(signal.SIGKILL)
        await a.proc.wait()
        for n in range(3, 8):
            await api_b.publish(PublishRequest(channel="chat:kill", data={"n": n}))
        again = (await events.wait("subscribed", 2, timeout=15))[1]
        assert again.was_recovering and again.recovered
        pubs = await events.wait("publication", 8)
        assert [p.pub.data["n"] for p in pubs] == list(range(8))
        # Nothing twice: a duplicate would come before a publication made after them all.
        await api_b.publish(PublishRequest(channel="chat:kill", data={"n": "marker"}))
        pubs = await events.wait("publication", 9)
        assert [p.pub.data["n"] for p in pubs] == [*range(8), "marker"]
        await api_b.close()
    finally:
        await lb.close()
