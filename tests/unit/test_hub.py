"""livegate.channels.hub: the subscription registry and the fan-out (encode once per codec,
frame once per Wire, batch joining, in-flight subscribers, join/leave flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pytest

from livegate.channels.hub import JOIN_LEAVE, Hub
from livegate.metrics import NodeMetrics
from livegate.protocol import codes
from livegate.protocol.codec import Wire
from livegate.protocol.codes import Disconnect
from livegate.protocol.json_codec import JSON, JsonCodec
from livegate.protocol.types import ClientInfo, Publication
from livegate.server.websocket import WIRES, WS_JSON

encode_pub_push = JSON.encode_publication


class CountingCodec(JsonCodec):
    """The JSON codec, counting publication encodings; ``mark`` tells its output apart."""

    def __init__(self, mark: bytes = b"") -> None:
        self.mark = mark
        self.encoded: list[str] = []

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        self.encoded.append(channel)
        raw = super().encode_publication(channel, pub)
        return raw[:-1] + b',"codec":"' + self.mark + b'"}' if self.mark else raw


class CountingFramer:
    def __init__(self, tag: bytes = b"F") -> None:
        self.tag = tag
        self.calls: list[bytes] = []

    def __call__(self, payload: bytes) -> bytes:
        self.calls.append(payload)
        return self.tag + b"[" + payload + b"]"


@dataclass(eq=False)
class Sub:
    client_id: str
    user: str = "u"
    wire: Wire = None  # type: ignore[assignment]  # default: Sub.default_wire
    writes: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    default_wire = WS_JSON

    def __post_init__(self) -> None:
        if self.wire is None:
            self.wire = type(self).default_wire

    closed: Disconnect | None = None

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        self.writes.append((payload, frame))

    def close(self, disconnect: Disconnect) -> None:
        self.closed = disconnect

    def messages(self) -> list[dict]:
        return [orjson.loads(line) for payload, _ in self.writes for line in payload.split(b"\n")]


def pub(n: int, offset: int = 0) -> Publication:
    return Publication(orjson.dumps({"n": n}), offset)


def live(hub: Hub, channel: str, sub: Sub, flags: int = 0) -> None:
    hub.subscribe(channel, sub)
    assert hub.activate(channel, sub, flags) == []


@pytest.fixture
def framer() -> CountingFramer:
    return CountingFramer()


@pytest.fixture
def codec() -> CountingCodec:
    return CountingCodec()


@pytest.fixture
def wire(codec: CountingCodec, framer: CountingFramer) -> Wire:
    return Wire("test", codec, framer)


@pytest.fixture
def hub(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> Hub:
    monkeypatch.setattr(Sub, "default_wire", wire)  # every Sub() of the test uses the counting wire
    return Hub(NodeMetrics())


# -- registry ----------------------------------------------------------------------------


def test_connections_by_client_and_user(hub):
    a1, a2, b = Sub("c1", "alice"), Sub("c2", "alice"), Sub("c3", "bob")
    for s in (a1, a2, b):
        hub.add_connection(s)
    assert hub.connection("c2") is a2
    assert set(map(id, hub.user_connections("alice"))) == {id(a1), id(a2)}
    assert (hub.num_clients, hub.num_users) == (3, 2)
    hub.remove_connection(a1)
    hub.remove_connection(a1)  # idempotent
    assert hub.connection("c1") is None
    assert hub.user_connections("alice") == [a2]
    hub.remove_connection(a2)
    assert hub.user_connections("alice") == [] and hub.num_users == 1
    assert hub.connections() == [b]


def test_subscribe_first_and_unsubscribe_last(hub):
    a, b = Sub("a"), Sub("b")
    assert hub.subscribe("ch", a) is True
    assert hub.subscribe("ch", b) is False      # a is still pending: not first
    hub.activate("ch", a, 0)
    assert hub.channels() == {"ch": 1}          # only live subscribers count
    hub.activate("ch", b, 0)
    assert hub.channels() == {"ch": 2} and hub.num_subscriptions == 2
    assert hub.unsubscribe("ch", a) is False
    assert hub.unsubscribe("ch", b) is True
    assert hub.channels() == {} and hub.num_subscribers("ch") == 0
    assert hub.subscribe("ch", a) is True


def test_unsubscribe_pending_subscriber(hub):
    a = Sub("a")
    hub.subscribe("ch", a)
    assert hub.unsubscribe("ch", a) is True
    hub.handle_publications([("ch", pub(1))])
    assert a.writes == []
    assert hub.subscribe("ch", a) is True


def test_unsubscribe_unknown_is_harmless(hub):
    assert hub.unsubscribe("nothing", Sub("x")) is True


# -- encode once -------------------------------------------------------------------------


def test_single_publication_encoded_once_and_frame_shared(hub, framer):
    subs = [Sub(f"c{i}") for i in range(5)]
    for s in subs:
        live(hub, "news", s)
    hub.handle_publications([("news", pub(1, 7))])
    expected = encode_pub_push("news", pub(1, 7))
    assert framer.calls == [expected]                     # framed once
    payloads = {id(s.writes[0][0]) for s in subs}
    frames = {id(s.writes[0][1]) for s in subs}
    assert len(payloads) == 1 and len(frames) == 1         # the same objects for everyone
    assert all(s.writes == [(expected, b"F[" + expected + b"]")] for s in subs)


def test_real_framer_builds_a_websocket_text_frame():
    hub = Hub(NodeMetrics())
    a, b = Sub("a", wire=WS_JSON), Sub("b", wire=WS_JSON)
    live(hub, "ch", a)
    live(hub, "ch", b)
    hub.handle_publications([("ch", pub(1))])
    payload, frame = a.writes[0]
    assert frame is b.writes[0][1]
    assert frame == bytes((0x81, len(payload))) + payload


def test_no_subscribers_no_encoding(hub, framer):
    hub.handle_publications([("empty", pub(1))])
    hub.handle_publications([("empty", pub(1)), ("empty2", pub(2))])
    assert framer.calls == []


def test_only_subscribers_of_the_channel_receive(hub):
    a, b = Sub("a"), Sub("b")
    live(hub, "x", a)
    live(hub, "y", b)
    hub.handle_publications([("x", pub(1))])
    assert len(a.writes) == 1 and b.writes == []


# -- batches -----------------------------------------------------------------------------


def test_batch_joins_messages_per_subscriber(hub, framer):
    a, b = Sub("a"), Sub("b")
    live(hub, "ch", a)
    live(hub, "ch", b)
    hub.handle_publications([("ch", pub(1, 1)), ("ch", pub(2, 2)), ("ch", pub(3, 3))])
    assert len(a.writes) == 1
    payload, frame = a.writes[0]
    assert payload == b"\n".join(encode_pub_push("ch", pub(i, i)) for i in (1, 2, 3))
    assert [m["push"]["pub"]["offset"] for m in a.messages()] == [1, 2, 3]
    # Subscribers with the same messages share the joined payload and its frame: built once.
    assert b.writes[0][0] is payload and b.writes[0][1] is frame
    assert framer.calls == [payload]


def test_batch_across_channels_keeps_batch_order(hub):
    a = Sub("a")
    live(hub, "x", a)
    live(hub, "y", a)
    hub.handle_publications([("x", pub(1)), ("y", pub(2)), ("x", pub(3)), ("z", pub(4))])
    assert len(a.writes) == 1
    assert [(m["push"]["channel"], m["push"]["pub"]["data"]["n"]) for m in a.messages()] == [
        ("x", 1), ("y", 2), ("x", 3)]


def test_batch_single_messages_share_the_frame(hub, framer):
    a, b, c, d = Sub("a"), Sub("b"), Sub("c"), Sub("d")
    live(hub, "x", a)
    live(hub, "x", b)
    live(hub, "y", c)
    live(hub, "y", d)
    live(hub, "x", d)                                      # d gets two messages
    hub.handle_publications([("x", pub(1)), ("y", pub(2))])
    px, py = encode_pub_push("x", pub(1)), encode_pub_push("y", pub(2))
    assert a.writes[0][0] == px and a.writes[0][1] is b.writes[0][1]
    assert c.writes == [(py, b"F[" + py + b"]")]
    assert d.writes == [(px + b"\n" + py, b"F[" + px + b"\n" + py + b"]")]
    assert sorted(framer.calls) == sorted([px, py, px + b"\n" + py])  # one frame per distinct payload set


def test_batch_encodes_each_publication_once(hub, codec):
    subs = [Sub(str(i)) for i in range(4)]
    for s in subs:
        live(hub, "x", s)
    hub.handle_publications([("x", pub(1)), ("x", pub(2))])
    hub.handle_publications([("x", pub(3))])
    assert codec.encoded == ["x", "x", "x"]


def test_metrics_count_publications_and_pushes(hub):
    a, b = Sub("a"), Sub("b")
    live(hub, "x", a)
    live(hub, "x", b)
    hub.handle_publications([("x", pub(1))])
    hub.handle_publications([("x", pub(2)), ("y", pub(3))])
    assert (hub.metrics.publications, hub.metrics.pushes) == (3, 4)


# -- several codecs and wires -------------------------------------------------------------


def test_one_encoding_per_codec_and_one_frame_per_wire(hub, codec, framer):
    other_codec = CountingCodec(b"other")
    other_framer = CountingFramer(b"G")
    same_codec_other_framing = Wire("sse-ish", codec, other_framer)
    other = Wire("other", other_codec, other_framer)
    a, b = Sub("a"), Sub("b")
    c, d = Sub("c", wire=same_codec_other_framing), Sub("d", wire=other)
    for s in (a, b, c, d):
        live(hub, "ch", s)
    hub.handle_publications([("ch", pub(1, 1))])
    assert codec.encoded == ["ch"] and other_codec.encoded == ["ch"]  # once per codec
    plain = encode_pub_push("ch", pub(1, 1))
    assert a.writes == b.writes == [(plain, b"F[" + plain + b"]")]
    assert a.writes[0][1] is b.writes[0][1]
    assert c.writes == [(plain, b"G[" + plain + b"]")]
    assert orjson.loads(d.writes[0][0])["codec"] == "other"
    assert d.writes[0][1] == b"G[" + d.writes[0][0] + b"]"
    assert len(framer.calls) == 1 and len(other_framer.calls) == 2  # once per wire


def test_batch_with_several_codecs(hub, codec):
    other_codec = CountingCodec(b"other")
    other = Wire("other", other_codec, CountingFramer(b"G"))
    a, b, d1, d2 = Sub("a"), Sub("b"), Sub("d1", wire=other), Sub("d2", wire=other)
    for s in (a, b, d1, d2):
        live(hub, "x", s)
    pending = Sub("p", wire=other)
    hub.subscribe("x", pending)
    hub.handle_publications([("x", pub(1, 1)), ("x", pub(2, 2)), ("y", pub(3, 3))])
    assert codec.encoded == ["x", "x"] and other_codec.encoded == ["x", "x"]
    assert a.writes[0] == b.writes[0] and a.writes[0][1] is b.writes[0][1]
    assert d1.writes[0][1] is d2.writes[0][1]
    assert [json["codec"] for json in (orjson.loads(line) for line in d1.writes[0][0].split(b"\n"))] == [
        "other", "other"]
    # The subscriber in flight buffered the payloads of its own codec.
    assert [orjson.loads(p)["codec"] for _, p in hub.activate("x", pending, 0)] == ["other", "other"]


def test_join_leave_encoded_per_codec(hub):
    other = Wire("other", CountingCodec(b"other"), CountingFramer(b"G"))
    a, d = Sub("a"), Sub("d", wire=other)
    live(hub, "ch", a, JOIN_LEAVE)
    live(hub, "ch", d, JOIN_LEAVE)
    hub.handle_join("ch", ClientInfo("bob", "c9"))
    assert a.messages()[0]["push"]["join"]["info"]["user"] == "bob"
    assert d.writes[0][1].startswith(b"G[")


def test_the_fast_path_follows_the_wires_in_use(hub, wire):
    other = Wire("other", CountingCodec(b"other"), CountingFramer(b"G"))
    a, d = Sub("a"), Sub("d", wire=other)
    live(hub, "x", a)
    assert hub._only_wire is wire
    live(hub, "x", d)
    assert hub._only_wire is None
    hub.unsubscribe("x", d)
    assert hub._only_wire is wire
    hub.unsubscribe("x", a)
    assert hub._only_wire is None and hub._wires == {}


# -- subscribes in flight ----------------------------------------------------------------


def test_pending_subscriber_buffers_until_activate(hub):
    live_sub, pending = Sub("live"), Sub("pending")
    live(hub, "ch", live_sub)
    hub.subscribe("ch", pending)
    hub.handle_publications([("ch", pub(1, 5))])
    hub.handle_publications([("ch", pub(2, 6)), ("ch", pub(3, 7))])
    assert pending.writes == []
    assert len(live_sub.writes) == 2
    buffered = hub.activate("ch", pending, 0)
    assert [off for off, _ in buffered] == [5, 6, 7]
    assert [orjson.loads(p)["push"]["pub"]["data"]["n"] for _, p in buffered] == [1, 2, 3]
    # Live from now on.
    hub.handle_publications([("ch", pub(4, 8))])
    assert [orjson.loads(p)["push"]["pub"]["offset"] for p, _ in pending.writes] == [8]


def test_publications_in_the_reply_that_arrive_late_are_not_sent_again(hub):
    """The engine's pub/sub can lag behind the history read the reply was built from: a
    publication at or below the reply's offset that reaches the hub after activation is
    dropped for that subscriber only; the floor goes with the first newer one."""
    other, late = Sub("other"), Sub("late")
    live(hub, "ch", other)
    hub.subscribe("ch", late)
    assert hub.activate("ch", late, 0, floor=7) == []
    hub.handle_publications([("ch", pub(6, 6)), ("ch", pub(7, 7))])  # in late's reply already
    hub.handle_publications([("ch", pub(8, 8)), ("ch", pub(6, 6))])
    assert [m["push"]["pub"]["offset"] for m in late.messages()] == [8, 6]  # after 8: no floor any more
    assert [m["push"]["pub"]["offset"] for m in other.messages()] == [6, 7, 8, 6]
    assert "ch" not in hub._views  # a view that only held a floor is gone: the fast path again


def test_pending_only_channel_still_buffers(hub, framer):
    pending = Sub("p")
    hub.subscribe("ch", pending)
    hub.handle_publications([("ch", pub(1))])
    assert framer.calls == []                              # nobody live: nothing framed
    assert [orjson.loads(p)["push"]["pub"]["data"] for _, p in hub.activate("ch", pending, 0)] == [{"n": 1}]


def test_pending_buffers_are_per_subscriber(hub):
    p1, p2 = Sub("p1"), Sub("p2")
    hub.subscribe("ch", p1)
    hub.handle_publications([("ch", pub(1, 1))])
    hub.subscribe("ch", p2)
    hub.handle_publications([("ch", pub(2, 2))])
    assert [o for o, _ in hub.activate("ch", p1, 0)] == [1, 2]
    assert [o for o, _ in hub.activate("ch", p2, 0)] == [2]


def test_pending_subscriber_gets_no_join_leave(hub):
    flagged, pending = Sub("f"), Sub("p")
    live(hub, "ch", flagged, JOIN_LEAVE)
    hub.subscribe("ch", pending)
    hub.handle_join("ch", ClientInfo("bob", "c9"))
    assert pending.writes == [] and len(flagged.writes) == 1
    assert hub.activate("ch", pending, JOIN_LEAVE) == []


# -- join / leave ------------------------------------------------------------------------


def test_join_leave_only_to_flagged(hub, framer):
    flagged1, flagged2, plain = Sub("f1"), Sub("f2"), Sub("p")
    live(hub, "ch", flagged1, JOIN_LEAVE)
    live(hub, "ch", flagged2, JOIN_LEAVE)
    live(hub, "ch", plain)
    info = ClientInfo("bob", "c9", conn_info=b'{"a":1}')
    hub.handle_join("ch", info)
    hub.handle_leave("ch", info)
    assert plain.writes == []
    assert [m["push"] for m in flagged1.messages()] == [
        {"channel": "ch", "join": {"info": {"user": "bob", "client": "c9", "conn_info": {"a": 1}}}},
        {"channel": "ch", "leave": {"info": {"user": "bob", "client": "c9", "conn_info": {"a": 1}}}},
    ]
    assert flagged1.writes[0][1] is flagged2.writes[0][1]  # shared frame
    assert len(framer.calls) == 2


def test_join_without_subscribers_encodes_nothing(hub, framer):
    plain = Sub("p")
    live(hub, "ch", plain)
    hub.handle_join("ch", ClientInfo("x", "y"))
    hub.handle_join("nobody", ClientInfo("x", "y"))
    hub.handle_leave("nobody", ClientInfo("x", "y"))
    assert framer.calls == []


@pytest.mark.parametrize("batch", [1, 2])
def test_binary_publications_reach_protobuf_and_close_json_subscribers(batch):
    hub: Hub[Sub] = Hub(NodeMetrics())
    js, pb = Sub("js"), Sub("pb", wire=WIRES["protobuf"])
    pending_js = Sub("pending-js")
    live(hub, "bin", js)
    live(hub, "bin", pb)
    hub.subscribe("bin", pending_js)
    pubs = [("bin", Publication(b'{"ok":1}', 1)), ("bin", Publication(b"\x00\xff", 2))][-batch:]
    hub.handle_publications(pubs)
    assert js.closed is codes.INAPPROPRIATE_PROTOCOL and pending_js.closed is codes.INAPPROPRIATE_PROTOCOL
    assert pb.closed is None and len(pb.writes) == 1 and b"\x00\xff" in pb.writes[0][0]
    assert js.writes == []  # nothing at all: the JSON it could carry was in the same frame


@pytest.mark.parametrize("batch", [1, 3])
def test_with_only_json_subscribers_binary_closes_them_all_and_json_goes_on(batch):
    hub: Hub[Sub] = Hub(NodeMetrics())
    subs = [Sub(f"s{n}") for n in range(3)]
    for sub in subs:
        live(hub, "bin", sub)
    live(hub, "other", other := Sub("other"))
    batch_pubs = [("bin", Publication(b"\x01", 1)), ("other", Publication(b"[1]", 1)), ("bin", Publication(b"2", 2))]
    hub.handle_publications(batch_pubs[:batch])
    assert all(sub.closed is codes.INAPPROPRIATE_PROTOCOL for sub in subs)
    assert other.closed is None and other.messages() == ([{"push": {"channel": "other", "pub": {
        "data": [1], "offset": 1}}}] if batch > 1 else [])
