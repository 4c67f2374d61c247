"""Centrifugo v6 subscription features through the real centrifuge-python SDK, JSON and
Protobuf: delta compression (fossil), tags filters, cache recovery mode."""

from __future__ import annotations

import orjson
import pytest
from centrifuge import DeltaType, Filter
from conftest import token
from sdk import sdk_subscription

from livegate.protocol.fossil import apply_delta

NAMESPACES = {"channel": {"namespaces": [
    {"name": "delta", "history_size": 50, "history_ttl": "10m", "force_recovery": True,
     "allowed_delta_types": ["fossil"], "allow_subscribe_for_client": True},
    {"name": "nodelta", "history_size": 50, "history_ttl": "10m", "force_recovery": True,
     "allow_subscribe_for_client": True},
    {"name": "tagged", "history_size": 50, "history_ttl": "10m", "force_recovery": True,
     "allow_tags_filter": True, "allow_subscribe_for_client": True},
    {"name": "plain", "allow_subscribe_for_client": True},
    {"name": "cache", "history_size": 5, "history_ttl": "10m", "force_recovery": True,
     "force_recovery_mode": "cache", "allow_subscribe_for_client": True},
]}}


@pytest.fixture(params=["json", "protobuf"])
def codec(request: pytest.FixtureRequest) -> str:
    return request.param


def state(n: int) -> bytes:
    """A payload that changes a little from one publication to the next (what deltas are for)."""
    return orjson.dumps({"ticker": "ACME", "price": 100 + n, "volume": 1000 * n,
                         "book": [{"level": i, "size": 10 * i + n} for i in range(8)], "note": "x" * 200})


async def test_delta_subscribers_get_every_publication_intact(start_server, clients, peer_factory):
    running = await start_server(NAMESPACES)
    client, _ = clients(running.url, token("alice"))
    sub, events = sdk_subscription(client, "delta:acme", delta=DeltaType.FOSSIL)
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    # A raw peer beside it sees what goes over the wire: deltas after the first.
    peer = await peer_factory(running.url)
    await peer.connect("bob")
    reply = await peer.call("subscribe", {"channel": "delta:acme", "delta": "fossil"})
    assert reply["subscribe"].get("delta") is True
    for n in range(1, 6):
        await running.node.publish("delta:acme", state(n))
    got = await events.wait("publication", 5)
    assert [clients.dec(ctx.pub.data) for ctx in got] == [orjson.loads(state(n)) for n in range(1, 6)]
    raw = [m["push"]["pub"] for m in [await peer.recv() for _ in range(5)]]
    assert "delta" not in raw[0] and all(p.get("delta") is True for p in raw[1:])
    assert all(isinstance(p["data"], str) for p in raw)  # JSON carries data as a string
    assert all(len(p["data"]) < len(state(n)) / 2 for n, p in zip(range(2, 6), raw[1:], strict=True))
    base = raw[0]["data"].encode()
    for n, p in zip(range(2, 6), raw[1:], strict=True):
        base = apply_delta(base, p["data"].encode())
        assert base == state(n)


async def test_delta_recovery_and_a_namespace_without_it(start_server, clients):
    running = await start_server(NAMESPACES)
    for n in range(1, 3):
        await running.node.publish("delta:r", state(n))
    client, _ = clients(running.url, token("alice"))
    sub, events = sdk_subscription(client, "delta:r", delta=DeltaType.FOSSIL)
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    await client.disconnect()
    for n in range(3, 6):  # missed while away: recovered whole, then deltas go on
        await running.node.publish("delta:r", state(n))
    await client.connect()
    await events.wait("subscribed", 2)
    assert events.of("subscribed")[1].recovered
    await running.node.publish("delta:r", state(6))
    await running.node.publish("delta:r", state(7))
    got = await events.wait("publication", 5)
    assert [clients.dec(ctx.pub.data) for ctx in got] == [orjson.loads(state(n)) for n in range(3, 8)]
    # Asking in a namespace that does not allow it: an ordinary subscription.
    sub2, events2 = sdk_subscription(client, "nodelta:r", delta=DeltaType.FOSSIL)
    await sub2.subscribe()
    await events2.wait("subscribed")
    await running.node.publish("nodelta:r", state(1))
    await running.node.publish("nodelta:r", state(2))
    got2 = await events2.wait("publication", 2)
    assert [clients.dec(ctx.pub.data) for ctx in got2] == [orjson.loads(state(1)), orjson.loads(state(2))]


async def test_an_unknown_delta_type_closes_with_bad_request(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    await peer.send({"id": 5, "subscribe": {"channel": "chat:x", "delta": "gzip"}})
    assert (await peer.closed())[0] == 3501


async def test_tags_filter_delivers_only_matching_publications(start_server, clients):
    running = await start_server(NAMESPACES)
    for n, tags in enumerate([{"ticker": "AAPL", "price": "90"}, {"ticker": "ACME", "price": "120"}], 1):
        await running.node.publish("tagged:t", orjson.dumps({"n": n}), tags=tags)
    client, _ = clients(running.url, token("alice"))
    wanted = Filter.all(Filter.eq("ticker", "ACME"), Filter.gte("price", "100"))
    sub, events = sdk_subscription(client, "tagged:t", tags_filter=wanted)
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    for n, tags in [(3, {"ticker": "ACME", "price": "99.5"}), (4, {"ticker": "ACME", "price": "101"}),
                    (5, {"ticker": "AAPL", "price": "500"}), (6, {"price": "500"}), (7, {"ticker": "ACME", "price": "1000"})]:
        await running.node.publish("tagged:t", orjson.dumps({"n": n}), tags=tags)
    got = await events.wait("publication", 2)
    assert [clients.dec(ctx.pub.data)["n"] for ctx in got] == [4, 7]
    assert got[0].pub.tags == {"ticker": "ACME", "price": "101"}
    # Recovery returns only what the filter takes.
    await client.disconnect()
    await running.node.publish("tagged:t", orjson.dumps({"n": 8}), tags={"ticker": "ACME", "price": "200"})
    await running.node.publish("tagged:t", orjson.dumps({"n": 9}), tags={"ticker": "AAPL", "price": "200"})
    await client.connect()
    await events.wait("subscribed", 2)
    assert events.of("subscribed")[1].recovered
    got = await events.wait("publication", 3)
    assert [clients.dec(ctx.pub.data)["n"] for ctx in got] == [4, 7, 8]


@pytest.mark.parametrize("tf", [
    {"op": "eq", "key": "a", "val": "b"},     # "eq" is a cmp, not an op
    {"key": "a", "cmp": "in"},               # in needs vals
    {"op": "not", "nodes": []},
    {"key": "a", "cmp": "gt"},               # gt needs val
    "text",
])
async def test_a_malformed_tags_filter_or_one_not_allowed_closes_with_bad_request(start_server, peer_factory, tf):
    running = await start_server(NAMESPACES)
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    await peer.send({"id": 5, "subscribe": {"channel": "tagged:x", "tf": tf}})
    assert (await peer.closed())[0] == 3501
    other = await peer_factory(running.url)
    await other.connect("bob")
    await other.send({"id": 5, "subscribe": {"channel": "plain:x", "tf": {"key": "a", "cmp": "ex"}}})
    assert (await other.closed())[0] == 3501  # the namespace does not allow tags filters


async def test_cache_recovery_mode_recovers_only_the_latest_publication(start_server, clients):
    running = await start_server(NAMESPACES)
    client, _ = clients(running.url, token("alice"))
    sub, events = sdk_subscription(client, "cache:c")
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    await running.node.publish("cache:c", b'{"v":1}')
    await events.wait("publication")
    await client.disconnect()
    for v in (2, 3, 4):
        await running.node.publish("cache:c", b'{"v":%d}' % v)
    await client.connect()
    await events.wait("subscribed", 2)
    second = events.of("subscribed")[1]
    assert second.recovered and second.was_recovering
    got = await events.wait("publication", 2)
    assert [clients.dec(ctx.pub.data) for ctx in got] == [{"v": 1}, {"v": 4}]  # only the latest of 2..4
    assert got[1].pub.offset == 4
    # Holding the latest already: recovered, nothing sent again.
    await client.disconnect()
    await client.connect()
    await events.wait("subscribed", 3)
    assert events.of("subscribed")[2].recovered
    await running.node.publish("cache:c", b'{"v":5}')
    got = await events.wait("publication", 3)
    assert [clients.dec(ctx.pub.data) for ctx in got] == [{"v": 1}, {"v": 4}, {"v": 5}]


@pytest.mark.parametrize("namespace", ["", "personal"])
async def test_subscribe_to_user_personal_channel(start_server, clients, namespace):
    running = await start_server({
        "client": {"subscribe_to_user_personal_channel": {"enabled": True, "personal_channel_namespace": namespace}},
        "channel": {"namespaces": [{"name": "personal", "history_size": 10, "history_ttl": "1m"}]},
    })
    channel = f"{namespace}:#alice" if namespace else "#alice"
    client, events = clients(running.url, token("alice"))
    await client.connect()
    (sub,) = await events.wait("subscribed")
    assert sub.channel == channel
    await running.node.publish(channel, b'{"to":"alice"}')
    (ctx,) = await events.wait("publication")
    assert ctx.channel == channel and clients.dec(ctx.pub.data) == {"to": "alice"}
    assert list(running.node.hub.channels()) == [channel]


def test_the_personal_namespace_must_exist():
    from conftest import make_config

    from livegate.errors import ConfigError

    with pytest.raises(ConfigError, match="client.subscribe_to_user_personal_channel.personal_channel_namespace"):
        make_config({"client": {"subscribe_to_user_personal_channel": {"enabled": True,
                                                                       "personal_channel_namespace": "nope"}}})


async def test_tags_filter_and_delta_together_close_with_bad_request(start_server, peer_factory):
    running = await start_server(NAMESPACES)
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    await peer.send({"id": 5, "subscribe": {"channel": "tagged:x", "delta": "fossil",
                                            "tf": {"key": "a", "cmp": "ex"}}})
    assert (await peer.closed())[0] == 3501


async def test_a_personal_channel_for_a_user_id_with_boundaries(start_server, peer_factory):
    """A user id holding the namespace boundary must not break the connect."""
    running = await start_server({"client": {"subscribe_to_user_personal_channel": {"enabled": True}}})
    peer = await peer_factory(running.url)
    reply = await peer.connect("org:42")
    assert "error" not in reply, reply
