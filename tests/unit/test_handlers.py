"""Client command handlers, driven through Session.handle_frame with a recording transport.

No sockets: a Node from build_node() on the memory engine, and sessions whose Transport
records what would go on the wire (the JSON codec, framing left out).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import orjson
import pytest
from conftest import BASE_CONFIG, SECRET, dur, make_config, scaled, token, wait_until

from livegate.app import App
from livegate.channels.memory import MemoryEngine
from livegate.errors import BrokerError, ClientError, DisconnectRequested
from livegate.handlers import HANDLERS
from livegate.node import Node, build_node
from livegate.protocol.codec import Wire
from livegate.protocol.codes import Disconnect
from livegate.protocol.json_codec import JSON
from livegate.session import Session, State

#: JSON with no framing: what the session emits is what the transport records.
TEST_WIRE = Wire("test/json", JSON, lambda payload: payload)


class RecordingTransport:
    """A Transport that records what would go on the wire, and the close."""

    wire = TEST_WIRE
    remote = "test"
    session_token = ""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.disconnect: Disconnect | None = None
        self.inbox: list[dict[str, Any]] = []  # decoded messages not taken yet
        self.buffered_bytes = 0

    def write(self, frame: bytes) -> bool:
        assert self.disconnect is None, "wrote after close"
        self.payloads.append(frame)
        for line in frame.split(b"\n"):
            assert line.strip(), "blank line in a frame"
            self.inbox.append(orjson.loads(line))
        return True

    def is_open(self) -> bool:
        return self.disconnect is None

    def buffered(self) -> int:
        return self.buffered_bytes

    def close(self, code: int, reason: str) -> None:
        assert self.disconnect is None, "closed twice"
        self.disconnect = Disconnect(code, reason)


class Recorder(Session):
    """A Session on a RecordingTransport, with helpers to drive it."""

    def __init__(self, node: Node) -> None:
        super().__init__(node, RecordingTransport(), HANDLERS)
        self.recorded: RecordingTransport = self.transport  # type: ignore[assignment]
        self._next_id = 0

    @property
    def payloads(self) -> list[bytes]:
        return self.recorded.payloads

    @property
    def disconnect(self) -> Disconnect | None:
        return self.recorded.disconnect

    @property
    def inbox(self) -> list[dict[str, Any]]:
        return self.recorded.inbox

    @inbox.setter
    def inbox(self, value: list[dict[str, Any]]) -> None:
        self.recorded.inbox = value

    # -- driving -------------------------------------------------------------------------

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def take(self) -> list[dict[str, Any]]:
        out, self.inbox = self.inbox, []
        return out

    def pushes(self, kind: str | None = None, channel: str | None = None) -> list[dict[str, Any]]:
        """Take the pushes (of a kind / channel) out of the inbox, in order."""
        out, keep = [], []
        for msg in self.inbox:
            push = msg.get("push")
            if push is not None and (kind is None or kind in push) and (channel is None or push.get("channel") == channel):
                out.append(push)
            else:
                keep.append(msg)
        self.inbox = keep
        return out

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.handle_frame("\n".join(orjson.dumps(c).decode() for c in commands))

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command; return its reply (``{}`` when none came). Other messages stay in the inbox."""
        cid = self.next_id()
        await self.send({"id": cid, method: params or {}})
        for i, msg in enumerate(self.inbox):
            if msg.get("id") == cid:
                del self.inbox[i]
                return msg
        return {}

    async def result(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.call(method, params)
        assert "error" not in reply, reply
        assert self.disconnect is None, self.disconnect
        return reply[method]

    async def error(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.call(method, params)
        assert "error" in reply, reply
        assert self.disconnect is None, self.disconnect
        return reply["error"]

    async def closed_by(self, method: str, params: dict[str, Any] | None = None) -> int:
        reply = await self.call(method, params)
        assert reply == {}, reply
        assert self.disconnect is not None, "expected a close"
        return self.disconnect.code

    async def connect(self, user: str | None = "alice", **params: Any) -> dict[str, Any]:
        if user is not None and "token" not in params:
            params["token"] = token(user)
        return await self.result("connect", params)


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node() -> AsyncIterator[NodeFactory]:
    nodes: list[Node] = []

    async def make(override: dict[str, Any] | None = None, app: App | None = None, *, batch: bool = False) -> Node:
        # Handler tests read what a command wrote right after it: fan out inside publish.
        # (Batched fan-out is covered by the conformance suite and the integration tests.)
        node = build_node(make_config(override), app, engine_factory=lambda c, events: MemoryEngine(events, batch=batch))
        await node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.close()


@pytest.fixture
async def node(make_node: NodeFactory) -> Node:
    return await make_node()


@pytest.fixture
def new_client(node: Node) -> Callable[[], Recorder]:
    return lambda: Recorder(node)


async def connected(node: Node, user: str | None = "alice", **params: Any) -> Recorder:
    client = Recorder(node)
    await client.connect(user, **params)
    client.take()
    return client


def namespaces(*extra: dict[str, Any]) -> dict[str, Any]:
    """A config override adding namespaces to the base ones."""
    return {"channel": {"namespaces": copy.deepcopy(BASE_CONFIG["channel"]["namespaces"]) + list(extra)}}


def sub_token(user: str, channel: str, *, ttl: float | None = 3600, **claims: Any) -> str:
    return token(user, ttl=ttl, channel=channel, **claims)


# == connect ==============================================================================


async def test_connect_with_token(node, new_client):
    client = new_client()
    reply = await client.call("connect", {"token": token("alice", ttl=600), "name": "js", "version": "1.2"})
    res = reply["connect"]
    assert reply["id"] == 1
    assert res["client"] == client.client_id and res["client"]
    assert res["version"] == node.version
    assert res["ping"] == 25 and res["pong"] is True
    assert res["expires"] is True and 595 <= res["ttl"] <= 600
    assert set(res) == {"client", "version", "ping", "pong", "expires", "ttl"}
    assert client.state is State.CONNECTED
    assert client.user == "alice" and client.name == "js" and client.version == "1.2"
    assert node.hub.connection(client.client_id) is client
    assert client.disconnect is None


async def test_connect_echoes_large_ids(new_client):
    client = new_client()
    await client.send({"id": 4000000000, "connect": {"token": token("alice")}})
    assert client.take()[0]["id"] == 4000000000


async def test_connect_token_without_exp_never_expires(new_client):
    client = new_client()
    res = await client.result("connect", {"token": token("alice", ttl=None)})
    assert "expires" not in res and "ttl" not in res
    assert client.expire_at == 0


async def test_connect_info_claim_becomes_conn_info(node):
    client = await connected(node, token=token("alice", info={"name": "Alice"}))
    assert client.conn_info == b'{"name":"Alice"}'
    assert client.context().info == {"name": "Alice"}


async def test_anonymous_connect_denied_by_default(new_client):
    client = new_client()
    assert await client.closed_by("connect", {}) == 3501
    assert client.state is State.CONNECTING


async def test_anonymous_connect_allowed(make_node):
    node = await make_node({"client": {"allow_anonymous_connect_without_token": True}})
    client = Recorder(node)
    res = await client.result("connect", {"name": "py"})
    assert client.user == "" and client.state is State.CONNECTED
    assert "expires" not in res


async def test_insecure_allows_anonymous(make_node):
    node = await make_node({"client": {"insecure": True}})
    client = Recorder(node)
    await client.result("connect", {})
    assert client.state is State.CONNECTED


async def test_expired_connection_token_is_error_109(new_client):
    client = new_client()
    err = await client.error("connect", {"token": token("alice", exp=int(time.time()) - 5)})
    assert err == {"code": 109, "message": "token expired"}
    assert client.state is State.CONNECTING


async def test_failed_connect_skips_rest_of_frame(new_client):
    client = new_client()
    await client.send({"id": 1, "connect": {"token": token("alice", exp=int(time.time()) - 5)}},
                      {"id": 2, "subscribe": {"channel": "chat:1"}})
    msgs = client.take()
    assert [m["id"] for m in msgs] == [1]
    assert msgs[0]["error"]["code"] == 109
    assert client.subs == {} and client.disconnect is None


@pytest.mark.parametrize("bad", [
    "not-a-jwt",
    jwt.encode({"sub": "alice"}, "wrong-secret-0123456789abcdef0123456789", algorithm="HS256"),
    jwt.encode({"sub": "alice"}, None, algorithm="none"),
    token("alice", channel="chat:1"),
])
async def test_invalid_connection_token_closes_3500(new_client, bad):
    client = new_client()
    assert await client.closed_by("connect", {"token": bad}) == 3500
    assert client.state is State.CONNECTING


async def test_expire_at_in_past_is_error_110(new_client):
    client = new_client()
    err = await client.error("connect", {"token": token("alice", expire_at=int(time.time()) - 1)})
    assert err["code"] == 110
    assert client.state is State.CONNECTING


async def test_expire_at_overrides_exp(new_client):
    client = new_client()
    res = await client.result("connect", {"token": token("alice", ttl=60, expire_at=int(time.time()) + 7200)})
    assert res["expires"] is True and 7190 <= res["ttl"] <= 7200
    client2 = Recorder(client.node)
    res2 = await client2.result("connect", {"token": token("bob", ttl=60, expire_at=0)})
    assert "expires" not in res2 and client2.expire_at == 0


async def test_connect_hook_data_info_channels(make_node):
    app = App()
    seen: list[Any] = []

    @app.on_connect
    async def on_connect(ctx, data):
        seen.append((ctx.user, ctx.client_id, ctx.name, data))
        return {"data": {"welcome": ctx.user}, "info": {"role": "admin"}, "channels": ["news"]}

    node = await make_node(app=app)
    client = Recorder(node)
    res = await client.result("connect", {"token": token("alice"), "data": {"hello": 1}, "name": "js"})
    assert seen == [("alice", client.client_id, "js", {"hello": 1})]
    assert res["data"] == {"welcome": "alice"}
    assert client.conn_info == b'{"role":"admin"}'
    assert res["subs"] == {"news": {}}
    assert client.subs["news"].server_side and client.subs["news"].live
    # The server-side subscription delivers publications.
    await node.publish("news", b'{"n":1}')
    assert client.pushes("pub") == [{"channel": "news", "pub": {"data": {"n": 1}}}]


async def test_connect_hook_rejects_with_client_error(make_node):
    app = App()

    @app.on_connect
    async def on_connect(ctx, data):
        raise ClientError(4001, "banned")

    node = await make_node(app=app)
    client = Recorder(node)
    err = await client.error("connect", {"token": token("mallory")})
    assert err == {"code": 4001, "message": "banned"}
    assert client.state is State.CONNECTING
    assert node.hub.connection(client.client_id) is None


async def test_connect_hook_disconnects(make_node):
    app = App()

    @app.on_connect
    async def on_connect(ctx, data):
        raise DisconnectRequested(4501, "go away")

    client = Recorder(await make_node(app=app))
    assert await client.closed_by("connect", {"token": token("x")}) == 4501
    assert client.disconnect.reason == "go away"


async def test_connect_hook_crash_is_internal_error(make_node):
    app = App()

    @app.on_connect
    async def on_connect(ctx, data):
        raise RuntimeError("bug")

    client = Recorder(await make_node(app=app))
    err = await client.error("connect", {"token": token("x")})
    assert err == {"code": 100, "message": "internal server error", "temporary": True}


async def test_token_channels_are_server_side_subscriptions(node, new_client):
    await node.publish("chat:srv", b'{"old":1}')
    client = new_client()
    res = await client.result("connect", {"token": token("alice", channels=["chat:srv", "news"])})
    assert set(res["subs"]) == {"chat:srv", "news"}
    chat = res["subs"]["chat:srv"]
    assert chat["recoverable"] is True and chat["positioned"] is True and chat["offset"] == 1 and chat["epoch"]
    assert res["subs"]["news"] == {}
    assert all(client.subs[c].server_side for c in ("chat:srv", "news"))


async def test_token_subs_recover_on_connect(node, new_client):
    first = (await node.publish("chat:r", b"1")).position
    await node.publish("chat:r", b"2")
    client = new_client()
    res = await client.result("connect", {
        "token": token("alice", channels=["chat:r"]),
        "subs": {"chat:r": {"recover": True, "offset": first.offset, "epoch": first.epoch}}})
    sub = res["subs"]["chat:r"]
    assert sub["recovered"] is True and sub["offset"] == 1
    assert sub["publications"] == [{"data": 2, "offset": 2}]


async def test_connect_failing_in_a_server_side_subscribe_leaves_nothing_behind(node, monkeypatch):
    """A connect answered with an error must not leave a half-connected client: not CONNECTED,
    not in the hub, no subscription left pending (it would buffer every publication)."""
    async def broken_history(channel, opts):
        raise BrokerError("engine down")

    monkeypatch.setattr(node.broker, "history", broken_history)
    client = Recorder(node)
    # "news" (no history) subscribes fine first; "chat:x" (positioned) then fails.
    err = await client.error("connect", {"token": token("alice", channels=["news", "chat:x"])})
    assert err == {"code": 100, "message": "internal server error", "temporary": True}
    assert client.state is State.CONNECTING
    assert node.hub.connection(client.client_id) is None
    assert client.subs == {}
    assert node.hub.subscribe("news", Recorder(node)) is True  # no subscriber, live or pending, is left


async def test_token_channel_in_unknown_namespace_is_102(new_client):
    client = new_client()
    err = await client.error("connect", {"token": token("alice", channels=["nope:1"])})
    assert err["code"] == 102
    assert client.state is State.CONNECTING


# == state machine ========================================================================


@pytest.mark.parametrize(("method", "params"), [
    ("subscribe", {"channel": "chat:1"}), ("publish", {"channel": "news", "data": 1}),
    ("rpc", {"method": "x"}), ("history", {"channel": "feed:1"}), ("refresh", {"token": "x"}),
    ("presence", {"channel": "chat:1"}), ("ping", {}),
])
async def test_command_before_connect_closes_3501(new_client, method, params):
    client = new_client()
    assert await client.closed_by(method, params) == 3501


async def test_send_before_connect_closes_3501(new_client):
    client = new_client()
    await client.handle_frame('{"send":{"data":1}}')
    assert client.disconnect.code == 3501


async def test_second_connect_closes_3501(node):
    client = await connected(node)
    assert await client.closed_by("connect", {"token": token("alice")}) == 3501


async def test_pong_is_accepted_anytime(node, new_client):
    client = new_client()
    await client.handle_frame("{}")
    assert client.disconnect is None and client.take() == []
    await client.connect()
    client.pong_deadline = 123.0
    await client.handle_frame("{}")
    assert client.pong_deadline == 0.0 and client.disconnect is None


async def test_ping_command_answered(node):
    client = await connected(node)
    assert await client.call("ping", {}) == {"id": 2, "ping": {}}


@pytest.mark.parametrize("frame", ["not json", "[]", '{"id":1}', '{"connect":{}}', "\n", '{"id":-1,"connect":{}}'])
async def test_bad_frame_closes_3501(new_client, frame):
    client = new_client()
    await client.handle_frame(frame)
    assert client.disconnect.code == 3501
    assert client.payloads == []


@pytest.mark.parametrize(("method", "params"), [
    ("subscribe", {"channel": 5}),
    ("subscribe", {"channel": "chat:1", "offset": "3"}),
    ("subscribe", {"channel": "chat:1", "recover": "yes"}),
    ("subscribe", {"channel": "chat:1", "offset": -1}),
    ("publish", {"channel": ["news"], "data": 1}),
    ("history", {"channel": "feed:1", "limit": "5"}),
    ("history", {"channel": "feed:1", "since": {"offset": 1.5}}),
    ("history", {"channel": "feed:1", "since": 3}),
    ("rpc", {"method": 42}),
    ("refresh", {"token": 1}),
    ("unsubscribe", {"channel": None}),
])
async def test_malformed_fields_close_3501(node, method, params):
    client = await connected(node)
    assert await client.closed_by(method, params) == 3501


async def test_malformed_connect_closes_3501(new_client):
    client = new_client()
    assert await client.closed_by("connect", {"token": 123}) == 3501


async def test_unknown_fields_are_ignored(node):
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "news", "future_field": {"x": 1}, "flag": 1})
    assert res == {}


async def test_several_commands_in_one_frame_answered_in_order_in_one_write(new_client):
    client = new_client()
    await client.send(
        {"id": 1, "connect": {"token": token("alice")}},
        {"id": 2, "subscribe": {"channel": "news"}},
        {"id": 3, "subscribe": {"channel": "locked:x"}},
        {"id": 4, "publish": {"channel": "news", "data": {"n": 1}}},
        {"id": 5, "unsubscribe": {"channel": "news"}},
    )
    assert len(client.payloads) == 1
    msgs = [orjson.loads(line) for line in client.payloads[0].split(b"\n")]
    replies = [m for m in msgs if "id" in m]
    assert [m["id"] for m in replies] == [1, 2, 3, 4, 5]
    assert "connect" in replies[0] and replies[1] == {"id": 2, "subscribe": {}}
    assert replies[2]["error"]["code"] == 103
    assert replies[3] == {"id": 4, "publish": {}} and replies[4] == {"id": 5, "unsubscribe": {}}
    assert [m["push"] for m in msgs if "push" in m] == [{"channel": "news", "pub": {"data": {"n": 1}, "info": {
        "user": "alice", "client": client.client_id}}}]


async def test_closing_mid_frame_flushes_earlier_replies_and_skips_the_rest(new_client):
    client = new_client()
    await client.send(
        {"id": 1, "connect": {"token": token("alice")}},
        {"id": 2, "subscribe": {"channel": "news"}},
        {"id": 3, "connect": {"token": token("alice")}},
        {"id": 4, "subscribe": {"channel": "chat:1"}},
    )
    assert [m["id"] for m in client.take()] == [1, 2]
    assert client.disconnect.code == 3501
    assert "chat:1" not in client.subs


async def test_frames_after_close_are_ignored(node):
    client = await connected(node)
    before = len(client.payloads)
    await client.handle_frame("garbage")
    assert client.disconnect.code == 3501
    await client.handle_frame('{"id":9,"ping":{}}')
    assert len(client.payloads) == before


# == subscribe ============================================================================


async def test_subscribe_plain_channel(node):
    client = await connected(node)
    assert await client.call("subscribe", {"channel": "news"}) == {"id": 2, "subscribe": {}}
    assert client.subs["news"].live
    assert node.hub.num_subscribers("news") == 1


async def test_subscribe_unknown_namespace_102(node):
    client = await connected(node)
    assert await client.error("subscribe", {"channel": "nope:1"}) == {"code": 102, "message": "unknown channel"}


@pytest.mark.parametrize("channel", ["chat:has space", "chat:ünicode", "chat:tab\there", "x" * 256])
async def test_subscribe_bad_name_107(node, channel):
    client = await connected(node)
    assert (await client.error("subscribe", {"channel": channel}))["code"] == 107


async def test_unknown_namespace_checked_before_name(node):
    client = await connected(node)
    assert (await client.error("subscribe", {"channel": "nope:bad name"}))["code"] == 102


async def test_channel_regex(make_node):
    node = await make_node(namespaces({"name": "rx", "channel_regex": "^[a-z]+$", "allow_subscribe_for_client": True}))
    client = await connected(node)
    assert await client.result("subscribe", {"channel": "rx:abc"}) == {}
    assert (await client.error("subscribe", {"channel": "rx:ABC"}))["code"] == 107


async def test_empty_channel_closes_3501(node):
    client = await connected(node)
    assert await client.closed_by("subscribe", {"channel": ""}) == 3501


async def test_map_subscribe_to_a_stream_channel_is_107_and_shared_poll_108(node):
    client = await connected(node)
    assert (await client.error("subscribe", {"channel": "news", "type": 1, "phase": 2}))["code"] == 107
    assert (await client.error("subscribe", {"channel": "news", "type": 2}))["code"] == 107
    assert (await client.error("subscribe", {"channel": "news", "type": 4}))["code"] == 108


MAPS = {"name": "mp", "subscription_type": "map", "allow_subscribe_for_client": True,
        "map": {"mode": "persistent", "allow_publish_for_subscriber": True, "allow_remove_for_client": True}}


async def test_map_subscribe_state_goes_live_and_publish_type_1_writes(make_node):
    node = await make_node(namespaces(MAPS))
    await node.map_publish("mp:1", "a", b"1")
    client = await connected(node)
    live = await client.result("subscribe", {"channel": "mp:1", "type": 1, "phase": 2})
    assert live["type"] == 1 and "phase" not in live and [e["key"] for e in live["state"]] == ["a"]
    assert await client.result("publish", {"channel": "mp:1", "type": 1, "key": "b", "data": 2}) == {}
    assert await client.result("publish", {"channel": "mp:1", "type": 1, "key": "a", "removed": True}) == {}
    state = await node.broker.map_state("mp:1", node.map_settings(node.rules.resolve("mp:1")))
    assert [(e.key, e.data) for e in state.entries] == [("b", b"2")]


async def test_map_publish_needs_the_map_permissions(make_node):
    node = await make_node(namespaces(MAPS))
    client = await connected(node)
    # not subscribed: allow_publish_for_subscriber does not apply
    assert (await client.error("publish", {"channel": "mp:2", "type": 1, "key": "k", "data": 1}))["code"] == 103
    assert (await client.error("publish", {"channel": "mp:2", "data": 1}))["code"] == 107  # type 0 into a map


async def test_map_continuation_needs_its_flow_and_unsubscribe_ends_it(make_node):
    node = await make_node(namespaces({**MAPS, "map": {**MAPS["map"], "min_page_size": 1}}))
    for key in "abc":
        await node.map_publish("mp:3", key, b"0")
    client = await connected(node)
    assert (await client.error("subscribe", {"channel": "mp:3", "type": 1, "phase": 2, "cursor": "a"}))["code"] == 103
    first = await client.result("subscribe", {"channel": "mp:3", "type": 1, "phase": 2, "limit": 1})
    assert first["phase"] == 2 and first["cursor"]
    await client.result("unsubscribe", {"channel": "mp:3"})
    again = {"channel": "mp:3", "type": 1, "phase": 2, "limit": 1, "cursor": first["cursor"]}
    assert (await client.error("subscribe", again))["code"] == 103


async def test_already_subscribed_105(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "news"})
    assert await client.error("subscribe", {"channel": "news"}) == {"code": 105, "message": "already subscribed"}


async def test_channel_limit_106(make_node):
    node = await make_node({"client": {"channel_limit": 2}})
    client = await connected(node)
    await client.result("subscribe", {"channel": "a"})
    await client.result("subscribe", {"channel": "b"})
    assert (await client.error("subscribe", {"channel": "c"}))["code"] == 106
    # Order: duplicate (105) before limit, limit (106) before the private check (103).
    assert (await client.error("subscribe", {"channel": "a"}))["code"] == 105
    assert (await client.error("subscribe", {"channel": "$secret"}))["code"] == 106
    await client.result("unsubscribe", {"channel": "a"})
    assert await client.result("subscribe", {"channel": "c"}) == {}


async def test_private_channel_without_token_103(node):
    client = await connected(node)
    # Channels without namespace allow subscribe for clients, but "$" needs a token.
    assert (await client.error("subscribe", {"channel": "$vip"}))["code"] == 103
    assert (await client.error("subscribe", {"channel": "$chat:vip"}))["code"] == 103


async def test_private_channel_needs_token_even_when_insecure(make_node):
    node = await make_node({"client": {"insecure": True}})
    client = await connected(node)
    assert (await client.error("subscribe", {"channel": "$vip"}))["code"] == 103


async def test_subscription_token_grants_private_channel(node):
    client = await connected(node)
    tok = sub_token("alice", "$locked:vip", ttl=120, info={"badge": "gold"}, data={"motd": "hi"})
    res = await client.result("subscribe", {"channel": "$locked:vip", "token": tok})
    assert res["data"] == {"motd": "hi"}
    assert res["expires"] is True and 115 <= res["ttl"] <= 120
    sub = client.subs["$locked:vip"]
    assert sub.info.chan_info == b'{"badge":"gold"}' and sub.expire_at > time.time()


async def test_subscription_token_grants_regardless_of_namespace_rules(node):
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "locked:x", "token": sub_token("alice", "locked:x", ttl=None)})
    assert res == {}


async def test_subscription_token_for_own_client_id(node):
    client = await connected(node)
    tok = sub_token("alice", "$vip", ttl=None, client=client.client_id)
    assert await client.result("subscribe", {"channel": "$vip", "token": tok}) == {}


async def test_subscription_token_expired_109(node):
    client = await connected(node)
    tok = sub_token("alice", "$vip", exp=int(time.time()) - 1)
    assert (await client.error("subscribe", {"channel": "$vip", "token": tok}))["code"] == 109
    assert "$vip" not in client.subs


async def test_subscription_token_expire_at_in_past_109(node):
    client = await connected(node)
    tok = sub_token("alice", "$vip", expire_at=int(time.time()) - 1)
    assert (await client.error("subscribe", {"channel": "$vip", "token": tok}))["code"] == 109


async def test_subscription_token_bad_signature_103(node):
    client = await connected(node)
    tok = jwt.encode({"sub": "alice", "channel": "$vip"}, "other-secret-0123456789abcdef012345", algorithm="HS256")
    assert (await client.error("subscribe", {"channel": "$vip", "token": tok}))["code"] == 103


@pytest.mark.parametrize("claims", [
    {"user": "alice", "channel": "$other"},
    {"user": "bob", "channel": "$vip"},
    {"user": "alice", "channel": "$vip", "client": "someone-else"},
])
async def test_subscription_token_mismatch_closes_3500(node, claims):
    client = await connected(node)
    tok = sub_token(claims["user"], claims["channel"], **({"client": claims["client"]} if "client" in claims else {}))
    assert await client.closed_by("subscribe", {"channel": "$vip", "token": tok}) == 3500
    assert "$vip" not in client.subs


async def test_user_limited_channels(node):
    alice = await connected(node, "alice")
    carol = await connected(node, "carol")
    assert await alice.result("subscribe", {"channel": "dm:room#alice,bob"}) == {}
    assert (await carol.error("subscribe", {"channel": "dm:room#alice,bob"}))["code"] == 103
    # "dm" grants nothing else: a channel without the boundary follows the (empty) namespace rules.
    assert (await alice.error("subscribe", {"channel": "dm:room"}))["code"] == 103


async def test_user_limited_channel_never_for_anonymous(make_node):
    node = await make_node({"client": {"allow_anonymous_connect_without_token": True}})
    anon = Recorder(node)
    await anon.result("connect", {})
    assert (await anon.error("subscribe", {"channel": "dm:room#,alice"}))["code"] == 103


async def test_namespace_permissions(node):
    client = await connected(node)
    assert (await client.error("subscribe", {"channel": "locked:1"}))["code"] == 103
    assert await client.result("subscribe", {"channel": "feed:1"}) == {}


async def test_anonymous_needs_allow_subscribe_for_anonymous(make_node):
    node = await make_node({"client": {"allow_anonymous_connect_without_token": True},
                            **namespaces({"name": "public", "allow_subscribe_for_client": True,
                                          "allow_subscribe_for_anonymous": True})})
    anon = Recorder(node)
    await anon.result("connect", {})
    assert (await anon.error("subscribe", {"channel": "chat:1"}))["code"] == 103
    assert await anon.result("subscribe", {"channel": "public:1"}) == {}


async def test_insecure_grants_locked_namespace(make_node):
    node = await make_node({"client": {"insecure": True}})
    client = await connected(node)
    assert await client.result("subscribe", {"channel": "locked:1"}) == {}


async def test_subscribe_hook(make_node):
    app = App()

    @app.on_subscribe
    async def on_subscribe(ctx, channel, data):
        if channel == "locked:ok":
            return {"info": {"via": "hook"}, "data": {"d": data}}
        if channel == "locked:deny":
            raise ClientError(4003, "nope")
        return None

    node = await make_node(app=app)
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "locked:ok", "data": 7})
    assert res == {"data": {"d": 7}}
    assert client.subs["locked:ok"].info.chan_info == b'{"via":"hook"}'
    assert await client.error("subscribe", {"channel": "locked:deny"}) == {"code": 4003, "message": "nope"}
    assert (await client.error("subscribe", {"channel": "locked:other"}))["code"] == 103


async def test_positioned_and_recoverable_on_request(node):
    await node.publish("feed:1", b"1")
    await node.publish("feed:1", b"2")
    client = await connected(node)
    plain = await client.result("subscribe", {"channel": "feed:1"})
    assert plain == {}
    await client.result("unsubscribe", {"channel": "feed:1"})
    res = await client.result("subscribe", {"channel": "feed:1", "recoverable": True, "positioned": True})
    top = (await node.broker.history("feed:1", _hist())).position
    assert res == {"recoverable": True, "positioned": True, "epoch": top.epoch, "offset": 2}


async def test_empty_stream_position(node):
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "chat:empty"})
    assert res["offset"] == 0 and res["epoch"] and res["recoverable"] is True


def _hist(**kw: Any):
    from livegate.channels.broker import HistoryOptions

    return HistoryOptions(**kw)


async def test_recovery_success(node):
    positions = [(await node.publish("chat:r", orjson.dumps({"n": i}))).position for i in range(1, 6)]
    epoch = positions[0].epoch
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "chat:r", "recover": True, "recoverable": True,
                                            "offset": 2, "epoch": epoch, "flag": 3})
    assert res == {"recoverable": True, "positioned": True, "epoch": epoch, "offset": 2, "was_recovering": True,
                   "recovered": True, "publications": [{"data": {"n": 3}, "offset": 3}, {"data": {"n": 4}, "offset": 4},
                                                       {"data": {"n": 5}, "offset": 5}]}


async def test_recovery_nothing_missed(node):
    pos = (await node.publish("chat:r", b"1")).position
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "chat:r", "recover": True, "offset": 1, "epoch": pos.epoch})
    assert res["recovered"] is True and res["offset"] == 1 and "publications" not in res


async def test_recovery_with_empty_epoch_means_any(node):
    await node.publish("chat:r", b"1")
    await node.publish("chat:r", b"2")
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "chat:r", "recover": True, "offset": 0, "epoch": ""})
    assert res["recovered"] is True and res["offset"] == 0
    assert [p["offset"] for p in res["publications"]] == [1, 2]


async def test_recovery_failure_when_trimmed(make_node):
    node = await make_node(namespaces({"name": "tiny", "history_size": 3, "history_ttl": "1m", "force_recovery": True,
                                       "allow_subscribe_for_client": True}))
    epoch = ""
    for i in range(1, 7):
        epoch = (await node.publish("tiny:1", orjson.dumps(i))).position.epoch
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "tiny:1", "recover": True, "offset": 1, "epoch": epoch})
    assert res == {"recoverable": True, "positioned": True, "epoch": epoch, "offset": 6, "was_recovering": True}


async def test_recovery_failure_with_flag_bit_2_is_112(make_node):
    node = await make_node(namespaces({"name": "tiny", "history_size": 3, "history_ttl": "1m", "force_recovery": True,
                                       "allow_subscribe_for_client": True}))
    for i in range(6):
        await node.publish("tiny:1", orjson.dumps(i))
    client = await connected(node)
    err = await client.error("subscribe", {"channel": "tiny:1", "recover": True, "offset": 1, "flag": 2})
    assert err == {"code": 112, "message": "unrecoverable position"}
    assert "tiny:1" not in client.subs
    assert node.hub.num_subscribers("tiny:1") == 0
    # Not left pending either: a later publication reaches nobody and a new subscribe works.
    await node.publish("tiny:1", b"7")
    assert client.take() == []
    assert (await client.result("subscribe", {"channel": "tiny:1"}))["offset"] == 7


async def test_recovery_beyond_recovery_limit_fails(make_node):
    node = await make_node({"client": {"recovery_max_publication_limit": 2}})
    epoch = ""
    for i in range(5):
        epoch = (await node.publish("chat:r", orjson.dumps(i))).position.epoch
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "chat:r", "recover": True, "offset": 1, "epoch": epoch})
    assert "recovered" not in res and "publications" not in res and res["offset"] == 5
    client2 = await connected(node, "bob")
    res2 = await client2.result("subscribe", {"channel": "chat:r", "recover": True, "offset": 3, "epoch": epoch})
    assert res2["recovered"] is True and [p["offset"] for p in res2["publications"]] == [4, 5]


async def test_recovery_epoch_mismatch(node):
    pos = (await node.publish("chat:r", b"1")).position
    await node.publish("chat:r", b"2")
    client = await connected(node)
    res = await client.result("subscribe", {"channel": "chat:r", "recover": True, "offset": 1, "epoch": "not-" + pos.epoch})
    assert res == {"recoverable": True, "positioned": True, "epoch": pos.epoch, "offset": 2, "was_recovering": True}
    client2 = await connected(node, "bob")
    err = await client2.error("subscribe", {"channel": "chat:r", "recover": True, "offset": 1, "epoch": "_", "flag": 2})
    assert err["code"] == 112


async def test_recover_ignored_without_recovery(node):
    await node.publish("feed:1", b"1")
    client = await connected(node)
    # feed allows recovery only when asked with recoverable:true; without it `recover` is ignored.
    res = await client.result("subscribe", {"channel": "feed:1", "recover": True, "offset": 0, "positioned": True})
    assert "recovered" not in res and "publications" not in res and res["offset"] == 1


async def test_was_recovering_echoed_without_recovery(node):
    # protocol.md 5.3 step 1: recovery not enabled -> `recover` ignored, `was_recovering` still echoed.
    client = await connected(node)
    assert await client.result("subscribe", {"channel": "news", "recover": True, "offset": 3, "epoch": "e"}) == {
        "was_recovering": True}


async def test_subscribe_reply_precedes_publications_and_join(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "chat:1"})
    client.take()  # its own join
    other = await connected(node, "bob")
    await other.result("subscribe", {"channel": "chat:1"})
    await other.call("publish", {"channel": "chat:1", "data": {"m": 1}})
    msgs = client.take()
    assert [("join" if "join" in m["push"] else "pub") for m in msgs] == ["join", "pub"]
    assert msgs[0]["push"]["join"]["info"]["user"] == "bob"


async def test_own_join_after_own_subscribe_reply(node):
    client = await connected(node)
    await client.send({"id": 50, "subscribe": {"channel": "chat:1"}})
    msgs = client.take()
    assert msgs[0]["id"] == 50
    assert msgs[1] == {"push": {"channel": "chat:1", "join": {"info": {"user": "alice", "client": client.client_id}}}}


async def test_join_leave_only_to_subscribers_that_asked(make_node):
    node = await make_node(namespaces({"name": "jl", "presence": True, "join_leave": True,
                                       "allow_subscribe_for_client": True, "allow_presence_for_subscriber": True}))
    asked = await connected(node, "alice")
    silent = await connected(node, "bob")
    await asked.result("subscribe", {"channel": "jl:1", "join_leave": True})
    await silent.result("subscribe", {"channel": "jl:1"})
    carol = await connected(node, "carol")
    await carol.result("subscribe", {"channel": "jl:1"})
    await carol.result("unsubscribe", {"channel": "jl:1"})
    kinds = [("join" if "join" in p else "leave", (p.get("join") or p.get("leave"))["info"]["user"])
             for p in asked.pushes()]
    assert kinds == [("join", "alice"), ("join", "bob"), ("join", "carol"), ("leave", "carol")]
    assert silent.pushes() == []


async def test_publication_racing_the_subscribe_is_not_duplicated(node, monkeypatch):
    """A publication appended while the subscribe reads history is in the result, not pushed again;
    one appended after the read is pushed after the reply (protocol.md 5.3 step 5)."""
    first = (await node.publish("chat:race", b"1")).position
    real_history = node.broker.history

    async def history_with_races(channel, opts):
        await node.publish("chat:race", b"2")           # before the read: part of the recovered set
        result = await real_history(channel, opts)
        await node.publish("chat:race", b"3")           # after the read: must come as a push
        return result

    monkeypatch.setattr(node.broker, "history", history_with_races)
    client = await connected(node)
    await client.send({"id": 9, "subscribe": {"channel": "chat:race", "recover": True, "offset": first.offset,
                                              "epoch": first.epoch}})
    msgs = client.take()
    assert msgs[0]["id"] == 9
    assert msgs[0]["subscribe"]["recovered"] is True
    assert msgs[0]["subscribe"]["publications"] == [{"data": 2, "offset": 2}]
    pubs = [m["push"]["pub"] for m in msgs[1:] if "pub" in m.get("push", {})]
    assert pubs == [{"data": 3, "offset": 3}]


async def test_publication_without_history_racing_the_subscribe_is_delivered(node, monkeypatch):
    """Channels without history: a publication arriving while the subscribe is in flight
    is delivered after the reply."""
    real_subscribe = node.broker.subscribe

    async def subscribe_with_race(channel):
        await real_subscribe(channel)
        await node.publish("news", b'"early"')

    monkeypatch.setattr(node.broker, "subscribe", subscribe_with_race)
    client = await connected(node)
    await client.send({"id": 3, "subscribe": {"channel": "news"}})
    msgs = client.take()
    assert msgs == [{"id": 3, "subscribe": {}}, {"push": {"channel": "news", "pub": {"data": "early"}}}]


# == unsubscribe ==========================================================================


async def test_unsubscribe_always_succeeds(node):
    client = await connected(node)
    assert await client.call("unsubscribe", {"channel": "never-subscribed"}) == {"id": 2, "unsubscribe": {}}
    assert await client.call("unsubscribe", {"channel": "nope:unknown-namespace"}) == {"id": 3, "unsubscribe": {}}
    await client.result("subscribe", {"channel": "news"})
    assert await client.call("unsubscribe", {"channel": "news"}) == {"id": 5, "unsubscribe": {}}
    assert "news" not in client.subs and node.hub.num_subscribers("news") == 0
    await node.publish("news", b"1")
    assert client.take() == []


async def test_unsubscribe_empty_channel_closes_3501(node):
    client = await connected(node)
    assert await client.closed_by("unsubscribe", {}) == 3501


async def test_unsubscribe_sends_leave_and_removes_presence(node):
    alice = await connected(node, "alice")
    bob = await connected(node, "bob")
    await alice.result("subscribe", {"channel": "chat:1"})
    await bob.result("subscribe", {"channel": "chat:1"})
    alice.take()
    bob.take()
    assert set(await node.presence.presence("chat:1")) == {alice.client_id, bob.client_id}
    await bob.result("unsubscribe", {"channel": "chat:1"})
    assert alice.pushes("leave") == [{"channel": "chat:1", "leave": {"info": {"user": "bob", "client": bob.client_id}}}]
    assert bob.pushes() == []
    assert set(await node.presence.presence("chat:1")) == {alice.client_id}


async def test_release_client_cleans_up(node):
    alice = await connected(node, "alice")
    bob = await connected(node, "bob")
    await alice.result("subscribe", {"channel": "chat:1"})
    await bob.result("subscribe", {"channel": "chat:1"})
    alice.take()
    await bob.release()
    assert node.hub.connection(bob.client_id) is None
    assert node.hub.num_subscribers("chat:1") == 1
    assert set(await node.presence.presence("chat:1")) == {alice.client_id}
    assert [p["leave"]["info"]["user"] for p in alice.pushes("leave")] == ["bob"]


# == publish ==============================================================================


async def test_publish_and_receive_own_publication(node):
    client = await connected(node, token=token("alice", info={"n": "A"}))
    await client.result("subscribe", {"channel": "chat:1"})
    client.take()
    reply = await client.call("publish", {"channel": "chat:1", "data": {"text": "hi"}})
    assert reply == {"id": 3, "publish": {}}
    assert client.pushes("pub") == [{"channel": "chat:1", "pub": {
        "data": {"text": "hi"}, "offset": 1,
        "info": {"user": "alice", "client": client.client_id, "conn_info": {"n": "A"}}}}]


async def test_publish_carries_chan_info_of_the_publisher(node):
    client = await connected(node)
    tok = sub_token("alice", "chat:1", info={"seat": 3})
    await client.result("subscribe", {"channel": "chat:1", "token": tok})
    client.take()
    await client.result("publish", {"channel": "chat:1", "data": 1})
    assert client.pushes("pub")[0]["pub"]["info"]["chan_info"] == {"seat": 3}


async def test_publish_for_subscriber_only(node):
    client = await connected(node)
    assert await client.error("publish", {"channel": "chat:1", "data": 1}) == {"code": 103, "message": "permission denied"}
    await client.result("subscribe", {"channel": "chat:1"})
    assert await client.result("publish", {"channel": "chat:1", "data": 1}) == {}


async def test_publish_for_client(node):
    client = await connected(node)
    assert await client.result("publish", {"channel": "feed:1", "data": [1]}) == {}
    assert (await node.broker.history("feed:1", _hist(limit=-1))).publications[0].data == b"[1]"


async def test_publish_denied_in_locked_namespace(node):
    client = await connected(node)
    assert (await client.error("publish", {"channel": "locked:1", "data": 1}))["code"] == 103


async def test_publish_anonymous_needs_anonymous_permission(make_node):
    node = await make_node({"client": {"allow_anonymous_connect_without_token": True},
                            **namespaces({"name": "open", "allow_publish_for_client": True,
                                          "allow_publish_for_anonymous": True})})
    anon = Recorder(node)
    await anon.result("connect", {})
    assert (await anon.error("publish", {"channel": "news", "data": 1}))["code"] == 103
    assert await anon.result("publish", {"channel": "open:1", "data": 1}) == {}


@pytest.mark.parametrize("params", [{"channel": "news"}, {"channel": "news", "data": None}])
async def test_publish_empty_data_107(node, params):
    client = await connected(node)
    assert (await client.error("publish", params))["code"] == 107


async def test_publish_falsy_data_is_not_empty(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "news"})
    for data in (0, "", False, [], {}):
        assert await client.result("publish", {"channel": "news", "data": data}) == {}
    assert [p["pub"]["data"] for p in client.pushes("pub")] == [0, "", False, [], {}]


async def test_publish_unknown_namespace_102(node):
    client = await connected(node)
    assert (await client.error("publish", {"channel": "nope:1", "data": 1}))["code"] == 102


async def test_publish_hook_rewrites_and_grants(make_node):
    app = App()

    @app.on_publish
    async def on_publish(ctx, channel, data):
        return {"data": {"wrapped": data, "by": ctx.user}}

    node = await make_node(app=app)
    client = await connected(node)
    await client.result("subscribe", {"channel": "locked:1", "token": sub_token("alice", "locked:1")})
    client.take()
    assert await client.result("publish", {"channel": "locked:1", "data": 5}) == {}
    assert client.pushes("pub")[0]["pub"]["data"] == {"wrapped": 5, "by": "alice"}


async def test_publication_data_stays_on_one_line(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "news"})
    client.take()
    await client.send({"id": 3, "publish": {"channel": "news", "data": {"text": "line1\nline2\r\n"}}})
    # One frame, two messages: each line of it decodes on its own (the Recorder decodes every line).
    assert len(client.payloads[-1].split(b"\n")) == 2
    assert client.pushes("pub")[0]["pub"]["data"] == {"text": "line1\nline2\r\n"}


async def test_raw_newlines_in_published_json_are_removed(node):
    # Data handed in as raw JSON bytes (server API, backends) may be pretty-printed.
    client = await connected(node)
    await client.result("subscribe", {"channel": "news"})
    await node.publish("news", b'{\r\n  "a": 1,\n  "s": "x\\ny"\n}')
    assert all(b"\n" not in p and b"\r" not in p for p in client.payloads)
    assert client.pushes("pub") == [{"channel": "news", "pub": {"data": {"a": 1, "s": "x\ny"}}}]


# == presence =============================================================================


async def test_presence_and_stats(node):
    a1 = await connected(node, "alice")
    a2 = await connected(node, "alice")
    b = await connected(node, token=token("bob", info={"x": 1}))
    for c in (a1, a2, b):
        await c.result("subscribe", {"channel": "chat:p"})
    pres = await b.result("presence", {"channel": "chat:p"})
    assert pres == {"presence": {
        a1.client_id: {"user": "alice", "client": a1.client_id},
        a2.client_id: {"user": "alice", "client": a2.client_id},
        b.client_id: {"user": "bob", "client": b.client_id, "conn_info": {"x": 1}},
    }}
    assert await b.result("presence_stats", {"channel": "chat:p"}) == {"num_clients": 3, "num_users": 2}


async def test_presence_empty_keys_always_present(make_node):
    node = await make_node(namespaces({"name": "pres", "presence": True, "allow_presence_for_client": True}))
    client = await connected(node)
    assert await client.result("presence", {"channel": "pres:1"}) == {"presence": {}}
    assert await client.result("presence_stats", {"channel": "pres:1"}) == {"num_clients": 0, "num_users": 0}


@pytest.mark.parametrize("method", ["presence", "presence_stats"])
async def test_presence_off_108(node, method):
    client = await connected(node)
    assert await client.error(method, {"channel": "feed:1"}) == {"code": 108, "message": "not available"}


@pytest.mark.parametrize("method", ["presence", "presence_stats"])
async def test_presence_no_access_103(node, method):
    client = await connected(node)
    assert (await client.error(method, {"channel": "chat:p"}))["code"] == 103


@pytest.mark.parametrize("method", ["presence", "presence_stats"])
async def test_presence_unknown_namespace_102(node, method):
    client = await connected(node)
    assert (await client.error(method, {"channel": "nope:p"}))["code"] == 102


async def test_presence_with_chan_info(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "chat:p", "token": sub_token("alice", "chat:p", info="vip")})
    pres = await client.result("presence", {"channel": "chat:p"})
    assert pres["presence"][client.client_id] == {"user": "alice", "client": client.client_id, "chan_info": "vip"}


# == history ==============================================================================


async def _feed(node: Node, n: int, channel: str = "feed:h") -> str:
    epoch = ""
    for i in range(1, n + 1):
        epoch = (await node.publish(channel, orjson.dumps({"i": i}))).position.epoch
    return epoch


def offsets(res: dict[str, Any]) -> list[int]:
    return [p["offset"] for p in res["publications"]]


async def test_history_limit_oldest_first(node):
    epoch = await _feed(node, 5)
    client = await connected(node)
    res = await client.result("history", {"channel": "feed:h", "limit": 2})
    assert res == {"publications": [{"data": {"i": 1}, "offset": 1}, {"data": {"i": 2}, "offset": 2}],
                   "epoch": epoch, "offset": 5}


async def test_history_without_limit_gives_position_only(node):
    epoch = await _feed(node, 3)
    client = await connected(node)
    assert await client.result("history", {"channel": "feed:h"}) == {"publications": [], "epoch": epoch, "offset": 3}


async def test_history_empty_channel_has_all_keys(node):
    client = await connected(node)
    res = await client.result("history", {"channel": "feed:none", "limit": 10})
    assert res["publications"] == [] and res["offset"] == 0 and isinstance(res["epoch"], str) and res["epoch"]


async def test_history_since(node):
    epoch = await _feed(node, 5)
    client = await connected(node)
    res = await client.result("history", {"channel": "feed:h", "limit": 10, "since": {"offset": 2, "epoch": epoch}})
    assert offsets(res) == [3, 4, 5]
    res = await client.result("history", {"channel": "feed:h", "limit": 2, "since": {"offset": 2}})
    assert offsets(res) == [3, 4]
    res = await client.result("history", {"channel": "feed:h", "limit": 10, "since": {"offset": 5, "epoch": ""}})
    assert offsets(res) == []


async def test_history_reverse(node):
    await _feed(node, 5)
    client = await connected(node)
    assert offsets(await client.result("history", {"channel": "feed:h", "limit": 2, "reverse": True})) == [5, 4]
    assert offsets(await client.result("history", {"channel": "feed:h", "limit": -1, "reverse": True})) == [5, 4, 3, 2, 1]


async def test_history_reverse_since(node):
    epoch = await _feed(node, 5)
    client = await connected(node)
    res = await client.result("history", {"channel": "feed:h", "limit": 10, "reverse": True,
                                          "since": {"offset": 4, "epoch": epoch}})
    assert offsets(res) == [3, 2, 1]
    res = await client.result("history", {"channel": "feed:h", "limit": 2, "reverse": True, "since": {"offset": 4}})
    assert offsets(res) == [3, 2]


async def test_history_reverse_with_since_offset_zero_107(node):
    await _feed(node, 2)
    client = await connected(node)
    err = await client.error("history", {"channel": "feed:h", "limit": 5, "reverse": True, "since": {"offset": 0}})
    assert err["code"] == 107


async def test_history_limit_capped(make_node):
    node = await make_node({"client": {"history_max_publication_limit": 3}})
    await _feed(node, 6)
    client = await connected(node)
    assert offsets(await client.result("history", {"channel": "feed:h", "limit": -1})) == [1, 2, 3]
    assert offsets(await client.result("history", {"channel": "feed:h", "limit": 1000})) == [1, 2, 3]
    assert offsets(await client.result("history", {"channel": "feed:h", "limit": 2})) == [1, 2]


async def test_history_keeps_only_history_size(node):
    await _feed(node, 12)  # feed: history_size 10
    client = await connected(node)
    res = await client.result("history", {"channel": "feed:h", "limit": -1})
    assert offsets(res) == list(range(3, 13)) and res["offset"] == 12


async def test_history_epoch_mismatch_112(node):
    epoch = await _feed(node, 2)
    client = await connected(node)
    err = await client.error("history", {"channel": "feed:h", "limit": 5, "since": {"offset": 1, "epoch": epoch + "x"}})
    assert err == {"code": 112, "message": "unrecoverable position"}


async def test_history_off_108(node):
    client = await connected(node)
    assert (await client.error("history", {"channel": "news", "limit": 1}))["code"] == 108


async def test_history_no_access_103_then_subscriber_ok(node):
    await _feed(node, 1, "chat:h")
    client = await connected(node)
    assert (await client.error("history", {"channel": "chat:h", "limit": 1}))["code"] == 103
    await client.result("subscribe", {"channel": "chat:h"})
    assert offsets(await client.result("history", {"channel": "chat:h", "limit": 1})) == [1]


async def test_history_publications_carry_info(node):
    client = await connected(node)
    await client.result("publish", {"channel": "feed:i", "data": "x"})
    res = await client.result("history", {"channel": "feed:i", "limit": 1})
    assert res["publications"] == [{"data": "x", "offset": 1, "info": {"user": "alice", "client": client.client_id}}]


# == rpc / send ===========================================================================


async def test_rpc(make_node):
    app = App()

    @app.rpc("echo")
    async def echo(ctx, data):
        return {"you": ctx.user, "sent": data}

    @app.rpc("nothing")
    async def nothing(ctx, data):
        return None

    @app.rpc("fail")
    async def fail(ctx, data):
        raise ClientError(1001, "custom failure")

    @app.rpc("crash")
    async def crash(ctx, data):
        raise RuntimeError("boom")

    @app.rpc("kick")
    async def kick(ctx, data):
        raise DisconnectRequested(4502, "kicked")

    client = await connected(await make_node(app=app))
    assert await client.call("rpc", {"method": "echo", "data": [1, "a"]}) == {
        "id": 2, "rpc": {"data": {"you": "alice", "sent": [1, "a"]}}}
    assert await client.result("rpc", {"method": "nothing"}) == {}
    assert await client.error("rpc", {"method": "missing"}) == {"code": 104, "message": "method not found"}
    assert await client.error("rpc", {"method": "fail"}) == {"code": 1001, "message": "custom failure"}
    assert await client.error("rpc", {"method": "crash"}) == {"code": 100, "message": "internal server error",
                                                              "temporary": True}
    assert await client.closed_by("rpc", {"method": "kick"}) == 4502


async def test_rpc_without_any_method_is_108_as_centrifugo(node):
    client = await connected(node)
    assert (await client.error("rpc", {"method": "anything"}))["code"] == 108


async def test_send_without_handler_closes_3508(node):
    client = await connected(node)
    await client.handle_frame('{"send":{"data":{"a":1}}}')
    assert client.disconnect.code == 3508


async def test_send_with_handler_has_no_reply(make_node):
    app = App()
    got: list[Any] = []

    @app.on_message
    async def on_message(ctx, data):
        got.append((ctx.user, data))

    client = await connected(await make_node(app=app))
    await client.handle_frame('{"send":{"data":{"a":1}}}\n{"id":2,"ping":{}}')
    assert got == [("alice", {"a": 1})]
    assert client.take() == [{"id": 2, "ping": {}}]


# == refresh / sub_refresh ================================================================


async def test_refresh_extends_expiry(node):
    client = await connected(node, token=token("alice", ttl=30))
    old = client.expire_at
    res = await client.result("refresh", {"token": token("alice", ttl=3600)})
    assert res["expires"] is True and 3590 <= res["ttl"] <= 3600
    assert client.expire_at > old + 3000
    assert set(res) == {"expires", "ttl"}


async def test_refresh_to_a_token_without_exp(node):
    client = await connected(node, token=token("alice", ttl=30))
    assert await client.result("refresh", {"token": token("alice", ttl=None)}) == {}
    assert client.expire_at == 0


async def test_refresh_expired_closes_3005(node):
    client = await connected(node, token=token("alice", ttl=30))
    assert await client.closed_by("refresh", {"token": token("alice", exp=int(time.time()) - 1)}) == 3005


async def test_refresh_expire_at_in_past_closes_3005(node):
    client = await connected(node, token=token("alice", ttl=30))
    assert await client.closed_by("refresh", {"token": token("alice", expire_at=int(time.time()) - 1)}) == 3005


async def test_refresh_other_user_closes_3500(node):
    client = await connected(node, token=token("alice", ttl=30))
    assert await client.closed_by("refresh", {"token": token("bob")}) == 3500


async def test_refresh_invalid_closes_3500(node):
    client = await connected(node)
    assert await client.closed_by("refresh", {"token": "garbage"}) == 3500


async def test_refresh_empty_token_closes_3501(node):
    client = await connected(node)
    assert await client.closed_by("refresh", {}) == 3501


async def test_sub_refresh(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "$vip", "token": sub_token("alice", "$vip", ttl=30)})
    res = await client.result("sub_refresh", {"channel": "$vip", "token": sub_token("alice", "$vip", ttl=900)})
    assert res["expires"] is True and 890 <= res["ttl"] <= 900
    assert client.subs["$vip"].expire_at > time.time() + 800


async def test_sub_refresh_not_subscribed_103(node):
    client = await connected(node)
    err = await client.error("sub_refresh", {"channel": "$vip", "token": sub_token("alice", "$vip")})
    assert err["code"] == 103


async def test_sub_refresh_empty_token_107(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "$vip", "token": sub_token("alice", "$vip")})
    assert (await client.error("sub_refresh", {"channel": "$vip"}))["code"] == 107


async def test_sub_refresh_expired_is_temporary_109(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "$vip", "token": sub_token("alice", "$vip", ttl=30)})
    err = await client.error("sub_refresh", {"channel": "$vip", "token": sub_token("alice", "$vip", exp=int(time.time()) - 1)})
    assert err == {"code": 109, "message": "token expired", "temporary": True}
    assert "$vip" in client.subs


@pytest.mark.parametrize(("user", "channel"), [("alice", "$other"), ("bob", "$vip")])
async def test_sub_refresh_mismatch_closes_3500(node, user, channel):
    client = await connected(node)
    await client.result("subscribe", {"channel": "$vip", "token": sub_token("alice", "$vip")})
    assert await client.closed_by("sub_refresh", {"channel": "$vip", "token": sub_token(user, channel)}) == 3500


async def test_sub_refresh_invalid_closes_3500(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "$vip", "token": sub_token("alice", "$vip")})
    assert await client.closed_by("sub_refresh", {"channel": "$vip", "token": "garbage"}) == 3500


# == output and timers ====================================================================


async def test_slow_consumer_is_closed_with_3008(make_node):
    node = await make_node({"client": {"queue_max_size": 1000}, "channel": {"max_publication_size": 900}})
    client = await connected(node)
    await client.result("subscribe", {"channel": "news"})
    before = len(client.payloads)
    big = "x" * 400
    await client.send(*({"id": 10 + i, "publish": {"channel": "news", "data": big}} for i in range(4)))
    assert client.disconnect is not None and client.disconnect.code == 3008
    # What was collected for the slow client is dropped, not flushed.
    assert len(client.payloads) == before


async def test_buffered_bytes_count_towards_the_queue_limit(make_node):
    node = await make_node({"client": {"queue_max_size": 1000}, "channel": {"max_publication_size": 900}})
    client = await connected(node)
    await client.result("subscribe", {"channel": "news"})
    client.recorded.buffered_bytes = 990
    await client.send({"id": 5, "publish": {"channel": "news", "data": "0123456789"}})
    assert client.disconnect is not None and client.disconnect.code == 3008


async def test_a_transport_already_closing_is_not_a_slow_consumer(make_node):
    node = await make_node({"client": {"queue_max_size": 1000}, "channel": {"max_publication_size": 900}})
    client = await connected(node)
    await client.result("subscribe", {"channel": "news"})
    client.recorded.is_open = lambda: False  # the peer is closing: the buffer drains no more
    client.recorded.buffered_bytes = 990
    await node.publish("news", b'"0123456789"')
    assert client.disconnect is None and client.closing is None
    assert node.metrics.disconnects == {}


async def test_dropped_frames_are_not_counted_as_sent(node):
    client = await connected(node)
    await client.result("subscribe", {"channel": "news"})
    sent = node.metrics.bytes_out
    client.recorded.write = lambda frame: False  # the transport dropped it
    await node.publish("news", b"1")
    assert node.metrics.bytes_out == sent


async def test_a_close_whose_flush_overflows_closes_once_as_slow(make_node):
    node = await make_node({"client": {"queue_max_size": 1000}, "channel": {"max_publication_size": 900}})
    client = await connected(node)
    client._collect = [b'"' + b"x" * 500 + b'"']  # replies collected while a frame is processed
    client._collect_size = 502
    client.recorded.buffered_bytes = 600
    client.close(Disconnect(3001, "shutdown"))
    assert client.disconnect == Disconnect(3008, "slow")  # RecordingTransport asserts a single close
    assert client.closing == Disconnect(3008, "slow")
    assert node.metrics.disconnects == {"3008": 1}


async def test_too_deep_data_gets_107_and_the_connection_stays(node):
    client = await connected(node)
    deep = "[" * 300 + "]" * 300
    await client.handle_frame('{"id":7,"rpc":{"method":"x","data":' + deep + '}}\n{"id":8,"ping":{}}')
    replies = client.take()
    assert replies[0]["id"] == 7 and replies[0]["error"]["code"] == 107
    assert replies[1] == {"id": 8, "ping": {}}
    assert client.disconnect is None


def test_tick_pings_and_closes(node):
    client = Recorder(node)
    client.created_at = 0.0
    client.tick(now_mono=11.0, now_wall=time.time())
    assert client.disconnect.code == 3502  # stale: no connect in time


async def test_tick_ping_then_no_pong(node):
    client = await connected(node)
    now = client.next_ping_at
    client.tick(now, time.time())
    assert client.take() == [{}]
    assert client.pong_deadline == now + 8.0
    client.tick(now + 8.5, time.time())
    assert client.disconnect.code == 3012


async def test_tick_expired_connection(node):
    client = await connected(node, token=token("alice", ttl=5))
    client.tick(client.created_at + 1, client.expire_at + 26)
    assert client.disconnect.code == 3005


async def test_connect_reply_ping_matches_config(make_node):
    node = await make_node({"client": {"ping_interval": "10s", "pong_timeout": "3s"}})
    client = Recorder(node)
    res = await client.connect()
    assert res["ping"] == 10
    assert client.created_at + 5 <= client.next_ping_at <= client.created_at + 10.5


async def test_token_for_cli_secret_roundtrip(node):
    # The shared test secret signs tokens the node accepts (guards the fixtures themselves).
    assert jwt.decode(token("z"), SECRET, algorithms=["HS256"])["sub"] == "z"


async def test_batched_fan_out_is_merged_into_a_subscribe_in_flight(make_node):
    """With batched fan-out (the default), publications still waiting for their batch when a
    subscribe reads history are neither lost nor pushed again after the reply."""
    node = await make_node(batch=True)
    client = await connected(node)
    first = (await node.publish("chat:batched", b"1")).position
    await asyncio.sleep(0)
    client.take()
    await node.publish("chat:batched", b"2")  # queued: its batch has not reached the hub yet
    await client.send({"id": 9, "subscribe": {"channel": "chat:batched", "recover": True,
                                              "offset": first.offset, "epoch": first.epoch}})
    await node.publish("chat:batched", b"3")  # after the subscribe: a push
    await node.publish("chat:batched", b'"marker"')  # anything pushed again would come before it
    await wait_until(lambda: any(m.get("push", {}).get("pub", {}).get("offset") == 4 for m in client.inbox),
                     what="the marker publication")
    msgs = client.take()
    assert msgs[0]["subscribe"]["publications"] == [{"data": 2, "offset": 2}]
    assert [m["push"]["pub"]["offset"] for m in msgs[1:] if "pub" in m.get("push", {})] == [3, 4]


async def test_subscribe_removed_while_in_flight_leaves_no_ghost(node, monkeypatch):
    """A server API unsubscribe that lands while the subscribe waits on the engine wins: the
    subscribe is answered with an error and nothing stays in the hub."""
    client = await connected(node)
    entered, gate = asyncio.Event(), asyncio.Event()
    real_history = node.broker.history

    async def slow_history(channel, opts):
        entered.set()
        await gate.wait()
        return await real_history(channel, opts)

    monkeypatch.setattr(node.broker, "history", slow_history)
    task = asyncio.create_task(client.send({"id": 5, "subscribe": {"channel": "chat:ghost"}}))
    await asyncio.wait_for(entered.wait(), scaled(2))  # the subscribe waits on the engine
    await node.cluster.send({"t": "unsubscribe", "user": client.user, "channel": "chat:ghost"})
    gate.set()
    await task
    reply = next(m for m in client.take() if m.get("id") == 5)
    assert reply["error"]["code"] == 103
    assert "chat:ghost" not in client.subs
    assert node.hub.num_subscribers("chat:ghost") == 0
    assert node.hub.unsubscribe("chat:ghost", client) is True  # nothing pending either


async def test_a_hung_rpc_handler_times_out_with_a_temporary_error(make_node):
    app = App()

    @app.rpc("slow")
    async def slow(ctx, data):
        await asyncio.sleep(scaled(5))

    node = await make_node({"client": {"hook_timeout": dur(0.1)}}, app)
    client = await connected(node)
    await client.send({"id": 7, "rpc": {"method": "slow", "data": {}}})
    (reply,) = [m for m in client.take() if m.get("id") == 7]
    assert reply["error"] == {"code": 100, "message": "internal server error: handler timed out", "temporary": True}
    await client.send({"id": 8, "rpc": {"method": "missing"}})
    assert [m for m in client.take() if m.get("id") == 8][0]["error"]["code"] == 104  # still serving


async def test_no_ping_before_the_connect_reply(make_node, monkeypatch):
    """A ping due while a connect's server-side subscriptions announce themselves is held
    until the connect reply is out: SDKs answer pings only once the reply said pong: true."""
    import time as time_module

    node = await make_node()
    client = Recorder(node)
    real_add = node.presence.add_presence

    async def add_presence_and_tick(channel, info, ttl):
        client.tick(time_module.monotonic() + 3600, time_module.time())  # the sweep fires meanwhile
        await real_add(channel, info, ttl)

    monkeypatch.setattr(node.presence, "add_presence", add_presence_and_tick)
    await client.send({"id": 1, "connect": {"token": token("alice", channels=["chat:ping"])}})
    msgs = client.take()
    assert "connect" in msgs[0] and {} not in msgs  # held back while the reply was not out
    client.tick(time_module.monotonic() + 3600, time_module.time())
    assert client.take() == [{}]  # the next tick pings
