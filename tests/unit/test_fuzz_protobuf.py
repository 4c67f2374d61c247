"""Property-based fuzzing of the Protobuf codec and the handlers, through the session core.

Frames of random Protobuf commands (built with the generated classes from random field
values, tokens signed with the right key), sometimes mutated at the byte level, and frames
of random bytes, are fed to a session on the memory engine that speaks Protobuf. The only
acceptable outcomes are replies, error replies and protocol closes: no exception escapes,
nothing is logged as an error, everything written parses as varint-delimited ``Reply``
messages (with the SDK's independent schema), and every close code is the protocol's.

`make test` runs a bounded number of examples (LIVEGATE_FUZZ_EXAMPLES, default 300 here);
`make fuzz` runs many more.
"""

from __future__ import annotations

from typing import Any

from centrifuge.protocol import client_pb2 as theirs
from conftest import read_varint, varint
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_fuzz_session import CHANNELS, EXAMPLES, ErrorLog, claims, sign, world  # noqa: F401 (world: a fixture)
from test_handlers import HANDLERS, RecordingTransport

from livegate.node import Node
from livegate.protocol.codec import Wire
from livegate.protocol.proto import client_pb2 as pb
from livegate.protocol.protobuf_codec import PROTOBUF
from livegate.session import Session

PROTO_WIRE = Wire("test/protobuf", PROTOBUF, lambda payload: payload)


class ProtoTransport(RecordingTransport):
    wire = PROTO_WIRE

    def write(self, frame: bytes) -> bool:
        assert self.disconnect is None, "wrote after close"
        self.payloads.append(frame)
        pos = 0
        while pos < len(frame):
            size, pos = read_varint(frame, pos)
            assert pos + size <= len(frame), "a message runs past the end of the frame"
            theirs.Reply.FromString(frame[pos:pos + size])  # parses, or the test fails
            pos += size
        return True


class ProtoSession(Session):
    def __init__(self, node: Node) -> None:
        super().__init__(node, ProtoTransport(), HANDLERS)
        self.recorded: ProtoTransport = self.transport  # type: ignore[assignment]


TEXT = st.text(max_size=8)
U64 = st.integers(0, 2**64 - 1)
DATA = st.sampled_from([b"", b"{}", b'{"a":1}', b"[1,2]", b'"s"', b"\x00\xff", b"not json", b"{\n}"]) | st.binary(
    max_size=12)


@st.composite
def request(draw: st.DrawFn, method: str) -> Any:
    channel = draw(CHANNELS.map(lambda s: s.encode("utf-8", "replace").decode()))
    token = draw(st.builds(sign, claims()) | TEXT)
    if method == "connect":
        subs = {ch: pb.SubscribeRequest(recover=draw(st.booleans()), offset=draw(U64), epoch=draw(TEXT))
                for ch in draw(st.lists(TEXT, max_size=2))}
        return pb.ConnectRequest(token=token, data=draw(DATA), subs=subs, name=draw(TEXT), version=draw(TEXT),
                                 headers=draw(st.dictionaries(TEXT, TEXT, max_size=2)))
    if method == "subscribe":
        return pb.SubscribeRequest(
            channel=channel, token=token, recover=draw(st.booleans()), epoch=draw(TEXT), offset=draw(U64),
            data=draw(DATA), positioned=draw(st.booleans()), recoverable=draw(st.booleans()),
            join_leave=draw(st.booleans()), delta=draw(st.sampled_from(["", "fossil", "x"])),
            flag=draw(st.integers(-(2**63), 2**63 - 1)), type=draw(st.integers(-3, 3)),
            tf=pb.FilterNode(op="eq") if draw(st.integers(0, 9)) == 0 else None)
    if method in ("unsubscribe", "presence", "presence_stats"):
        return getattr(pb, {"unsubscribe": "UnsubscribeRequest", "presence": "PresenceRequest",
                            "presence_stats": "PresenceStatsRequest"}[method])(channel=channel)
    if method == "publish":
        return pb.PublishRequest(channel=channel, data=draw(DATA))
    if method == "history":
        since = pb.StreamPosition(offset=draw(U64), epoch=draw(TEXT)) if draw(st.booleans()) else None
        return pb.HistoryRequest(channel=channel, limit=draw(st.integers(-(2**31), 2**31 - 1)), since=since,
                                 reverse=draw(st.booleans()))
    if method == "rpc":
        return pb.RPCRequest(method=draw(TEXT), data=draw(DATA))
    if method == "send":
        return pb.SendRequest(data=draw(DATA))
    if method == "refresh":
        return pb.RefreshRequest(token=token)
    if method == "sub_refresh":
        return pb.SubRefreshRequest(channel=channel, token=token)
    return pb.PingRequest()


METHODS = ["connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "rpc", "send",
           "refresh", "sub_refresh", "ping"]


@st.composite
def command(draw: st.DrawFn) -> bytes:
    cmd = pb.Command()
    if draw(st.integers(0, 9)):
        cmd.id = draw(st.integers(1, 2**32 - 1))
    for method in draw(st.lists(st.sampled_from(METHODS), min_size=0 if draw(st.integers(0, 9)) == 0 else 1,
                                max_size=2 if draw(st.integers(0, 9)) == 0 else 1, unique=True)):
        getattr(cmd, method).CopyFrom(draw(request(method)))
    body = cmd.SerializeToString()
    return varint(len(body)) + body


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=40))
    parts = draw(st.lists(command(), min_size=1, max_size=4))
    if draw(st.integers(0, 4)):  # get past connect most of the time
        hello = pb.Command(id=1, connect=pb.ConnectRequest(token=sign({"sub": draw(st.sampled_from(["alice", ""]))})))
        body = hello.SerializeToString()
        parts.insert(0, varint(len(body)) + body)
    frame = b"".join(parts)
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, 1, 2]))):  # a few byte-level mutations
        at = draw(st.integers(0, len(frame)))
        how = draw(st.integers(0, 2))
        if how == 0:
            frame = frame[:at]  # truncated
        elif how == 1:
            frame = frame[:at] + draw(st.binary(min_size=1, max_size=3)) + frame[at:]
        elif at < len(frame):
            frame = frame[:at] + bytes([frame[at] ^ (1 << draw(st.integers(0, 7)))]) + frame[at + 1:]
    return frame


async def feed(node: Node, frame: bytes) -> ProtoSession:
    session = ProtoSession(node)
    try:
        await session.handle_frame(frame)
        ping = pb.Command(id=99, ping=pb.PingRequest()).SerializeToString()
        await session.handle_frame(varint(len(ping)) + ping)  # a frame after whatever happened
    finally:
        await session.release()
    return session


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
@given(frame=frames())
def test_any_protobuf_frame_gets_replies_errors_or_a_protocol_close(world, frame):  # noqa: F811
    loop, node, errors = world
    errors.records.clear()
    session = loop.run_until_complete(feed(node, frame))
    assert not errors.records, [r.getMessage() for r in errors.records]
    disconnect = session.recorded.disconnect
    if disconnect is not None:
        assert 3000 <= disconnect.code < 5000, disconnect
    event(f"closed {disconnect.code}" if disconnect else "open")
    assert node.hub.num_clients == 0 and node.hub.num_subscriptions == 0  # release left nothing behind
