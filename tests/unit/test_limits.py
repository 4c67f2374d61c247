"""Limits without sockets: the token bucket and the command budgets on an injected clock, the
connection admission of a node, the memory engine's per-user connection count, and sessions
refused with error 111 and closed with 3013 (driven through Session.handle_frame)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from conftest import FakeClock, make_config, token

from livegate.channels.memory import MemoryEngine, MemoryUserConnections
from livegate.config import RateLimit, parse_config
from livegate.errors import ConfigError
from livegate.handlers import HANDLERS
from livegate.limits import REFUSED, Bucket, CommandLimiter, LimitPolicy, NodeLimits, UserBudget
from livegate.metrics import NodeMetrics
from livegate.node import Node, build_node
from livegate.protocol.codec import Wire
from livegate.protocol.codes import Disconnect
from livegate.protocol.json_codec import JSON
from livegate.session import Session

# == the bucket ============================================================================


def test_a_bucket_gives_its_burst_at_once_then_refills_at_its_rate():
    bucket = Bucket(10, 5)  # 10 a second, 5 at most
    full_at, now = 0.0, 1000.0
    for _ in range(5):
        full_at = bucket.take(full_at, now)
        assert full_at != REFUSED
    assert bucket.take(full_at, now) == REFUSED
    assert bucket.tokens(full_at, now) == pytest.approx(0, abs=1e-6)
    # A tenth of a second brings one token back, not two.
    now += 0.1
    full_at = bucket.take(full_at, now)
    assert full_at != REFUSED
    assert bucket.take(full_at, now) == REFUSED
    # Idle long enough, it is full again, and never fuller than its burst.
    now += 60
    assert bucket.tokens(full_at, now) == 5
    taken = 0
    while (after := bucket.take(full_at, now)) != REFUSED:
        full_at, taken = after, taken + 1
    assert taken == 5


@pytest.mark.parametrize("rate, burst", [(3, 3), (7, 1), (0.1, 2), (1000, 2000), (1 / 3, 1)])
def test_exactly_burst_tokens_fit_at_one_instant_whatever_the_rounding(rate, burst):
    bucket = Bucket(rate, burst)
    full_at, now, taken = 0.0, 12345.678, 0
    while (after := bucket.take(full_at, now)) != REFUSED:
        full_at, taken = after, taken + 1
        assert taken <= burst
    assert taken == burst


def test_a_steady_flow_at_the_rate_is_never_refused_and_a_faster_one_is_held_to_it():
    bucket = Bucket(20, 1)
    full_at, now = 0.0, 0.0
    for _ in range(1000):  # exactly at the rate: every one passes
        now += 0.05
        full_at = bucket.take(full_at, now)
        assert full_at != REFUSED
    passed = 0
    for _ in range(1000):  # twice the rate for 25 s: about half pass
        now += 0.025
        after = bucket.take(full_at, now)
        if after != REFUSED:
            full_at, passed = after, passed + 1
    assert 495 <= passed <= 505


def test_a_bucket_needs_a_rate_and_a_burst():
    with pytest.raises(ValueError):
        Bucket(0, 1)
    with pytest.raises(ValueError):
        Bucket(1, 0)


# == config ================================================================================


def test_rate_keys_parse_per_second_minute_and_hour():
    cfg = parse_config({"client": {"rate_limit": {
        "publish": {"rate": "600/m", "burst": 5}, "rpc": {"rate": "3600/h"}, "history": {"rate": 2.5},
        "subscribe": {"rate": "0"}, "user": {"total": {"rate": "7/s"}}}}}, environ={})
    limits = cfg.client.rate_limit
    assert (limits.publish.rate, limits.publish.capacity) == (10.0, 5)
    assert (limits.rpc.rate, limits.rpc.capacity) == (1.0, 1)  # burst 0: a second's worth, at least 1
    assert (limits.history.rate, limits.history.capacity) == (2.5, 3)
    assert not limits.subscribe.enabled
    assert (limits.user.total.rate, limits.user.total.capacity) == (7.0, 7)
    assert Bucket.of(RateLimit(rate=0)) is None


def test_defaults_limit_commands_but_not_connections():
    client = make_config().client
    assert (client.connection_limit, client.user_connection_limit, client.connection_rate_limit) == (0, 0, 0)
    limits = client.rate_limit
    assert (limits.total.rate, limits.total.burst) == (100, 200)
    assert limits.subscribe.burst > client.channel_limit  # a JS connect frame with every subscription fits
    assert limits.disconnect_after == 10
    assert (limits.user.total.rate, limits.user.total.burst) == (1000, 2000)


@pytest.mark.parametrize("raw, key", [
    ({"client": {"rate_limit": {"publish": {"rate": "ten/s"}}}}, "client.rate_limit.publish.rate"),
    ({"client": {"rate_limit": {"publish": {"rate": "-1/s"}}}}, "client.rate_limit.publish.rate"),
    ({"client": {"rate_limit": {"total": {"burst": -1}}}}, "client.rate_limit.total.burst"),
    ({"client": {"rate_limit": {"per_day": {}}}}, "client.rate_limit.per_day"),
    ({"client": {"user_connection_limit": -1}}, "client.user_connection_limit"),
    ({"client": {"connection_rate_limit": "fast"}}, "client.connection_rate_limit"),
])
def test_bad_limit_keys_are_named(raw, key):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={})
    assert info.value.key == key


def test_limits_from_the_environment():
    cfg = parse_config({}, environ={"LIVEGATE_CLIENT_RATE_LIMIT_PUBLISH_RATE": "5/s",
                                    "LIVEGATE_CLIENT_RATE_LIMIT_USER_TOTAL_BURST": "9",
                                    "LIVEGATE_CLIENT_USER_CONNECTION_LIMIT": "3"})
    assert cfg.client.rate_limit.publish.rate == 5
    assert cfg.client.rate_limit.user.total.burst == 9
    assert cfg.client.user_connection_limit == 3


# == command budgets ======================================================================


def policy(**limits: Any) -> LimitPolicy:
    """Only the limits given (every other class unlimited)."""
    off = {"rate": 0}
    raw = {name: off for name in ("total", "publish", "rpc", "subscribe", "history")}
    user = dict(raw, **limits.pop("user", {}))
    return LimitPolicy(parse_config({"client": {"rate_limit": {**raw, **limits, "user": user}}},
                                    environ={}).client.rate_limit)


def test_commands_of_a_class_share_its_bucket_and_other_classes_are_free():
    limiter = CommandLimiter(policy(subscribe={"rate": 1, "burst": 2}))
    now = 50.0
    assert limiter.check("subscribe", now) is None
    assert limiter.check("unsubscribe", now) is None
    assert limiter.check("subscribe", now) == "subscribe"
    assert limiter.check("publish", now) is None and limiter.check("history", now) is None
    assert limiter.check("subscribe", now + 1) is None


def test_unsubscribe_drains_the_subscribe_class_but_is_never_refused_by_it():
    limiter = CommandLimiter(policy(subscribe={"rate": 1, "burst": 2}, user={"subscribe": {"rate": 1, "burst": 2}}))
    limits_user = UserBudget()
    limiter.user = limits_user
    now = 0.0
    assert [limiter.check("unsubscribe", now) for _ in range(5)] == [None] * 5
    assert limiter.refused == 0
    assert limiter.check("subscribe", now) == "subscribe"  # the unsubscribes took the tokens
    assert limiter.check("subscribe", now + 1) is None
    # Total still holds unsubscribes back.
    limiter = CommandLimiter(policy(total={"rate": 1, "burst": 1}, subscribe={"rate": 1, "burst": 1}))
    assert limiter.check("unsubscribe", now) is None
    assert limiter.check("unsubscribe", now) == "total"


def test_total_counts_every_command_and_a_refused_one_takes_nothing():
    limiter = CommandLimiter(policy(total={"rate": 1, "burst": 3}, publish={"rate": 1, "burst": 1}))
    now = 0.0
    assert limiter.check("publish", now) is None
    assert limiter.check("publish", now) == "publish"  # refused by its class: total keeps its token
    assert limiter.check("presence", now) is None
    assert limiter.check("refresh", now) is None
    assert limiter.check("connect", now) == "total"


def test_refusals_in_a_row_exhaust_a_connection_and_one_accepted_command_resets_them():
    limiter = CommandLimiter(policy(rpc={"rate": 1, "burst": 1}, disconnect_after=3))
    now = 0.0
    assert limiter.check("rpc", now) is None
    assert [limiter.check("rpc", now) for _ in range(2)] == ["rpc", "rpc"]
    assert not limiter.exhausted
    assert limiter.check("send", now) == "rpc"  # send is in the rpc class
    assert limiter.exhausted
    assert limiter.check("rpc", now + 1) is None
    assert not limiter.exhausted and limiter.refused == 0


def test_never_exhausted_with_disconnect_after_zero():
    limiter = CommandLimiter(policy(rpc={"rate": 1, "burst": 1}, disconnect_after=0))
    for _ in range(100):
        limiter.check("rpc", 0.0)
    assert limiter.refused == 99 and not limiter.exhausted


def test_a_users_connections_on_a_node_share_the_users_buckets():
    limits = NodeLimits(make_config({"client": {"rate_limit": {"user": {"publish": {"rate": 1, "burst": 3}}}}}),
                        NodeMetrics())
    a, b, other = limits.new_limiter(), limits.new_limiter(), limits.new_limiter()
    assert a is not None and b is not None and other is not None
    limits.join_user(a, "alice", [a])
    assert a.user is None and limits.users == {}  # one connection: its own buckets bound the user
    limits.join_user(b, "alice", [a, b])  # the second connection: now they share the user's buckets
    assert a.user is b.user is limits.users["alice"]
    limits.join_user(other, "bob", [other])
    now = 0.0
    assert [a.check("publish", now), b.check("publish", now), a.check("publish", now)] == [None, None, None]
    assert b.check("publish", now) == "user_publish"
    assert a.check("publish", now) == "user_publish"
    assert other.check("publish", now) is None  # bob has his own budget
    # The budget goes with the user's last connection; a new connection starts afresh.
    limits.leave_user(a, "alice")
    assert "alice" in limits.users
    limits.leave_user(b, "alice")
    assert "alice" not in limits.users and "bob" not in limits.users
    c = limits.new_limiter()
    limits.join_user(c, "alice", [c])
    assert c is not None and c.check("publish", now) is None


def test_anonymous_connections_have_no_user_budget():
    limits = NodeLimits(make_config(), NodeMetrics())
    limiter = limits.new_limiter()
    limits.join_user(limiter, "", [limiter, limits.new_limiter()])
    assert limiter is not None and limiter.user is None and limits.users == {}


def test_no_limiter_when_no_command_limit_is_configured():
    off = {"rate": 0}
    classes = {name: off for name in ("total", "publish", "rpc", "subscribe", "history")}
    cfg = make_config({"client": {"rate_limit": {**classes, "user": classes}}})
    assert NodeLimits(cfg, NodeMetrics()).new_limiter() is None


# == new connections ======================================================================


def test_node_connection_limit_and_connection_rate():
    metrics = NodeMetrics()
    limits = NodeLimits(make_config({"client": {"connection_limit": 3, "connection_rate_limit": 2}}), metrics)
    now = 100.0
    assert limits.admit_connection(0, now) is None
    assert limits.admit_connection(1, now) is None
    assert limits.admit_connection(2, now) == "connection_rate"
    # At the node limit: refused without taking a rate token.
    assert limits.admit_connection(3, now + 10) == "connection"
    assert limits.admit_connection(2, now + 10) is None
    assert limits.admit_connection(2, now + 10) is None
    assert limits.admit_connection(2, now + 10) == "connection_rate"
    assert metrics.limited == {"connection_rate": 2, "connection": 1}


def test_node_limits_are_one_per_node():
    a = build_node(make_config())
    b = build_node(make_config())
    assert isinstance(a.limits, NodeLimits) and a.limits is not b.limits


# == the memory engine's connections per user ================================================


async def test_memory_user_connections_count_expire_and_refresh():
    clock = FakeClock()
    users = MemoryUserConnections(clock=clock.time)
    assert await users.add_user_connection("u", "c1", 2, 30)
    assert await users.add_user_connection("u", "c2", 2, 30)
    assert await users.add_user_connection("u", "c2", 2, 30)  # already counted: still fine
    assert not await users.add_user_connection("u", "c3", 2, 30)
    assert await users.add_user_connection("v", "c3", 2, 30)
    assert await users.user_connection_count("u") == 2
    clock.advance(20)
    assert await users.refresh_user_connections("u", ["c1", "gone"], 30) == ["gone"]
    clock.advance(20)  # c2 was not refreshed: expired; c1 was
    assert await users.user_connection_count("u") == 1
    assert await users.add_user_connection("u", "c3", 2, 30)
    await users.remove_user_connection("u", "c1")
    assert await users.user_connection_count("u") == 1
    assert await users.add_user_connection("u", "c4", 0, 30)  # limit 0: no limit
    assert await users.user_connection_count("u") == 2


# == sessions =============================================================================

WIRE = Wire("test/json", JSON, lambda payload: payload)


class Transport:
    wire = WIRE
    remote = "test"
    session_token = ""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.disconnect: Disconnect | None = None

    def write(self, frame: bytes) -> bool:
        self.messages.extend(orjson.loads(line) for line in frame.split(b"\n"))
        return True

    def is_open(self) -> bool:
        return self.disconnect is None

    def buffered(self) -> int:
        return 0

    def close(self, code: int, reason: str) -> None:
        self.disconnect = Disconnect(code, reason)


def client(node: Node) -> tuple[Session, Transport]:
    transport = Transport()
    return Session(node, transport, HANDLERS), transport


async def send(session: Session, *commands: dict[str, Any]) -> None:
    await session.handle_frame("\n".join(orjson.dumps(c).decode() for c in commands))


@pytest.fixture
async def limited_node() -> AsyncIterator[tuple[Node, FakeClock]]:
    clock = FakeClock()
    config = make_config({"client": {"user_connection_limit": 2, "rate_limit": {
        "publish": {"rate": 1, "burst": 2}, "disconnect_after": 3}}})
    node = build_node(config, clock=clock, engine_factory=lambda c, events: MemoryEngine(events, batch=False))
    await node.start()
    yield node, clock
    await node.close()


async def test_a_command_over_its_rate_gets_111_and_the_connection_stays(limited_node):
    node, clock = limited_node
    session, transport = client(node)
    publish = {"channel": "chat:x", "data": {}}
    await send(session, {"id": 1, "connect": {"token": token("alice")}}, {"id": 2, "subscribe": {"channel": "chat:x"}},
               *({"id": n, "publish": publish} for n in (3, 4, 5)))
    replies = {m["id"]: m for m in transport.messages if "id" in m}
    assert "publish" in replies[3] and "publish" in replies[4]
    assert replies[5]["error"] == {"code": 111, "message": "too many requests", "temporary": True}
    assert transport.disconnect is None
    clock.advance(1)
    await send(session, {"id": 6, "publish": publish})
    assert "publish" in [m for m in transport.messages if m.get("id") == 6][0]
    assert node.metrics.limited == {"publish": 1}
    assert node.metrics.commands["publish|limited"] == 1


async def test_a_connection_that_keeps_going_is_closed_with_3013_and_the_rest_of_its_frame_is_dropped(limited_node):
    node, _ = limited_node
    session, transport = client(node)
    publish = {"channel": "chat:x", "data": {}}
    await send(session, {"id": 1, "connect": {"token": token("alice")}}, {"id": 2, "subscribe": {"channel": "chat:x"}},
               *({"id": n, "publish": publish} for n in range(3, 103)))
    assert transport.disconnect == Disconnect(3013, "too many requests")
    errors = [m["id"] for m in transport.messages if "error" in m]
    assert errors == [5, 6, 7]  # two publishes passed, three refused, then the close
    assert max(m.get("id", 0) for m in transport.messages) == 7
    assert node.metrics.disconnects == {"3013": 1}


async def test_user_connection_limit_on_one_node_is_3504_and_a_closed_connection_frees_its_place(limited_node):
    node, _ = limited_node
    sessions = [client(node) for _ in range(3)]
    for n, (session, _) in enumerate(sessions[:2]):
        await send(session, {"id": 1, "connect": {"token": token("alice")}})
        assert session.state.name == "CONNECTED", n
    third, transport = sessions[2]
    await send(third, {"id": 1, "connect": {"token": token("alice")}})
    assert transport.disconnect == Disconnect(3504, "connection limit")
    assert transport.messages == []
    await third.release()
    # Other users are not affected; anonymous ones are not counted.
    bob, bob_transport = client(node)
    await send(bob, {"id": 1, "connect": {"token": token("bob")}})
    assert "connect" in bob_transport.messages[0]
    assert await node.engine.users.user_connection_count("alice") == 2
    # One of alice's connections ends: its place is free again.
    await sessions[0][0].release()
    assert await node.engine.users.user_connection_count("alice") == 1
    again, again_transport = client(node)
    await send(again, {"id": 1, "connect": {"token": token("alice")}})
    assert "connect" in again_transport.messages[0]
    assert node.metrics.limited == {"user_connection": 1}


async def test_a_failed_connect_does_not_keep_its_place(make_app_node):
    async def refuse(ctx: Any, data: Any) -> None:
        from livegate.errors import ClientError

        raise ClientError(4000, "no")

    node = await make_app_node(refuse)
    session, transport = client(node)
    await send(session, {"id": 1, "connect": {"token": token("alice")}})
    assert transport.messages[0]["error"]["code"] == 4000
    assert await node.engine.users.user_connection_count("alice") == 0


@pytest.fixture
async def make_app_node():
    from livegate.app import App

    nodes: list[Node] = []

    async def make(hook: Any) -> Node:
        app = App()
        app.on_connect(hook)
        node = build_node(make_config({"client": {"user_connection_limit": 1}}), app)
        await node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.close()


async def test_the_node_refreshes_its_users_connections_and_counts_lost_ones_again(limited_node):
    node, clock = limited_node
    session, _ = client(node)
    await send(session, {"id": 1, "connect": {"token": token("alice")}})
    users = node.engine.users
    # The entry was lost (as if it expired while Redis was away): the refresh counts it again.
    await users.remove_user_connection("alice", session.client_id)
    assert await users.user_connection_count("alice") == 0
    assert await node.refresh_user_connections() == 0
    assert await users.user_connection_count("alice") == 1
    # A closed connection is not brought back by a refresh.
    await session.release()
    assert await node.refresh_user_connections() == 0
    assert await users.user_connection_count("alice") == 0
