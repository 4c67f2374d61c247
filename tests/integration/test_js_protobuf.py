"""The real centrifuge-js SDK's Protobuf build (5.8.0, ``centrifuge/build/protobuf``) against a
real livegate server.

Same machinery as test_js_sdk.py (NodeScript, the ``js`` fixture): the scripts get
``protobuf=True`` (tests/js/common.mjs), so their clients speak the Protobuf variant of the
protocol (WebSocket subprotocol ``centrifuge-protobuf``). That build hands payloads over as
bytes; the scripts print them decoded (JSON text as its value, other bytes as
``{"$bytes": [numbers]}``) and, for publications, their exact ``bytes`` as well.

Protobuf cannot tell an empty bytes field or map from an absent one, and the SDK reports
them as what they are on the wire: no data is ``{"$bytes": []}`` and no tags is ``{}``,
where the JSON build has ``undefined``.

Every test also checks that the SDK did speak Protobuf: ``frames`` records the codec of the
connection and the type of each frame the server handled.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import test_js_sdk
from conftest import Running, scaled, token, wait_until
from test_js_sdk import only, stream_top

import livegate
from livegate.channels.broker import HistoryOptions
from livegate.protocol import codes

js = test_js_sdk.js  # the fixture that runs tests/js scripts (NodeScript)

NO_DATA = {"$bytes": []}  # what the Protobuf build reports for an absent (empty) payload


def jtext(value: Any) -> list[int]:
    """The bytes of ``value``'s JSON text as JavaScript's JSON.stringify writes it."""
    return list(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


@pytest.fixture
def frames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, type]]:
    """(client id, codec name, frame type) of every frame the server handles."""
    from livegate.session.core import SessionCore

    seen: list[tuple[str, str, type]] = []
    original = SessionCore.handle_frame

    async def recording(self, frame):  # noqa: ANN001, ANN202
        seen.append((self.client_id, self.codec.name, type(frame)))
        return await original(self, frame)

    monkeypatch.setattr(SessionCore, "handle_frame", recording)
    return seen


def assert_spoke(frames: list[tuple[str, str, type]], expected: dict[str, str]) -> None:
    """Each client id in ``expected`` sent frames, all in that codec (bytes for Protobuf)."""
    for client_id, codec in expected.items():
        got = {(name, kind) for cid, name, kind in frames if cid == client_id}
        assert got == {(codec, bytes if codec == "protobuf" else str)}, (client_id, got)


# -- connect, subscribe, publish, own publication -----------------------------------------------


async def test_protobuf_connect_subscribe_publish_receives_own_publication(start_server, js, frames):
    running = await start_server()
    data = {"text": "héllo", "n": 1}
    script = await js("pubsub.mjs", url=running.url, token=token("alice", info={"name": "Alice"}),
                      channel="chat:pb", data=data, protobuf=True)
    await script.finish()

    connected = only(script.of("connected", who="a"))
    client_id = connected["client"]
    assert isinstance(client_id, str) and client_id
    assert connected["transport"] == "websocket"
    assert connected["data"] == NO_DATA
    assert_spoke(frames, {client_id: "protobuf"})

    subscribed = only(script.of("subscribed", channel="chat:pb"))
    offset, epoch = await stream_top(running, "chat:pb")
    assert offset == 1 and epoch
    assert (subscribed["recoverable"], subscribed["positioned"]) == (True, True)
    assert subscribed["streamPosition"] == {"offset": 0, "epoch": epoch}
    assert (subscribed["wasRecovering"], subscribed["recovered"]) == (False, False)

    assert only(script.of("publish_result"))["result"] == {}
    own = only(script.of("own_publication"))
    alice = {"user": "alice", "client": client_id, "connInfo": {"name": "Alice"}}
    assert own == {"ev": "own_publication", "data": data, "bytes": jtext(data), "offset": 1,
                   "info": alice, "tags": {}}
    # The server kept the bytes the SDK sent.
    hist = await running.node.broker.history("chat:pb", HistoryOptions(limit=-1))
    assert [(p.offset, p.data) for p in hist.publications] == [(1, bytes(jtext(data)))]
    assert [e["info"] for e in script.of("join")] == [alice]
    assert len(script.of("publication")) == 1

    # Not allowed to publish there: an error reply; the client stays connected.
    assert only(script.of("locked_publish")) == {"ev": "locked_publish", "ok": False,
                                                 "error": {"code": 103, "message": "permission denied"}}
    assert [e["code"] for e in script.of("connecting")] == [0]
    assert [(e["code"], e["reason"]) for e in script.of("disconnected")] == [(0, "disconnect called")]
    assert not script.of("error") and not script.of("sub_error")


# -- presence, presence stats, history ----------------------------------------------------------


async def test_protobuf_presence_and_history(start_server, js, frames):
    running = await start_server()
    queries = [
        {"name": "presence", "op": "presence", "channel": "chat:q"},
        {"name": "stats", "op": "presenceStats", "channel": "chat:q"},
        {"name": "position_only", "op": "history", "channel": "chat:q"},
        {"name": "limit2", "op": "history", "channel": "chat:q", "opts": {"limit": 2}},
        {"name": "all", "op": "history", "channel": "chat:q", "opts": {"limit": -1}},
        {"name": "since2", "op": "history", "channel": "chat:q",
         "opts": {"limit": 2, "since": {"offset": 2, "epoch": "$epoch"}}},
        {"name": "reverse2", "op": "history", "channel": "chat:q", "opts": {"limit": 2, "reverse": True}},
        {"name": "reverse_since4", "op": "history", "channel": "chat:q",
         "opts": {"limit": 2, "reverse": True, "since": {"offset": 4, "epoch": "$epoch"}}},
        {"name": "since_other_epoch", "op": "history", "channel": "chat:q",
         "opts": {"limit": 2, "since": {"offset": 1, "epoch": "not-the-epoch"}}},
        {"name": "history_disabled", "op": "history", "channel": "news", "opts": {"limit": 1}},
        {"name": "presence_disabled", "op": "presence", "channel": "feed:q"},
        {"name": "presence_not_subscribed", "op": "presence", "channel": "chat:other"},
        {"name": "unknown_namespace", "op": "presenceStats", "channel": "nope:q"},
    ]
    users = [["a1", token("alice", info={"dev": 1})], ["a2", token("alice", info={"dev": 2})], ["b", token("bob")]]
    script = await js("queries.mjs", url=running.url, channel="chat:q", users=users,
                      publish=[{"n": n} for n in range(1, 6)], queries=queries, protobuf=True)
    await script.finish()

    ids = {e["who"]: e["client"] for e in script.of("connected")}
    assert len(set(ids.values())) == 3
    assert_spoke(frames, {cid: "protobuf" for cid in ids.values()})
    offset, epoch = await stream_top(running, "chat:q")
    assert offset == 5
    q = {e["name"]: e for e in script.of("query")}
    assert q["presence"]["result"] == {
        ids["a1"]: {"user": "alice", "client": ids["a1"], "connInfo": {"dev": 1}, "chanInfo": None},
        ids["a2"]: {"user": "alice", "client": ids["a2"], "connInfo": {"dev": 2}, "chanInfo": None},
        ids["b"]: {"user": "bob", "client": ids["b"], "connInfo": None, "chanInfo": None},
    }
    assert q["stats"]["result"] == {"numClients": 3, "numUsers": 2}

    def hist(name: str) -> list[int]:
        res = q[name]
        assert res["ok"], res
        assert (res["result"]["offset"], res["result"]["epoch"]) == (5, epoch)
        pubs = res["result"]["publications"]
        assert all(p["data"] == {"n": p["offset"]} and p["bytes"] == jtext({"n": p["offset"]}) for p in pubs), pubs
        assert all(p["info"] == {"user": "alice", "client": ids["a1"], "connInfo": {"dev": 1}} for p in pubs), pubs
        return [p["offset"] for p in pubs]

    assert hist("position_only") == []
    assert hist("limit2") == [1, 2]
    assert hist("all") == [1, 2, 3, 4, 5]
    assert hist("since2") == [3, 4]
    assert hist("reverse2") == [5, 4]
    assert hist("reverse_since4") == [3, 2]
    errors = {name: (q[name]["ok"], q[name].get("error", {}).get("code")) for name in (
        "since_other_epoch", "history_disabled", "presence_disabled", "presence_not_subscribed", "unknown_namespace")}
    assert errors == {"since_other_epoch": (False, 112), "history_disabled": (False, 108),
                      "presence_disabled": (False, 108), "presence_not_subscribed": (False, 103),
                      "unknown_namespace": (False, 102)}
    assert only(script.of("stats_after_leave"))["result"] == {"numClients": 2, "numUsers": 1}
    assert [e["code"] for e in script.of("connecting")] == [0, 0, 0]


# -- RPC ------------------------------------------------------------------------------------------


async def test_protobuf_rpc_json_and_raw_payloads(start_server, js, frames):
    app = livegate.App()
    seen: list[tuple[str, Any]] = []

    @app.rpc("echo")
    async def echo(ctx, data):  # noqa: ANN001, ANN202
        seen.append(("echo", data))
        return {"echo": data, "user": ctx.user}

    @app.rpc("reverse")
    async def reverse(ctx, data):  # noqa: ANN001, ANN202
        seen.append(("reverse", data))
        return bytes(reversed(data))  # bytes go back as they are

    @app.rpc("raw_json")
    async def raw_json(ctx, data):  # noqa: ANN001, ANN202
        return b'{"raw": [1, true]}'

    @app.rpc("nothing")
    async def nothing(ctx, data):  # noqa: ANN001, ANN202
        return None

    @app.rpc("teapot")
    async def teapot(ctx, data):  # noqa: ANN001, ANN202
        raise livegate.ClientError(418, "I am a teapot")

    running = await start_server(app=app)
    payload = {"x": [1, 2.5, None], "s": "é\n\"q\"", "nested": {"t": True}}
    script = await js("rpc.mjs", url=running.url, token=token("gina"), protobuf=True, calls=[
        {"name": "echo", "method": "echo", "data": payload},
        {"name": "reverse", "method": "reverse", "data": {"$bytes": [0, 255, 1, 128]}},
        {"name": "text_not_json", "method": "reverse", "data": {"$bytes": list(b"hello")}},
        {"name": "raw_json", "method": "raw_json", "data": {}},
        {"name": "nothing", "method": "nothing", "data": {}},
        {"name": "unknown", "method": "no.such.method", "data": {}},
        {"name": "teapot", "method": "teapot", "data": 1},
        {"name": "echo_again", "method": "echo", "data": "after errors"},
    ])
    await script.finish()
    assert_spoke(frames, {only(script.of("connected"))["client"]: "protobuf"})

    # The handlers got JSON decoded, anything else as bytes.
    assert seen == [("echo", payload), ("reverse", b"\x00\xff\x01\x80"), ("reverse", b"hello"),
                    ("echo", "after errors")]
    r = {e["name"]: e for e in script.of("rpc")}
    assert r["echo"] == {"ev": "rpc", "name": "echo", "ok": True, "data": {"echo": payload, "user": "gina"}}
    assert r["reverse"]["data"] == {"$bytes": [128, 1, 255, 0]}
    assert r["text_not_json"]["data"] == {"$bytes": list(b"olleh")}
    assert r["raw_json"]["data"] == {"raw": [1, True]}
    assert r["nothing"] == {"ev": "rpc", "name": "nothing", "ok": True, "data": NO_DATA}
    assert r["unknown"] == {"ev": "rpc", "name": "unknown", "ok": False,
                            "error": {"code": 104, "message": "method not found"}}
    assert r["teapot"] == {"ev": "rpc", "name": "teapot", "ok": False,
                           "error": {"code": 418, "message": "I am a teapot"}}
    assert r["echo_again"]["data"] == {"echo": "after errors", "user": "gina"}
    assert only(script.of("state"))["state"] == "connected"
    assert [e["code"] for e in script.of("connecting")] == [0]


# -- recovery after a forced reconnect ------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "http_stream"])
async def test_protobuf_recovery_after_force_reconnect(start_server, js, frames, transport):
    running: Running = await start_server()
    node = running.node
    script = await js("listen.mjs", url=running.url, token=token("carol"), channels=["chat:r"], protobuf=True,
                      transport=transport,
                      clientOptions={"minReconnectDelay": round(scaled(500)), "maxReconnectDelay": round(scaled(800))})
    await script.wait_for("ready")
    for n in range(1, 4):
        await node.publish("chat:r", json.dumps({"n": n}).encode())
    for _ in range(3):
        await script.wait_for("publication")

    [conn] = node.hub.connections()
    first_id = conn.client_id
    assert conn.codec.name == "protobuf"
    conn.close(codes.FORCE_RECONNECT)
    await wait_until(lambda: not node.hub.connections(), within=2, what="the closed connection's release")
    for n in range(4, 8):  # missed: the client is away (its reconnect backoff is at least 500 ms)
        await node.publish("chat:r", json.dumps({"n": n}).encode())

    resubscribed = await script.wait_for("subscribed", wasRecovering=True)
    for _ in range(4):
        await script.wait_for("publication")
    await node.publish("chat:r", b'{"n":8}')  # live again; also the marker for duplicates
    await script.wait_for("publication", offset=8)
    await script.send(cmd="exit")
    await script.finish()

    offset, epoch = await stream_top(running, "chat:r")
    assert offset == 8
    connected = [e["client"] for e in script.of("connected")]
    assert len(connected) == 2 and connected[0] == first_id and connected[1] != first_id
    assert_spoke(frames, {cid: "protobuf" for cid in connected})
    assert [(e["code"], e["reason"]) for e in script.of("connecting")] == [
        (0, "connect called"), (3011, "force reconnect")]
    initial, again = script.of("subscribed")
    assert again is resubscribed
    assert initial["streamPosition"] == {"offset": 0, "epoch": epoch}
    assert (again["wasRecovering"], again["recovered"], again["hasRecoveredPublications"]) == (True, True, True)
    assert again["streamPosition"] == {"offset": 3, "epoch": epoch}
    # Every publication exactly once, in order, with its offset; the missed ones right after
    # the subscribed event.
    pubs = script.of("publication")
    assert [(p["data"], p["offset"]) for p in pubs] == [({"n": n}, n) for n in range(1, 9)]
    assert all(p["bytes"] == list(json.dumps({"n": p["offset"]}).encode()) for p in pubs[:7])
    i = script.events.index(again)
    assert [e.get("offset") for e in script.events[i + 1:i + 5]] == [4, 5, 6, 7]
    assert [e["code"] for e in script.of("disconnected")] == [0]  # only the final disconnect()
    assert not script.of("error") and not script.of("sub_error")


# -- one channel, both builds -----------------------------------------------------------------


async def test_json_and_protobuf_clients_share_a_channel(start_server, js, frames):
    running = await start_server()
    script = await js("fanout.mjs", url=running.url, channel="chat:mix", builds=["json", "protobuf"], clients=[
        {"who": "j", "token": token("jane"), "protobuf": False},
        {"who": "p", "token": token("paul", info={"pb": True}), "protobuf": True},
    ], steps=[
        {"who": "j", "data": {"from": "j", "s": "é"}},
        # Not JSON, in a JSON namespace: refused with an error reply, nothing published.
        {"who": "p", "data": {"$bytes": [0, 255, 1]}},
        {"who": "p", "data": {"from": "p", "list": [1, None]}},
    ], expect=3)
    await script.wait_for("ready")
    server = await running.node.publish("chat:mix", b'{"from":"server"}', tags={"k": "v"})
    assert server.position.offset == 1
    await script.send(cmd="go")
    await script.finish()

    ids = {e["who"]: e["client"] for e in script.of("connected")}
    assert_spoke(frames, {ids["j"]: "json", ids["p"]: "protobuf"})
    results = [(e["who"], e["ok"], e.get("error", {}).get("code")) for e in script.of("publish_result")]
    assert results == [("j", True, None), ("p", False, 107), ("p", True, None)]
    jane = {"user": "jane", "client": ids["j"]}
    paul = {"user": "paul", "client": ids["p"], "connInfo": {"pb": True}}
    expected = [({"from": "server"}, 1, None, {"k": "v"}),
                ({"from": "j", "s": "é"}, 2, jane, None),
                ({"from": "p", "list": [1, None]}, 3, paul, None)]
    received = {e["who"]: e["pubs"] for e in script.of("received")}
    for who in ("j", "p"):
        got = [(p["data"], p["offset"], p["info"], p["tags"]) for p in received[who]]
        # The Protobuf build reports no tags as {} (an empty map), the JSON build as nothing.
        want = [(d, o, i, t if t is not None or who == "j" else {}) for d, o, i, t in expected]
        assert got == want, who
    assert "bytes" not in received["j"][0]
    assert [p["bytes"] for p in received["p"]] == [list(b'{"from":"server"}'), jtext({"from": "j", "s": "é"}),
                                                   jtext({"from": "p", "list": [1, None]})]
    assert [e["state"] for e in script.of("state")] == ["connected", "connected"]
    assert all(e["code"] == 0 for e in script.of("disconnected"))  # only the final disconnect()s


# -- the binary namespace ----------------------------------------------------------------------


async def test_protobuf_clients_exchange_raw_bytes_in_binary_namespace(start_server, js, frames):
    running = await start_server()
    # Any bytes: not UTF-8, JSON text (kept as it is), all 256 values, none at all.
    payloads = [[0, 255, 1], list(b"\x80not utf-8 \xc3"), list(b'{"json":"too"}'), list(range(256)), []]
    script = await js("fanout.mjs", url=running.url, channel="bin:raw", protobuf=True, clients=[
        {"who": "a", "token": token("ann"), "protobuf": True},
        {"who": "b", "token": token("ben"), "protobuf": True},
    ], steps=[{"who": "a", "data": {"$bytes": p}} for p in payloads], expect=len(payloads), historyBy="b")
    await script.wait_for("ready")
    await script.send(cmd="go")
    await script.finish()

    ids = {e["who"]: e["client"] for e in script.of("connected")}
    assert_spoke(frames, {ids["a"]: "protobuf", ids["b"]: "protobuf"})
    assert [e["ok"] for e in script.of("publish_result")] == [True] * len(payloads)
    ann = {"user": "ann", "client": ids["a"]}
    received = {e["who"]: e["pubs"] for e in script.of("received")}
    for who in ("a", "b"):
        assert [(p["bytes"], p["offset"], p["info"]) for p in received[who]] == [
            (p, n, ann) for n, p in enumerate(payloads, 1)], who
    assert received["b"][0]["data"] == {"$bytes": [0, 255, 1]}
    assert received["b"][2]["data"] == {"json": "too"}
    # History gives the same bytes back; the server stored them as they came.
    hist = only(script.of("history"))
    assert [(p["bytes"], p["offset"]) for p in hist["publications"]] == [(p, n) for n, p in enumerate(payloads, 1)]
    stored = await running.node.broker.history("bin:raw", HistoryOptions(limit=-1))
    assert [p.data for p in stored.publications] == [bytes(p) for p in payloads]


# -- client send() -> on_message ------------------------------------------------------------------


async def test_protobuf_send_reaches_on_message(start_server, js, frames):
    app = livegate.App()
    messages: list[tuple[str, str, str, Any]] = []

    @app.on_message
    async def on_message(ctx, data):  # noqa: ANN001, ANN202
        messages.append((ctx.client_id, ctx.user, ctx.name, data))

    @app.rpc("sync")
    async def sync(ctx, data):  # noqa: ANN001, ANN202
        return {"seen": len(messages)}

    running = await start_server(app=app)
    sent = [{"hello": 1}, {"$bytes": [0, 255, 1]}, "text", [1, None, {"k": "é"}]]
    script = await js("send.mjs", url=running.url, token=token("hugo"), protobuf=True, messages=sent,
                      syncMethod="sync")
    await script.finish()

    client_id = only(script.of("connected"))["client"]
    assert_spoke(frames, {client_id: "protobuf"})
    # All handled, in order, before the RPC sent after them.
    assert only(script.of("sync"))["data"] == {"seen": len(sent)}
    assert messages == [(client_id, "hugo", "js", {"hello": 1}), (client_id, "hugo", "js", b"\x00\xff\x01"),
                        (client_id, "hugo", "js", "text"), (client_id, "hugo", "js", [1, None, {"k": "é"}])]
    assert only(script.of("state"))["state"] == "connected"
    assert [e["code"] for e in script.of("connecting")] == [0]
    assert [e["code"] for e in script.of("disconnected")] == [0]
