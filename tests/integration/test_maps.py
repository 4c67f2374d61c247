"""Map subscriptions (subscribe type 1, Centrifugo v6.8) end to end: the real centrifuge-js
SDK's ``newMapSubscription`` against a real server, and hand-written frames where a test must
act between the phases of a subscribe (writes during state paging, the stream phase)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import REDIS_URL, RawPeer, delete_prefix, token, unique_prefix
from test_js_sdk import js  # noqa: F401  (the fixture)

from livegate.protocol.types import StreamPosition

MAP_NAMESPACES = {"channel": {"max_publication_size": 1000, "namespaces": [
    {"name": "board", "subscription_type": "map", "allow_subscribe_for_client": True,
     "map": {"mode": "recoverable", "key_ttl": "10m", "allow_publish_for_subscriber": True,
             "allow_remove_for_subscriber": True}},
    {"name": "flags", "subscription_type": "map", "allow_subscribe_for_client": True,
     "map": {"mode": "persistent", "min_page_size": 2, "default_page_size": 100}},
    {"name": "cursors", "subscription_type": "map", "allow_subscribe_for_client": True,
     "map": {"mode": "ephemeral", "key_ttl": "1s", "allow_publish_for_client": True}},
    {"name": "chat", "allow_subscribe_for_client": True, "history_size": 10, "history_ttl": "1m"},
    {"name": "small", "subscription_type": "map", "allow_subscribe_for_client": True,
     "map": {"mode": "persistent", "stream_size": 2}},
    {"name": "mine", "subscription_type": "map", "allow_subscribe_for_client": True,
     "map": {"mode": "ephemeral", "key_ttl": "1m", "client_key": "client_id", "allow_publish_for_subscriber": True}},
    {"name": "tagged", "subscription_type": "map", "allow_subscribe_for_client": True, "allow_tags_filter": True,
     "map": {"mode": "persistent"}},
    {"name": "deltas", "subscription_type": "map", "allow_subscribe_for_client": True,
     "allowed_delta_types": ["fossil"], "map": {"mode": "persistent"}},
    {"name": "room", "subscription_type": "map", "allow_subscribe_for_client": True,
     "map_clients_presence_channel_prefix": "who:", "map_users_presence_channel_prefix": "users:",
     "map": {"mode": "ephemeral", "key_ttl": "1m"}},
    {"name": "who", "subscription_type": "map_clients", "allow_subscribe_for_client": True,
     "map": {"mode": "ephemeral", "key_ttl": "1m"}},
    {"name": "users", "subscription_type": "map_users", "allow_subscribe_for_client": True,
     "map": {"mode": "ephemeral", "key_ttl": "1m"}},
]}}


@pytest.fixture
async def redis_prefix() -> Any:
    prefix = unique_prefix()
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    await delete_prefix(client, prefix)
    await client.aclose()


def on_redis(prefix: str) -> dict[str, Any]:
    return {**MAP_NAMESPACES, "engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}}}


def updates(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(u["key"], u.get("data"), u.get("removed", False), u["offset"]) for u in events if u["ev"] == "update"]


# -- the SDK -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
async def test_sync_pages_then_live_updates(start_server, js, protobuf):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    for i in range(250):
        await node.map_publish("flags:app", f"k{i:03d}", b'{"on":%d}' % i)
    script = await js("map.mjs", url=running.url, token=token("ann"), channels=["flags:app"],
                      subOptions={"pageSize": 100}, protobuf=protobuf)
    await script.wait_for("ready")
    sync = await script.wait_for("sync", channel="flags:app")
    assert sorted(e["key"] for e in sync["entries"]) == [f"k{i:03d}" for i in range(250)]
    assert {e["key"]: e["data"] for e in sync["entries"]}["k007"] == {"on": 7}
    await node.map_publish("flags:app", "k001", b'{"on":"changed"}')
    await node.map_remove("flags:app", "k002")
    await node.map_publish("flags:app", "new", b'"x"')
    await script.wait_for("update", key="new")
    await script.send(cmd="exit")
    assert updates(await script.finish()) == [
        ("k001", {"on": "changed"}, False, 251), ("k002", None, True, 252), ("new", "x", False, 253)]


def quote(n: int, symbol: str = "ACME") -> bytes:
    return json.dumps({"symbol": symbol, "price": 100 + n, "book": [[i, 10 * i + n] for i in range(10)],
                       "note": "x" * 200}, separators=(",", ":")).encode()


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
async def test_per_key_delta_compression(start_server, js, protobuf):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    await node.map_publish("deltas:q", "ACME", quote(0))
    await node.map_publish("deltas:q", "INIT", quote(0, "INIT"))
    script = await js("map.mjs", url=running.url, token=token("quinn"), channels=["deltas:q"],
                      subOptions={"delta": "fossil"}, protobuf=protobuf)
    await script.wait_for("ready")
    sync = await script.wait_for("sync")
    assert {e["key"]: e["data"] for e in sync["entries"]} == {"ACME": json.loads(quote(0)),
                                                             "INIT": json.loads(quote(0, "INIT"))}
    for n in (1, 2, 3):
        await node.map_publish("deltas:q", "ACME", quote(n))
        await node.map_publish("deltas:q", "NEW", quote(n, "NEW"))
    await node.map_publish("deltas:q", "INIT", quote(9, "INIT"))
    await node.map_remove("deltas:q", "NEW")
    await script.wait_for("update", key="NEW", removed=True)
    await script.send(cmd="stats", channel="deltas:q")
    stats = await script.wait_for("stats")
    await script.send(cmd="exit")
    events = await script.finish()
    assert [(u[0], u[1]) for u in updates(events)] == [
        ("ACME", json.loads(quote(1))), ("NEW", json.loads(quote(1, "NEW"))),
        ("ACME", json.loads(quote(2))), ("NEW", json.loads(quote(2, "NEW"))),
        ("ACME", json.loads(quote(3))), ("NEW", json.loads(quote(3, "NEW"))),
        ("INIT", json.loads(quote(9, "INIT"))), ("NEW", None)]
    # The SDK counts the 2 snapshot values as whole payloads. Every change of a key that had a
    # value goes as a delta against it (ACME and INIT against the snapshot); NEW's first value
    # goes whole.
    assert (stats["numPublications"], stats["numDeltaPayloads"], stats["numFullPayloads"]) == (9, 6, 3), stats


async def test_subscriber_writes_and_removes_entries(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    script = await js("map.mjs", url=running.url, token=token("bob"), channels=["board:1"])
    await script.wait_for("ready")
    assert (await script.wait_for("sync"))["entries"] == []
    await script.send(cmd="publish", channel="board:1", key="card-1", data={"title": "hello"})
    await script.wait_for("written", key="card-1")
    await script.send(cmd="remove", channel="board:1", key="card-1")
    await script.wait_for("update", key="card-1", removed=True)
    await script.send(cmd="remove", channel="board:1", key="card-1")  # gone already: suppressed, not an error
    await script.wait_for("written", key="card-1")
    await script.send(cmd="exit")
    assert updates(await script.finish()) == [("card-1", {"title": "hello"}, False, 1), ("card-1", None, True, 2)]
    assert await running.node.broker.map_stats("board:1") == 0


@pytest.mark.parametrize("via", ["websocket", "http_stream", "sse"])
async def test_reconnect_recovers_missed_changes_without_resync(start_server, js, via):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    await node.map_publish("board:r", "a", b"1")
    await node.map_publish("board:r", "b", b"2")
    script = await js("map.mjs", url=running.url, token=token("cy"), channels=["board:r"], transport=via)
    await script.wait_for("ready")
    assert sorted(e["key"] for e in (await script.wait_for("sync"))["entries"]) == ["a", "b"]
    await script.send(cmd="reconnect")
    await script.wait_for("disconnected")
    await node.map_publish("board:r", "a", b"10")
    await node.map_remove("board:r", "b")
    await node.map_publish("board:r", "c", b"3")
    await script.send(cmd="go")
    await script.wait_for("resubscribed")
    await script.send(cmd="exit")
    events = await script.finish()
    subscribed = [e for e in events if e["ev"] == "subscribed"]
    assert [(s["recovered"], s["wasRecovering"]) for s in subscribed] == [(False, False), (True, True)]
    assert len([e for e in events if e["ev"] == "sync"]) == 1  # recovered: updates only
    assert updates(events) == [("a", 10, False, 3), ("b", None, True, 4), ("c", 3, False, 5)]


async def test_recovery_from_a_lost_epoch_starts_over_with_a_snapshot(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    await node.map_publish("board:e", "a", b"1")
    script = await js("map.mjs", url=running.url, token=token("di"), channels=["board:e"])
    await script.wait_for("ready")
    await script.wait_for("sync")
    await script.send(cmd="reconnect")
    await script.wait_for("disconnected")
    await node.broker.map_clear("board:e")  # a new epoch: the client's position means nothing now
    await node.map_publish("board:e", "z", b"26")
    await script.send(cmd="go")
    await script.wait_for("resubscribed")
    second = await script.wait_for("sync")
    assert [(e["key"], e["data"]) for e in second["entries"]] == [("z", 26)]
    await script.send(cmd="exit")
    await script.finish()


async def test_ephemeral_map_entries_expire_with_a_removal(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    script = await js("map.mjs", url=running.url, token=token("eve"), channels=["cursors:doc"])
    await script.wait_for("ready")
    await script.wait_for("sync")
    await script.send(cmd="publish", channel="cursors:doc", key="eve", data={"x": 1, "y": 2})
    await script.wait_for("update", key="eve", removed=None)
    await script.wait_for("update", key="eve", removed=True, within=6)  # key_ttl 1 s, swept every second
    await script.send(cmd="exit")
    events = await script.finish()
    assert updates(events) == [("eve", {"x": 1, "y": 2}, False, None), ("eve", None, True, None)]


async def test_writes_refused_without_permission(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    script = await js("map.mjs", url=running.url, token=token("fay"), channels=["flags:ro"])
    await script.wait_for("ready")
    await script.send(cmd="publish", channel="flags:ro", key="k", data=1)
    failed = await script.wait_for("write_error", key="k")
    assert failed["error"]["code"] == 103
    await script.send(cmd="exit")
    await script.finish()


async def test_recovery_past_the_stream_starts_over_with_a_snapshot(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    script = await js("map.mjs", url=running.url, token=token("hal"), channels=["small:s"])
    await script.wait_for("ready")
    assert (await script.wait_for("sync"))["entries"] == []
    await node.map_publish("small:s", "initial", b'{"v":0}')
    await script.wait_for("update", key="initial")
    await script.send(cmd="reconnect")
    await script.wait_for("disconnected")
    for i in range(1, 6):  # the stream keeps 2: the client's position is gone from it
        await node.map_publish("small:s", f"overflow_{i}", b'{"v":%d}' % i)
    await script.send(cmd="go")
    await script.wait_for("resubscribed")
    sync = await script.wait_for("sync")
    assert sorted(e["key"] for e in sync["entries"]) == ["initial"] + [f"overflow_{i}" for i in range(1, 6)]
    await script.send(cmd="exit")
    events = await script.finish()
    assert [s["recovered"] for s in events if s["ev"] == "subscribed"] == [False, False]


async def test_client_key_makes_each_connection_write_its_own_entry(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    script = await js("map.mjs", url=running.url, token=token("ivy"), channels=["mine:doc"])
    await script.wait_for("ready")
    await script.send(cmd="publish", channel="mine:doc", key="somebody-else", data={"x": 5})
    update = await script.wait_for("update")
    assert update["key"] != "somebody-else"
    state = await running.node.broker.map_state("mine:doc", running.node.map_settings(
        running.node.rules.resolve("mine:doc")))
    assert [e.key for e in state.entries] == [update["key"]]
    assert running.node.hub.connection(update["key"]) is not None  # the key is the connection's id
    await script.send(cmd="exit")
    await script.finish()


async def test_tags_filter_on_a_map_subscription(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    await node.map_publish("tagged:t", "eng_item", b'{"v":1}', tags={"team": "eng"})
    await node.map_publish("tagged:t", "sales_item", b'{"v":2}', tags={"team": "sales"})
    await node.map_publish("tagged:t", "eng_item_2", b'{"v":3}', tags={"team": "eng"})
    script = await js("map.mjs", url=running.url, token=token("jo"), channels=["tagged:t"],
                      subOptions={"tagsFilter": {"key": "team", "cmp": "eq", "val": "eng"}})
    await script.wait_for("ready")
    sync = await script.wait_for("sync")
    assert sorted(e["key"] for e in sync["entries"]) == ["eng_item", "eng_item_2"]
    await node.map_publish("tagged:t", "sales_2", b'{"v":4}', tags={"team": "sales"})
    await node.map_publish("tagged:t", "eng_3", b'{"v":5}', tags={"team": "eng"})
    await script.wait_for("update", key="eng_3")
    await script.send(cmd="exit")
    assert [u[0] for u in updates(await script.finish())] == ["eng_3"]


async def test_two_clients_see_the_same_map(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    first = await js("map.mjs", url=running.url, token=token("kim"), channels=["board:two"])
    second = await js("map.mjs", url=running.url, token=token("lee"), channels=["board:two"])
    await first.wait_for("ready")
    await second.wait_for("ready")
    await first.send(cmd="publish", channel="board:two", key="from-kim", data=1)
    await second.send(cmd="publish", channel="board:two", key="from-lee", data=2)
    for script in (first, second):
        await script.wait_for("update", key="from-kim")
        await script.wait_for("update", key="from-lee")
        await script.send(cmd="exit")
    assert sorted(updates(await first.finish())) == sorted(updates(await second.finish()))


async def test_two_instances_on_redis_share_maps_and_recovery(start_server, js, redis_prefix):  # noqa: F811
    a = await start_server(on_redis(redis_prefix))
    b = await start_server(on_redis(redis_prefix))
    for i in range(150):
        await b.node.map_publish("board:r", f"k{i:03d}", b"%d" % i)
    script = await js("map.mjs", url=a.url, token=token("max"), channels=["board:r"], subOptions={"pageSize": 100})
    await script.wait_for("ready")
    assert len((await script.wait_for("sync"))["entries"]) == 150
    await b.node.map_publish("board:r", "k000", b'"changed on b"')
    await script.wait_for("update", key="k000")
    await script.send(cmd="reconnect")
    await script.wait_for("disconnected")
    await b.node.map_remove("board:r", "k001")
    await b.node.map_publish("board:r", "late", b"1")
    await script.send(cmd="go")
    await script.wait_for("resubscribed")
    await script.send(cmd="exit")
    events = await script.finish()
    assert [s["recovered"] for s in events if s["ev"] == "subscribed"] == [False, True]
    assert updates(events) == [("k000", "changed on b", False, 151), ("k001", None, True, 152),
                               ("late", 1, False, 153)]


async def test_entries_expire_on_redis_with_a_removal(start_server, js, redis_prefix):  # noqa: F811
    running = await start_server(on_redis(redis_prefix))
    script = await js("map.mjs", url=running.url, token=token("ned"), channels=["cursors:r"])
    await script.wait_for("ready")
    await script.wait_for("sync")
    await running.node.map_publish("cursors:r", "ned", b'{"x":1}')
    await script.wait_for("update", key="ned", removed=None)
    await script.wait_for("update", key="ned", removed=True, within=6)
    await script.send(cmd="exit")
    await script.finish()
    assert await running.node.broker.map_stats("cursors:r") == 0


async def test_map_presence_of_clients_and_users(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    watcher = await js("map.mjs", url=running.url, token=token("olga"), channels=["who:room:1", "users:room:1"],
                       kinds={"who:room:1": "clients", "users:room:1": "users"})
    await watcher.wait_for("ready")
    assert (await watcher.wait_for("sync", channel="who:room:1"))["entries"] == []
    member = await js("map.mjs", url=running.url, token=token("pat"), channels=["room:1"])
    await member.wait_for("ready")
    await member.send(cmd="client")
    pat = (await member.wait_for("client"))["id"]
    joined = await watcher.wait_for("update", channel="who:room:1")
    assert (joined["key"], joined["client"], joined.get("removed")) == (pat, pat, None)
    assert (await watcher.wait_for("update", channel="users:room:1"))["key"] == "pat"
    await member.send(cmd="exit")
    await member.finish()
    left = await watcher.wait_for("update", channel="who:room:1")
    assert (left["key"], left["removed"]) == (pat, True)
    # the user's entry stays until its key_ttl (the user may be back in a moment)
    users = await running.node.broker.map_state("users:room:1", running.node.map_settings(
        running.node.rules.resolve("users:room:1")))
    assert [e.key for e in users.entries] == ["pat"]
    await watcher.send(cmd="exit")
    await watcher.finish()


async def test_map_presence_refresh_brings_back_an_expired_entry(start_server):
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    settings = node.map_settings(node.rules.resolve("who:room:3"))
    peer = await map_peer(running)
    live = await peer.call("subscribe", sub("room:3", 2))
    assert "error" not in live
    client_id = next(iter(running.server.clients)).client_id
    assert [e.key for e in (await node.broker.map_state("who:room:3", settings)).entries] == [client_id]
    await node.map_presence_remove("who:room:3", client_id)  # as if its key_ttl had passed
    await running.server._refresh_presence()
    assert [e.key for e in (await node.broker.map_state("who:room:3", settings)).entries] == [client_id]
    await peer.close()


async def test_map_presence_entries_are_kept_by_the_server(start_server):
    running = await start_server(MAP_NAMESPACES)
    peer = await map_peer(running)
    reply = await peer.call("publish", {"channel": "who:room:2", "type": 1, "key": "fake", "data": 1})
    assert reply["error"]["code"] == 103
    wrong = await peer.call("subscribe", sub("who:room:2", 2))  # type 1 on a map_clients channel
    assert wrong["error"]["code"] == 107
    await peer.close()


async def test_maps_leave_no_lasting_redis_keys_unless_written_persistent(start_server, redis_prefix):
    running = await start_server(on_redis(redis_prefix))
    peer = await map_peer(running)
    await peer.call("subscribe", sub("flags:nobody", 2))  # a read creates the position...
    await peer.call("subscribe", sub("board:nobody", 1, offset=0, epoch="x", recover=True))
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        for channel in ("flags:nobody", "board:nobody"):
            assert 0 < await client.pttl(f"{redis_prefix}.meta.{{{channel}}}") <= 300_000, channel  # ...briefly
        await running.node.map_publish("flags:nobody", "k", b"1")  # persistent, written: stays
        assert await client.pttl(f"{redis_prefix}.meta.{{flags:nobody}}") == -1
        assert await client.pttl(f"{redis_prefix}.map.{{flags:nobody}}") == -1
        await running.node.map_publish("cursors:e", "k", b"1")  # ephemeral: key_ttl + 60 s
        assert 0 < await client.pttl(f"{redis_prefix}.meta.{{cursors:e}}") <= 61_000
    finally:
        await client.aclose()
        await peer.close()


# -- the phases, frame by frame ------------------------------------------------------------------


async def map_peer(running: Any) -> RawPeer:
    peer = await RawPeer.open(running.url)
    await peer.connect("gus")
    return peer


def sub(channel: str, phase: int, **more: Any) -> dict[str, Any]:
    return {"channel": channel, "type": 1, "phase": phase, **more}


async def test_entries_written_during_paging_come_once_from_the_stream(start_server):
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    for key in "abcdef":
        await node.map_publish("flags:p", key, b'"old"')
    peer = await map_peer(running)
    first = (await peer.call("subscribe", sub("flags:p", 2, limit=2)))["subscribe"]
    assert (first["type"], first["phase"], first["offset"]) == (1, 2, 6)
    assert [e["key"] for e in first["state"]] == ["a", "b"] and first["cursor"]
    await node.map_publish("flags:p", "e", b'"new"')  # not yet paged: must not show up twice
    await node.map_publish("flags:p", "a", b'"new"')  # paged already
    pos = {"offset": first["offset"], "epoch": first["epoch"]}
    seen = [e["key"] for e in first["state"]]
    cursor = first["cursor"]
    while True:
        page = (await peer.call("subscribe", sub("flags:p", 2, limit=2, cursor=cursor, **pos)))["subscribe"]
        seen += [e["key"] for e in page.get("state", [])]
        if page.get("phase", 0) == 0:
            live = page
            break
        assert page["offset"] == 6  # frozen at the first page
        cursor = page["cursor"]
    assert seen == ["a", "b", "c", "d", "f"]  # "e" changed after the first page
    assert [(p["key"], p["data"], p["offset"]) for p in live["publications"]] == [("e", "new", 7), ("a", "new", 8)]
    assert live["offset"] == 8 and live["recoverable"] is True
    await node.map_publish("flags:p", "g", b'"live"')
    push = await peer.recv()
    assert push["push"]["pub"] == {"data": "live", "offset": 9, "key": "g"}
    await peer.close()


async def test_stream_phase_pages_until_close_to_the_top(start_server):
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    await node.map_publish("flags:s", "k", b"0")
    peer = await map_peer(running)
    state = (await peer.call("subscribe", sub("flags:s", 2, limit=2)))["subscribe"]
    assert state.get("phase", 0) == 0  # one page, stream not ahead: live at once
    await peer.call("unsubscribe", {"channel": "flags:s"})
    for i in range(1, 8):
        await node.map_publish("flags:s", "k", b"%d" % i)
    epoch = state["epoch"]
    page = (await peer.call("subscribe", sub("flags:s", 1, limit=2, offset=1, epoch=epoch, recover=True)))["subscribe"]
    assert (page["phase"], page["offset"], [p["data"] for p in page["publications"]]) == (1, 3, [1, 2])
    page = (await peer.call("subscribe", sub("flags:s", 1, limit=2, offset=3, epoch=epoch, recover=True)))["subscribe"]
    assert (page["phase"], page["offset"]) == (1, 5)
    page = (await peer.call("subscribe", sub("flags:s", 1, limit=2, offset=5, epoch=epoch, recover=True)))["subscribe"]
    assert (page["phase"], page["offset"]) == (1, 7)
    # 7 + 2 reaches the top (8) captured at the first stream request: live.
    live = (await peer.call("subscribe", sub("flags:s", 1, limit=2, offset=7, epoch=epoch, recover=True)))["subscribe"]
    assert live.get("phase", 0) == 0 and live["recovered"] is True and live["offset"] == 8
    assert [p["data"] for p in live["publications"]] == [7]
    await peer.close()


@pytest.mark.parametrize(("params", "code"), [
    (sub("chat:x", 2), 107),                      # not a map namespace
    ({"channel": "flags:x", "type": 2}, 107),     # map presence type on a data map
    ({"channel": "flags:x", "type": 4}, 108),     # shared poll: not available
    (sub("flags:x", 7), 107),                     # no such phase
    (sub("flags:x", 2, cursor="zz"), 103),        # a cursor without a flow
    (sub("flags:x", 1, offset=0, epoch="nope"), 112),  # a position of another epoch
    (sub("cursors:x", 1), 107),                   # no stream to page through
    (sub("flags:x", 2, limit=-5, cursor="x" * 10_000), 103),  # hostile paging: no flow to continue
    ({"channel": "flags:x"}, 107),                # a map channel needs type 1
])
async def test_bad_map_subscribes_get_errors(start_server, params, code):
    running = await start_server(MAP_NAMESPACES)
    peer = await map_peer(running)
    reply = await peer.call("subscribe", params)
    assert reply["error"]["code"] == code, reply
    await peer.sync()  # still connected
    await peer.close()


@pytest.mark.parametrize("params", [
    {"channel": "flags:x", "type": 1, "phase": 2, "offset": -1},        # not a uint64
    {"channel": "flags:x", "type": 1, "phase": 2, "limit": 1 << 40},    # not an int32
    {"channel": "flags:x", "type": 1, "phase": "2"},                    # not a number
])
async def test_malformed_map_subscribes_close_with_3501(start_server, params):
    running = await start_server(MAP_NAMESPACES)
    peer = await map_peer(running)
    await peer.send({"id": 9, "subscribe": params})
    assert (await peer.closed())[0] == 3501


async def test_page_sizes_are_clamped(start_server):
    running = await start_server(MAP_NAMESPACES)
    for i in range(5):
        await running.node.map_publish("flags:big", f"k{i}", b"1")
    peer = await map_peer(running)
    for limit in (-5, 0, 10**9):
        live = (await peer.call("subscribe", sub("flags:big", 2, limit=limit)))["subscribe"]
        assert len(live["state"]) == 5 and "cursor" not in live  # min 2, default 100, max 1,000
        await peer.call("unsubscribe", {"channel": "flags:big"})
    await peer.close()


async def test_client_publish_rules_for_map_channels(start_server):
    running = await start_server(MAP_NAMESPACES)
    peer = await map_peer(running)
    assert (await peer.call("publish", {"channel": "cursors:c", "type": 1, "key": "me", "data": {"x": 1}})) == {
        "id": 1 + 1, "publish": {}}
    bad = [
        {"channel": "cursors:c", "data": {"x": 1}},                         # type 0 into a map
        {"channel": "chat:c", "type": 1, "key": "k", "data": 1},            # type 1 into a stream channel
        {"channel": "cursors:c", "type": 1, "key": "", "data": 1},          # no key
        {"channel": "cursors:c", "type": 1, "key": "k", "data": "x" * 2000},  # too large
    ]
    for params in bad:
        assert (await peer.call("publish", params))["error"]["code"] == 107, params
    await peer.close()


async def test_map_clear_makes_live_subscribers_start_over(start_server, js):  # noqa: F811
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    for key in "abc":
        await node.map_publish("flags:clr", key, b"1")
    script = await js("map.mjs", url=running.url, token=token("ola"), channels=["flags:clr"])
    await script.wait_for("ready")
    assert len((await script.wait_for("sync"))["entries"]) == 3
    await execute(node, "map_clear", {"channel": "flags:clr"})
    await node.map_publish("flags:clr", "z", b"26")
    await script.wait_for("subscribing", code=2500)
    again = await script.wait_for("sync")
    assert [(e["key"], e["data"]) for e in again["entries"]] == [("z", 26)]
    await script.send(cmd="exit")
    await script.finish()


async def test_server_unsubscribe_ends_a_map_subscribe_still_paging(start_server):
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    for key in "abcd":
        await node.map_publish("flags:su", key, b"0")
    peer = await map_peer(running)
    first = (await peer.call("subscribe", sub("flags:su", 2, limit=2)))["subscribe"]
    assert first["cursor"]
    await execute(node, "unsubscribe", {"user": "gus", "channel": "flags:su"})
    push = await peer.recv()
    assert push["push"]["unsubscribe"]["code"] == 2000
    page = await peer.call("subscribe", sub("flags:su", 2, limit=2, cursor=first["cursor"], offset=first["offset"],
                                            epoch=first["epoch"]))
    assert page["error"]["code"] == 103  # the flow is gone: no going live
    await peer.close()


async def test_stream_doors_refuse_map_channels(start_server):
    from livegate.api.commands import execute as run
    from livegate.errors import ClientError
    running = await start_server(MAP_NAMESPACES)
    for method, params in [("publish", {"channel": "flags:s", "data": 1}),
                           ("subscribe", {"user": "gus", "channel": "flags:s"})]:
        with pytest.raises(ClientError) as err:
            await run(running.node, method, params)
        assert err.value.code == 107, method
    reply = await execute(running.node, "broadcast", {"channels": ["flags:s"], "data": 1})
    assert reply["responses"][0]["error"]["code"] == 107


# -- the server API ------------------------------------------------------------------------------


async def execute(node: Any, method: str, params: dict[str, Any]) -> Any:
    """The API method's answer as the HTTP door would send it (JSON)."""
    from livegate.api.commands import execute as run
    return orjson.loads(orjson.dumps(await run(node, method, params)))


async def test_server_api_map_methods(start_server):
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    first = await execute(node, "map_publish", {"channel": "flags:api", "key": "a", "data": {"v": 1}})
    assert first["offset"] == 1 and first["epoch"]
    assert (await execute(node, "map_publish", {"channel": "flags:api", "key": "a", "data": 2, "key_mode": "if_new"})
            ) == {"offset": 1, "epoch": first["epoch"], "suppressed": True, "suppress_reason": "key_exists"}
    cas = await execute(node, "map_publish", {"channel": "flags:api", "key": "a", "data": 3,
                                              "expected_position": {"offset": 9, "epoch": first["epoch"]}})
    assert cas["suppress_reason"] == "position_mismatch" and cas["current"]["data"] == {"v": 1}
    ok = await execute(node, "map_publish", {"channel": "flags:api", "key": "a", "data": 3,
                                             "expected_position": {"offset": 1, "epoch": first["epoch"]}})
    assert ok == {"offset": 2, "epoch": first["epoch"]}
    await execute(node, "map_publish", {"channel": "flags:api", "key": "b", "data": True, "tags": {"t": "1"}})
    state = await execute(node, "map_read_state", {"channel": "flags:api"})
    assert [(e["key"], e["data"], e["offset"]) for e in state["entries"]] == [("a", 3, 2), ("b", True, 3)]
    assert (await execute(node, "map_read_state", {"channel": "flags:api", "key": "b"}))["entries"][0]["tags"] == {
        "t": "1"}
    assert (await execute(node, "map_stats", {"channel": "flags:api"})) == {"num_keys": 2}
    removed = await execute(node, "map_remove", {"channel": "flags:api", "key": "b"})
    assert removed["offset"] == 4
    stream = await execute(node, "map_read_stream", {"channel": "flags:api", "limit": -1,
                                                     "since": {"offset": 2, "epoch": first["epoch"]}})
    assert [(e["key"], e.get("removed", False), e["offset"]) for e in stream["entries"]] == [
        ("b", False, 3), ("b", True, 4)]
    assert (await execute(node, "map_remove", {"channel": "flags:api", "key": "b"}))["suppress_reason"] == (
        "key_not_found")
    await execute(node, "map_clear", {"channel": "flags:api"})
    after = await execute(node, "map_read_state", {"channel": "flags:api"})
    assert after["entries"] == [] and after["epoch"] != first["epoch"]


async def test_map_methods_through_the_http_api_and_batch(start_server):
    import aiohttp
    running = await start_server(MAP_NAMESPACES)
    base = f"http://127.0.0.1:{running.server.api_port}/api"
    headers = {"X-API-Key": "test-api-key"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{base}/map_publish", json={"channel": "flags:h", "key": "a", "data": {"v": 1}}) as r:
            body = await r.json()
            assert r.status == 200 and body["result"]["offset"] == 1, body
        async with http.post(f"{base}/batch", json={"commands": [
            {"map_publish": {"channel": "flags:h", "key": "b", "data": 2}},
            {"map_stats": {"channel": "flags:h"}},
            {"map_remove": {"channel": "chat:h", "key": "b"}},
        ]}) as r:
            replies = (await r.json())["replies"]
        assert replies[1] == {"map_stats": {"num_keys": 2}} and replies[2]["error"]["code"] == 107
        async with http.post(f"{base}/map_publish", json={"channel": "flags:h", "key": "a"}) as r:
            assert (await r.json())["error"]["code"] == 107  # no data


@pytest.mark.parametrize(("method", "params"), [
    ("map_publish", {"channel": "chat:x", "key": "k", "data": 1}),             # not a map channel
    ("map_publish", {"channel": "flags:x", "data": 1}),                         # no key
    ("map_publish", {"channel": "flags:x", "key": "k", "data": 1, "key_mode": "maybe"}),
    ("map_publish", {"channel": "cursors:x", "key": "k", "data": 1,
                     "expected_position": {"offset": 1, "epoch": "e"}}),       # CAS without a stream
    ("map_read_state", {"channel": "chat:x"}),
    ("map_stats", {}),
    ("map_publish", {"channel": "flags:x", "key": "k" * 1025, "data": 1}),      # key over 1,024 bytes
    ("map_publish", {"channel": "flags:x", "key": "k", "data": "x" * 2000}),    # over max_publication_size
    ("map_publish", {"channel": "flags:x", "key": "k", "b64data": "not base64!"}),
    ("map_read_state", {"channel": "flags:x", "limit": "ten"}),
    ("map_read_stream", {"channel": "flags:x", "since": {"offset": -1}}),
])
async def test_server_api_map_errors(start_server, method, params):
    from livegate.api.commands import execute
    from livegate.errors import ClientError
    running = await start_server(MAP_NAMESPACES)
    with pytest.raises(ClientError) as err:
        await execute(running.node, method, params)
    assert err.value.code == 107


async def test_cas_on_an_absent_key_means_create(start_server):
    running = await start_server(MAP_NAMESPACES)
    node = running.node
    top = await node.broker.map_state("flags:c", node.map_settings(node.rules.resolve("flags:c")))
    result = await node.map_publish("flags:c", "new", b"1", expected=StreamPosition(0, top.position.epoch))
    assert not result.suppressed and result.position.offset == 1
    again = await node.map_publish("flags:c", "new", b"2", expected=StreamPosition(0, top.position.epoch))
    assert again.suppressed and again.reason == "position_mismatch" and again.current is not None
    assert json.loads(again.current.data) == 1
