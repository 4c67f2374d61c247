"""Limits against real servers: the node's connection limit and connection rate (HTTP 503 at
the handshake), the user connection limit (3504) on one node and over two real `livegate
serve` processes sharing Redis, command rate limits (error 111, then 3013), their counters in
/metrics, and the clients that stay within the limits going on unaffected."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
import websockets
from centrifuge import ReplyError
from conftest import REDIS_URL, FakeClock, RawPeer, delete_prefix, make_config, scaled, token, unique_prefix, wait_until
from procs import kill_instances, start_instance

from livegate.node import USER_CONNECTION_TTL, build_node

OFF = {"rate": 0}
#: Every command class unlimited: a test turns on only what it looks at.
NO_COMMAND_LIMITS = {name: OFF for name in ("total", "publish", "rpc", "subscribe", "history")}


def command_limits(**limits: Any) -> dict[str, Any]:
    return {"client": {"rate_limit": {**NO_COMMAND_LIMITS, **limits, "user": dict(NO_COMMAND_LIMITS)}}}


async def metric(api_port: int, line_start: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{api_port}/metrics") as resp:
            text = await resp.text()
    found = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


async def refused_handshake(url: str) -> int:
    """The HTTP status a handshake that must fail gets."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(url, open_timeout=scaled(5))
    return info.value.response.status_code


async def connected_peer(peer_factory: Any, url: str, user: str) -> RawPeer:
    peer = await peer_factory(url)
    reply = await peer.connect(user)
    assert "connect" in reply, reply
    return peer


# == connections per node ===================================================================


async def test_node_connection_limit_refuses_handshakes_with_503_and_frees_places(start_server, peer_factory):
    running = await start_server({"client": {"connection_limit": 2}})
    a = await connected_peer(peer_factory, running.url, "a")
    b = await connected_peer(peer_factory, running.url, "b")
    assert await refused_handshake(running.url) == 503
    # The connections in place go on.
    await a.sync()
    await b.sync()
    await b.close()
    await wait_until(lambda: running.node.hub.num_clients == 1, what="b gone")
    await connected_peer(peer_factory, running.url, "c")
    assert await metric(running.server.api_port, 'livegate_limited_total{limit="connection"}') == 1


async def test_node_connection_rate_refuses_handshakes_over_it(start_server, peer_factory):
    clock = FakeClock()  # no time passes unless the test says so: no token comes back by itself
    running = await start_server({"client": {"connection_rate_limit": 3}}, clock=clock)
    peers = [await peer_factory(running.url) for _ in range(3)]
    assert await refused_handshake(running.url) == 503
    await running.advance(1 / 3)  # a third of a second: one more
    peers.append(await peer_factory(running.url))
    assert await refused_handshake(running.url) == 503
    for n, peer in enumerate(peers):  # every admitted connection works
        assert "connect" in await peer.connect(f"u{n}")
    assert await metric(running.server.api_port, 'livegate_limited_total{limit="connection_rate"}') == 2


# == connections per user ===================================================================


async def test_user_connection_limit_on_one_node(start_server, peer_factory, clients):
    running = await start_server({"client": {"user_connection_limit": 2}})
    first = await connected_peer(peer_factory, running.url, "alice")
    await connected_peer(peer_factory, running.url, "alice")
    third = await peer_factory(running.url)
    await third.send({"id": 1, "connect": {"token": token("alice")}})
    assert await third.closed() == (3504, "connection limit")
    # Other users are not affected.
    await connected_peer(peer_factory, running.url, "bob")
    # The SDK takes 3504 as terminal: disconnected, no reconnect.
    sdk, events = clients(running.url, token("alice"))
    await sdk.connect()
    (ctx,) = await events.wait("disconnected")
    assert ctx.code == 3504
    assert not events.of("connected")
    # A connection that ends frees its place.
    await first.close()
    async with asyncio.timeout(scaled(5)):
        while await running.node.engine.users.user_connection_count("alice") != 1:
            await asyncio.sleep(0.02)
    await connected_peer(peer_factory, running.url, "alice")
    assert await metric(running.server.api_port, 'livegate_limited_total{limit="user_connection"}') == 2


@pytest.fixture
async def limited_cluster(tmp_path, redis_client):
    """Two `livegate serve` processes sharing one Redis, at most 2 connections per user."""
    prefix = unique_prefix()
    override = {"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}},
                "client": {"user_connection_limit": 2}}
    instances = [await start_instance(tmp_path, override, name) for name in ("a", "b")]
    yield prefix, instances
    await kill_instances(instances)
    await delete_prefix(redis_client, prefix)


async def test_user_connection_limit_holds_across_two_instances(limited_cluster, redis_client, peer_factory):
    prefix, (a, b) = limited_cluster
    key = f"{prefix}.user.conns.{{alice}}"
    on_a = await connected_peer(peer_factory, a.url, "alice")
    await connected_peer(peer_factory, b.url, "alice")
    assert await redis_client.zcard(key) == 2
    for url in (a.url, b.url):  # a third connection is refused whichever instance it reaches
        peer = await peer_factory(url)
        await peer.send({"id": 1, "connect": {"token": token("alice")}})
        assert await peer.closed() == (3504, "connection limit")
    bob = await connected_peer(peer_factory, b.url, "bob")
    await bob.sync()
    await on_a.close()  # instance a uncounts it: a place is free on every instance
    async with asyncio.timeout(scaled(5)):
        while await redis_client.zcard(key) != 1:
            await asyncio.sleep(0.02)
    await connected_peer(peer_factory, b.url, "alice")
    # Each entry expires unless its instance refreshes it (a dead instance's connections stop counting).
    ttl_ms = await redis_client.pttl(key)
    assert 0 < ttl_ms <= USER_CONNECTION_TTL * 1000
    assert await metric(a.api_port, 'livegate_limited_total{limit="user_connection"}') == 1
    assert await metric(b.api_port, 'livegate_limited_total{limit="user_connection"}') == 1


async def test_concurrent_connects_of_one_user_on_two_instances_admit_exactly_the_limit(limited_cluster, peer_factory):
    _, (a, b) = limited_cluster

    async def attempt(url: str) -> str:
        peer = await peer_factory(url)
        reply = await peer.call("connect", {"token": token("carol")}, timeout=5)
        return "ok" if "connect" in reply else str(reply)

    async def refused_or_ok(url: str) -> str:
        try:
            return await attempt(url)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 3504
            return "3504"

    outcomes = await asyncio.gather(*(refused_or_ok(url) for url in [a.url, b.url] * 5))
    assert sorted(outcomes) == ["3504"] * 8 + ["ok"] * 2


async def test_redis_user_connections_count_refresh_and_expire(redis_client):
    prefix = unique_prefix()
    node = build_node(make_config({"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}}}))
    await node.start()
    try:
        users = node.engine.users
        assert await users.add_user_connection("u{1}", "c1", 2, 30)  # braces in a user id are fine
        assert await users.add_user_connection("u{1}", "c2", 2, 30)
        assert await users.add_user_connection("u{1}", "c2", 2, 30)  # already counted
        assert not await users.add_user_connection("u{1}", "c3", 2, 30)
        assert await users.user_connection_count("u{1}") == 2
        assert await users.refresh_user_connections("u{1}", ["c1", "c9"], 30) == ["c9"]
        await users.remove_user_connection("u{1}", "c1")
        assert await users.add_user_connection("u{1}", "c3", 2, 30)
        assert await users.add_user_connection("u{1}", "c4", 0, 30)  # 0: no limit
        assert await users.user_connection_count("u{1}") == 3
        # Entries expire unless refreshed.
        assert await users.add_user_connection("v", "short", 1, scaled(0.2))
        started = time.monotonic()
        async with asyncio.timeout(scaled(5)):
            while await users.user_connection_count("v"):
                await asyncio.sleep(0.02)
        assert time.monotonic() - started >= 0.1
        assert await users.add_user_connection("v", "next", 1, 30)
    finally:
        await node.close()
        await delete_prefix(redis_client, prefix)


# == command rate limits ====================================================================


async def test_flooder_gets_111_and_an_innocent_client_keeps_its_round_trip(start_server, peer_factory):
    # Publishes: 20 a second, 40 at once; refusals never close the connection here.
    running = await start_server(command_limits(publish={"rate": 20, "burst": 40}, disconnect_after=0))
    innocent = await connected_peer(peer_factory, running.url, "innocent")
    await innocent.call("subscribe", {"channel": "chat:room"})
    flooder = await connected_peer(peer_factory, running.url, "flooder")
    replies: list[dict[str, Any]] = []
    frames, per_frame = 30, 100

    async def read_flooder() -> None:
        while len(replies) < frames * per_frame:
            msg = await flooder.recv(timeout=10)
            if "id" in msg:
                replies.append(msg)

    async def flood() -> None:
        for f in range(frames):
            await flooder.send(*({"id": 1000 + f * per_frame + n, "publish": {"channel": "flood", "data": {"n": n}}}
                                 for n in range(per_frame)))
            await asyncio.sleep(0)

    reader = asyncio.create_task(read_flooder())
    started = time.monotonic()
    flooding = asyncio.create_task(flood())
    latencies = []
    for n in range(20):
        t0 = time.monotonic()
        reply = await innocent.call("publish", {"channel": "chat:room", "data": {"n": n}})
        latencies.append(time.monotonic() - t0)
        assert reply.get("publish") == {}, reply
    await flooding
    await asyncio.wait_for(reader, scaled(10))
    elapsed = time.monotonic() - started
    assert max(latencies) < scaled(1.0), latencies
    accepted = [r for r in replies if "publish" in r]
    refused = [r for r in replies if "error" in r]
    assert {r["error"]["code"] for r in refused} == {111}
    assert all(r["error"]["temporary"] for r in refused)
    assert 40 <= len(accepted) <= 40 + 20 * elapsed + 1
    assert len(accepted) + len(refused) == frames * per_frame
    await flooder.sync()  # still connected
    await innocent.sync()
    # The innocent client got every publication of its channel, none refused.
    pubs = [p for p in innocent.pushes if "pub" in p.get("push", {})]
    assert [p["push"]["pub"]["data"]["n"] for p in pubs] == list(range(20))
    assert await metric(running.server.api_port, 'livegate_limited_total{limit="publish"}') == len(refused)


async def test_a_connection_that_keeps_going_over_the_limit_is_closed_with_3013(start_server, peer_factory):
    clock = FakeClock()  # no refill while the frame is processed: exact counts
    running = await start_server(command_limits(rpc={"rate": 5, "burst": 10}), clock=clock)
    innocent = await connected_peer(peer_factory, running.url, "innocent")
    flooder = await connected_peer(peer_factory, running.url, "flooder")
    await flooder.send(*({"id": 10 + n, "rpc": {"method": "x", "data": {}}} for n in range(100)))
    seen: list[dict[str, Any]] = []
    try:
        while True:
            seen.append(await flooder.recv(timeout=5))
    except websockets.ConnectionClosed:
        pass
    assert await flooder.closed() == (3013, "too many requests")
    codes = [m["error"]["code"] for m in seen if "id" in m]
    # 10 within the burst (108: no RPC method is registered), then 10 refused in a row, then the close.
    assert codes == [108] * 10 + [111] * 10
    await innocent.sync()
    assert await metric(running.server.api_port, 'livegate_disconnects_total{code="3013"}') == 1
    assert await metric(running.server.api_port, 'livegate_limited_total{limit="rpc"}') == 10


async def test_the_sdk_gets_111_and_reconnects_after_3013(start_server, clients):
    running = await start_server(command_limits(history={"rate": 1, "burst": 1}, disconnect_after=2))
    sdk, events = clients(running.url, token("dora"))
    await sdk.connect()
    await events.wait("connected")
    # presence_stats is in the history class: the first is answered (103: not a subscriber), the
    # next two are refused, and the second refusal in a row closes the connection.
    results = await asyncio.gather(*(sdk.presence_stats("chat:h") for _ in range(3)), return_exceptions=True)
    limited = [r for r in results if isinstance(r, ReplyError) and r.code == 111]
    assert limited and all(r.temporary for r in limited), results
    await wait_until(lambda: any(c.code == 3013 for c in events.of("connecting")), within=5, what="3013")
    await events.wait("connected", 2)  # 3013 is in the reconnect range


async def test_per_user_budget_is_shared_by_the_users_connections(start_server, peer_factory):
    clock = FakeClock()
    running = await start_server({"client": {"rate_limit": {**NO_COMMAND_LIMITS, "disconnect_after": 0, "user": {
        **NO_COMMAND_LIMITS, "total": {"rate": 1, "burst": 6}}}}}, clock=clock)
    first = await connected_peer(peer_factory, running.url, "erin")  # connect is not counted: no budget yet
    second = await connected_peer(peer_factory, running.url, "erin")
    other = await connected_peer(peer_factory, running.url, "frank")
    outcomes = []
    for peer in (first, second) * 4:
        reply = await peer.call("ping", {})
        outcomes.append(reply["error"]["code"] if "error" in reply else "ok")
    assert outcomes == ["ok"] * 6 + [111, 111]
    await other.sync()  # frank has his own budget
    await running.advance(1)
    await second.sync()
    assert await metric(running.server.api_port, 'livegate_limited_total{limit="user_total"}') == 2
