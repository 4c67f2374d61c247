"""The server driven by the real centrifuge-python SDK, as an application would use it: every
test runs with the SDK's JSON codec and with its Protobuf codec (what the mobile SDKs speak)."""

from __future__ import annotations

import time

import pytest
from centrifuge import ClientState, SubscriptionState
from centrifuge.exceptions import ReplyError
from conftest import FakeClock, dur, exp_in, token, wait_until
from sdk import sdk_subscription

from livegate import App, ClientError
from livegate.protocol import codes


@pytest.fixture(params=["json", "protobuf"])
def codec(request: pytest.FixtureRequest) -> str:
    return request.param


async def test_connect_subscribe_and_receive_from_another_client(server, clients):
    alice, _ = clients(server.url, token("alice"))
    bob, _ = clients(server.url, token("bob"))
    sub_a, ev_a = sdk_subscription(alice, "chat:room")
    sub_b, ev_b = sdk_subscription(bob, "chat:room")
    await alice.connect()
    await bob.connect()
    await sub_a.subscribe()
    await sub_b.subscribe()
    await ev_a.wait("subscribed")
    await ev_b.wait("subscribed")
    await sub_b.publish(clients.enc({"text": "hi from bob"}))
    (ctx,) = await ev_a.wait("publication")
    assert clients.dec(ctx.pub.data) == {"text": "hi from bob"}
    assert ctx.pub.offset == 1
    assert ctx.pub.info.user == "bob"
    subscribed = ev_a.of("subscribed")[0]
    assert subscribed.recoverable and subscribed.positioned
    assert subscribed.stream_position.offset == 0 and subscribed.stream_position.epoch


async def test_backend_publication_reaches_subscriber(server, clients):
    client, _ = clients(server.url, token("alice"))
    sub, events = sdk_subscription(client, "chat:news")
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    result = await server.node.publish("chat:news", b'{"headline":"x"}')
    (ctx,) = await events.wait("publication")
    assert clients.dec(ctx.pub.data) == {"headline": "x"} and ctx.pub.offset == result.position.offset == 1


async def test_presence_stats_and_history(server, clients):
    alice, _ = clients(server.url, token("alice", info={"name": "Alice"}))
    bob, _ = clients(server.url, token("bob"))
    sub_a, ev_a = sdk_subscription(alice, "chat:p")
    sub_b, ev_b = sdk_subscription(bob, "chat:p")
    await alice.connect()
    await bob.connect()
    await sub_a.subscribe()
    await sub_b.subscribe()
    await ev_b.wait("subscribed")
    presence = await sub_a.presence()
    users = sorted(info.user for info in presence.clients.values())
    assert users == ["alice", "bob"]
    alice_info = next(i for i in presence.clients.values() if i.user == "alice")
    assert clients.dec(alice_info.conn_info) == {"name": "Alice"}
    stats = await sub_a.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)
    for n in range(5):
        await sub_a.publish(clients.enc({"n": n}))
    hist = await sub_a.history(limit=3)
    assert [clients.dec(p.data)["n"] for p in hist.publications] == [0, 1, 2]
    assert hist.offset == 5
    newest = await sub_a.history(limit=2, reverse=True)
    assert [clients.dec(p.data)["n"] for p in newest.publications] == [4, 3]
    from centrifuge import StreamPosition
    since = await sub_a.history(limit=10, since=StreamPosition(offset=3, epoch=hist.epoch))
    assert [p.offset for p in since.publications] == [4, 5]


async def test_join_and_leave_reach_other_subscribers(server, clients):
    alice, _ = clients(server.url, token("alice"))
    bob, _ = clients(server.url, token("bob"))
    sub_a, ev_a = sdk_subscription(alice, "chat:jl", join_leave=True)
    sub_b, _ = sdk_subscription(bob, "chat:jl")
    await alice.connect()
    await sub_a.subscribe()
    await ev_a.wait("subscribed")
    await bob.connect()
    await sub_b.subscribe()
    joins = await ev_a.wait("join", 2)
    assert [j.info.user for j in joins] == ["alice", "bob"]
    await sub_b.unsubscribe()
    (leave,) = await ev_a.wait("leave")
    assert leave.info.user == "bob"


async def test_rpc_routed_to_app_handlers(start_server, clients):
    app = App()

    @app.rpc("sum")
    async def total(ctx, data):
        return {"sum": sum(data["numbers"]), "user": ctx.user}

    @app.rpc("fail")
    async def fail(ctx, data):
        raise ClientError(451, "unavailable for legal reasons")

    running = await start_server(app=app)
    client, _ = clients(running.url, token("alice"))
    await client.connect()
    result = await client.rpc("sum", clients.enc({"numbers": [1, 2, 3]}))
    assert clients.dec(result.data) == {"sum": 6, "user": "alice"}
    with pytest.raises(ReplyError) as err:
        await client.rpc("nope", clients.enc({}))
    assert err.value.code == 104
    with pytest.raises(ReplyError) as err:
        await client.rpc("fail", clients.enc({}))
    assert (err.value.code, err.value.message) == (451, "unavailable for legal reasons")


async def test_token_refresh_keeps_the_connection(start_server, clients):
    # The server's timers run on a FakeClock (expired_close_delay 25 s); the SDK's refresh timer
    # and the token checks run on real time.
    clock = FakeClock()
    running = await start_server(clock=clock)
    refreshed = []

    async def get_token():
        refreshed.append(1)
        return token("alice", ttl=3600)

    first_exp = exp_in(0.5)  # the connect reply says: expires in 1 s
    client, events = clients(running.url, token("alice", exp=first_exp), get_token=get_token)
    await client.connect()
    await wait_until(lambda: refreshed, within=4, what="the SDK's refresh")
    (conn,) = running.node.hub.connections()
    await wait_until(lambda: conn.expire_at > time.time() + 3000, what="the server taking the refreshed token")
    # Well past the first token's expiry and its grace: the sweep keeps the connection.
    await running.advance(first_exp - clock.time() + 60)
    await client.publish("plain", clients.enc({"still": "here"}))  # a round trip: the connection was not closed before it
    assert client.state == ClientState.CONNECTED
    assert events.of("disconnected") == [] and len(events.of("connected")) == 1
    assert running.node.hub.connections() == [conn]


async def test_connection_without_refresh_is_closed_as_expired(start_server, peer_factory):
    # The real clock and the server's sweep loop (test_timers.py drives the same on a FakeClock).
    # A short pong timeout only to make the sweep loop run often (a quarter of it).
    running = await start_server({"client": {"expired_close_delay": dur(0.3), "pong_timeout": dur(0.2)}})
    peer = await peer_factory(running.url)
    started, exp = time.time(), exp_in(0.5)
    reply = await peer.connect(token=token("alice", exp=exp))
    assert reply["connect"]["expires"] is True and 1 <= reply["connect"]["ttl"] <= max(1, exp - started)
    code, reason = await peer.closed(timeout=4)
    assert (code, reason) == (3005, "connection expired")


async def test_recovery_after_forced_reconnect(server, clients):
    client, cev = clients(server.url, token("alice"))
    sub, events = sdk_subscription(client, "chat:rec")
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    for n in range(3):
        await server.node.publish("chat:rec", f'{{"n":{n}}}'.encode())
    await events.wait("publication", 3)
    # Cut the connection; publish while the client is away.
    (conn,) = server.node.hub.connections()
    conn.close(codes.FORCE_RECONNECT)
    await cev.wait("connecting", 2)
    for n in range(3, 7):
        await server.node.publish("chat:rec", f'{{"n":{n}}}'.encode())
    subscribed = await events.wait("subscribed", 2)
    again = subscribed[1]
    assert again.was_recovering and again.recovered
    pubs = await events.wait("publication", 7)
    assert [clients.dec(p.pub.data)["n"] for p in pubs] == list(range(7))
    assert [p.pub.offset for p in pubs] == list(range(1, 8))
    # Nothing duplicated: a duplicate would come before a publication made after them all.
    await server.node.publish("chat:rec", b'{"n":"marker"}')
    pubs = await events.wait("publication", 8)
    assert [clients.dec(p.pub.data)["n"] for p in pubs] == [*range(7), "marker"]


async def test_recovery_fails_when_history_was_trimmed(start_server, clients):
    running = await start_server({"channel": {"namespaces": [
        {"name": "small", "history_size": 2, "history_ttl": "1m", "force_recovery": True,
         "allow_subscribe_for_client": True}]}})
    client, cev = clients(running.url, token("alice"))
    sub, events = sdk_subscription(client, "small:x")
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    await running.node.publish("small:x", b'{"n":0}')
    await events.wait("publication")
    (conn,) = running.node.hub.connections()
    conn.close(codes.FORCE_RECONNECT)
    await cev.wait("connecting", 2)
    for n in range(1, 5):
        await running.node.publish("small:x", f'{{"n":{n}}}'.encode())
    again = (await events.wait("subscribed", 2))[1]
    assert again.was_recovering and not again.recovered
    assert again.stream_position.offset == 5
    # No partial recovery is delivered: it would come before a publication made after it.
    await running.node.publish("small:x", b'{"n":"marker"}')
    pubs = await events.wait("publication", 2)
    assert [(clients.dec(p.pub.data)["n"], p.pub.offset) for p in pubs] == [(0, 1), ("marker", 6)]


async def test_permission_denied_unsubscribes_the_sdk_subscription(server, clients):
    client, _ = clients(server.url, token("alice"))
    sub, events = sdk_subscription(client, "locked:x")
    await client.connect()
    await sub.subscribe()
    (ctx,) = await events.wait("unsubscribed")
    assert ctx.code == 103
    assert sub.state == SubscriptionState.UNSUBSCRIBED


async def test_private_channel_with_subscription_token(server, clients):
    client, _ = clients(server.url, token("alice"))

    async def get_sub_token(channel):
        return token("alice", channel=channel, info={"role": "admin"})

    sub, events = sdk_subscription(client, "$locked:secret", get_token=get_sub_token, join_leave=True)
    await client.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    await server.node.publish("$locked:secret", b'{"ok":true}')
    (pub,) = await events.wait("publication")
    assert clients.dec(pub.pub.data) == {"ok": True}


async def test_server_side_subscriptions_from_token(server, clients):
    client, cev = clients(server.url, token("alice", channels=["chat:server-side"]))
    await client.connect()
    (subscribed,) = await cev.wait("subscribed")
    assert subscribed.channel == "chat:server-side" and subscribed.recoverable
    await server.node.publish("chat:server-side", b'{"s":1}')
    (pub,) = await cev.wait("publication")
    assert pub.channel == "chat:server-side" and clients.dec(pub.pub.data) == {"s": 1}


async def test_anonymous_connect_rejected_by_default(server, clients):
    client, events = clients(server.url, "")
    await client.connect()
    (ctx,) = await events.wait("disconnected")
    assert ctx.code == 3501


async def test_shutdown_makes_sdk_reconnect(start_server, clients):
    running = await start_server()
    client, events = clients(running.url, token("alice"))
    await client.connect()
    await running.server.drain(0)
    (ctx,) = [c for c in await events.wait("connecting", 2)][1:]
    assert ctx.code == 3001 and ctx.reason == "shutdown"
