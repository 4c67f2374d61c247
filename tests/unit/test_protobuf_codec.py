"""The Protobuf codec (livegate.protocol.protobuf_codec) and its schema.

What the codec writes by hand is parsed back with generated classes, ours and the
centrifuge-python SDK's (an independent rendition of the protocol's client.proto), so a wrong
field number or wire type fails here. The schema itself is compared field by field with the
SDK's, and the committed generated code with a fresh generation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from centrifuge.protocol import client_pb2 as theirs
from conftest import proto_to_dict, read_varint, varint
from google.protobuf.json_format import ParseDict
from hypothesis import given, settings
from hypothesis import strategies as st

from livegate.errors import ClientError
from livegate.protocol import commands as c
from livegate.protocol.codec import Command, FrameError
from livegate.protocol.proto import client_pb2 as ours
from livegate.protocol.protobuf_codec import PROTOBUF
from livegate.protocol.protobuf_codec import read_varint as lg_read_varint
from livegate.protocol.protobuf_codec import varint as lg_varint
from livegate.protocol.replies import (
    EMPTY,
    ConnectResult,
    HistoryResult,
    PresenceResult,
    PresenceStatsResult,
    RefreshResult,
    RPCResult,
    SubscribeResult,
)
from livegate.protocol.types import ClientInfo, Publication

ROOT = Path(__file__).resolve().parents[2]


def replies(frame: bytes, schema: Any = theirs) -> list[dict[str, Any]]:
    """Split a frame into varint-delimited Replies, parsed with ``schema``'s classes."""
    out, pos = [], 0
    while pos < len(frame):
        size, pos = read_varint(frame, pos)
        assert pos + size <= len(frame)
        out.append(proto_to_dict(schema.Reply.FromString(frame[pos:pos + size])))
        pos += size
    return out


def one(frame: bytes) -> dict[str, Any]:
    (theirs_view,) = replies(frame, theirs)
    (ours_view,) = replies(frame, ours)
    assert theirs_view == ours_view
    return theirs_view


def frame_of(*commands: dict[str, Any], schema: Any = theirs) -> bytes:
    out = b""
    for cmd in commands:
        body = ParseDict(cmd, schema.Command()).SerializeToString()
        out += varint(len(body)) + body
    return out


# -- the schema and the generated code ------------------------------------------------------


def test_committed_generated_code_is_fresh():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_generated_code_uses_a_private_descriptor_pool():
    from google.protobuf import descriptor_pool
    assert ours.POOL is not descriptor_pool.Default()
    assert ours.Reply.DESCRIPTOR.file.pool is ours.POOL
    assert ours.Reply.DESCRIPTOR.full_name == theirs.Reply.DESCRIPTOR.full_name == "centrifugal.centrifuge.protocol.Reply"


def _messages(module: Any) -> dict[str, Any]:
    out = {}

    def walk(desc: Any) -> None:
        out[desc.full_name] = desc
        for nested in desc.nested_types:
            walk(nested)

    for desc in module.DESCRIPTOR.message_types_by_name.values():
        walk(desc)
    return out


def test_every_field_both_schemas_have_has_the_same_number_and_type():
    mine, sdk = _messages(ours), _messages(theirs)
    shared = set(mine) & set(sdk)
    assert len(shared) >= 40
    compared = 0
    for name in shared:
        for field in sdk[name].fields:
            other = mine[name].fields_by_name.get(field.name)
            if other is None:
                continue
            assert (other.number, other.type, other.is_repeated) == (field.number, field.type, field.is_repeated), \
                f"{name}.{field.name}"
            compared += 1
    assert compared >= 150


def test_fields_of_protocol_v0_21_to_v0_23_are_declared():
    fields = {(m, f.name): f.number for m, d in _messages(ours).items() for f in d.fields}
    p = "centrifugal.centrifuge.protocol."
    assert fields[(p + "ConnectRequest", "headers")] == 6
    assert [fields[(p + "SubscribeRequest", n)] for n in ("tf", "flag", "type", "phase", "cursor", "limit", "asc")] \
        == list(range(13, 20))
    assert [fields[(p + "SubscribeResult", n)] for n in ("id", "type", "phase", "cursor", "state",
                                                          "publish_debounce")] == list(range(14, 20))
    assert fields[(p + "Push", "id")] == 1


# -- varints ----------------------------------------------------------------------------------


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(n):
    encoded = lg_varint(n)
    assert encoded == varint(n)
    assert lg_read_varint(encoded + b"tail", 0) == (n, len(encoded))


@pytest.mark.parametrize("bad", [b"", b"\x80", b"\xff\xff", b"\xff" * 10 + b"\x01"])
def test_bad_varints(bad):
    with pytest.raises(FrameError):
        lg_read_varint(bad, 0)


# -- decoding ---------------------------------------------------------------------------------


def test_commands_of_every_method_decode_into_typed_requests():
    frame = frame_of(
        {"id": 1, "connect": {"token": "t", "data": "AQI=", "name": "n", "version": "v",
                              "subs": {"chat:a": {"recover": True, "offset": "5", "epoch": "e"}}}},
        {"id": 2, "subscribe": {"channel": "chat:a", "token": "st", "data": "eyJ4IjoxfQ==", "recover": True,
                                "offset": "7", "epoch": "e", "positioned": True, "recoverable": True,
                                "join_leave": True, "delta": "fossil", "flag": "4"}},
        {"id": 3, "unsubscribe": {"channel": "chat:a"}},
        {"id": 4, "publish": {"channel": "chat:a", "data": "AP8="}},
        {"id": 5, "presence": {"channel": "chat:a"}},
        {"id": 6, "presence_stats": {"channel": "chat:a"}},
        {"id": 7, "history": {"channel": "chat:a", "limit": 3, "since": {"offset": "2", "epoch": "e"},
                              "reverse": True}},
        {"id": 8, "rpc": {"method": "m", "data": "e30="}},
        {"send": {"data": "e30="}},
        {"id": 9, "refresh": {"token": "rt"}},
        {"id": 10, "sub_refresh": {"channel": "chat:a", "token": "st2"}},
        {"id": 11, "ping": {}},
        {},  # the pong
    )
    got = PROTOBUF.decode_frame(frame)
    assert [(cmd.id, cmd.method) for cmd in got] == [
        (1, "connect"), (2, "subscribe"), (3, "unsubscribe"), (4, "publish"), (5, "presence"),
        (6, "presence_stats"), (7, "history"), (8, "rpc"), (0, "send"), (9, "refresh"), (10, "sub_refresh"),
        (11, "ping"), (0, "")]
    assert got[0].request == c.ConnectRequest(token="t", data=b"\x01\x02", name="n", version="v",
                                              subs={"chat:a": c.SubscribeOnConnect(recover=True, offset=5, epoch="e")})
    assert got[1].request == c.SubscribeRequest(channel="chat:a", token="st", data=b'{"x":1}', recover=True, offset=7,
                                                epoch="e", positioned=True, recoverable=True, join_leave=True,
                                                delta="fossil", flag=4)
    assert got[3].request == c.PublishRequest(channel="chat:a", data=b"\x00\xff")
    assert got[6].request == c.HistoryRequest(channel="chat:a", limit=3, reverse=True,
                                              since=c.SincePosition(offset=2, epoch="e"))
    assert got[7].request == c.RPCRequest(method="m", data=b"{}")
    assert got[8].request == c.SendRequest(data=b"{}")
    assert got[10].request == c.SubRefreshRequest(channel="chat:a", token="st2")
    assert got[12] == Command(0, "", None)


def test_empty_bytes_are_no_data_and_a_filter_is_seen():
    (publish, sub) = PROTOBUF.decode_frame(frame_of(
        {"id": 1, "publish": {"channel": "x"}},
        {"id": 2, "subscribe": {"channel": "x", "tf": {"op": "eq", "key": "k", "val": "v"}}},
    ))
    assert publish.request == c.PublishRequest(channel="x", data=None)
    assert isinstance(sub.request, c.SubscribeRequest) and sub.request.tf is not None


def test_a_request_out_of_range_is_a_problem_not_an_exception():
    (cmd,) = PROTOBUF.decode_frame(frame_of({"id": 1, "history": {"channel": "x", "limit": -5}}))
    assert cmd.request == c.HistoryRequest(channel="x", limit=-5)  # the handler decides what -5 means
    (cmd,) = PROTOBUF.decode_frame(frame_of({"id": 1, "subscribe": {"channel": "x", "type": 3}}, schema=ours))
    assert cmd.request is not None and cmd.request.type == 3


@pytest.mark.parametrize(("frame", "why"), [
    ("text", "text frame"),
    (b"", "empty"),
    (b"\x05\x08", "past the end"),
    (varint(2) + b"\x08\x01", "no known method"),
    (frame_of({"id": 1, "ping": {}, "presence": {"channel": "x"}}), "more than one method"),
    (frame_of({"presence": {"channel": "x"}}), "needs an id"),
    (varint(3) + b"\x08\x01\x07", "malformed"),  # wire type 7 does not exist
])
def test_frames_that_are_not_protocol(frame, why):
    with pytest.raises(FrameError, match=why):
        PROTOBUF.decode_frame(frame)


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_any_bytes_decode_into_commands_or_a_frame_error(frame):
    try:
        commands = PROTOBUF.decode_frame(frame)
    except FrameError:
        return
    assert commands and all(isinstance(cmd, Command) for cmd in commands)


# -- encoding ---------------------------------------------------------------------------------

INFO = ClientInfo("alice", "c1", b'{"name":"A"}', b'{"role":"r"}')


def test_the_ping_is_one_empty_reply():
    assert PROTOBUF.ping == b"\x00" and replies(PROTOBUF.ping) == [{}]


def test_replies_of_every_result():
    assert one(PROTOBUF.encode_reply(1, "publish", EMPTY)) == {"id": 1, "publish": {}}
    assert one(PROTOBUF.encode_reply(2, "unsubscribe", EMPTY)) == {"id": 2, "unsubscribe": {}}
    assert one(PROTOBUF.encode_reply(3, "ping", EMPTY)) == {"id": 3, "ping": {}}
    sub = SubscribeResult(positioned=True, recoverable=True, epoch="ep", offset=9, recovered=True,
                          publications=[Publication(b'{"n":8}', 8, INFO, {"k": "v"})], was_recovering=True,
                          expires=True, ttl=30, data=b"\x01")
    assert one(PROTOBUF.encode_reply(4, "subscribe", sub)) == {"id": 4, "subscribe": {
        "expires": True, "ttl": 30, "recoverable": True, "epoch": "ep",
        "publications": [{"data": b'{"n":8}', "offset": 8, "tags": {"k": "v"},
                          "info": {"user": "alice", "client": "c1", "conn_info": b'{"name":"A"}',
                                   "chan_info": b'{"role":"r"}'}}],
        "recovered": True, "offset": 9, "positioned": True, "data": b"\x01", "was_recovering": True}}
    connect = ConnectResult(client="c1", version="1.0", ping=25, pong=True, expires=True, ttl=60, data=b"{}",
                            subs={"chat:s": SubscribeResult(recoverable=True, positioned=True, epoch="e", offset=2)})
    assert one(PROTOBUF.encode_reply(5, "connect", connect)) == {"id": 5, "connect": {
        "client": "c1", "version": "1.0", "expires": True, "ttl": 60, "data": b"{}", "ping": 25, "pong": True,
        "subs": {"chat:s": {"recoverable": True, "epoch": "e", "offset": 2, "positioned": True}}}}
    history = HistoryResult([Publication(b"\x00", 1), Publication(b"\x01", 2, b'{"user":"u","client":"c"}')], "e", 2)
    assert one(PROTOBUF.encode_reply(6, "history", history)) == {"id": 6, "history": {
        "publications": [{"data": b"\x00", "offset": 1},
                         {"data": b"\x01", "offset": 2, "info": {"user": "u", "client": "c"}}],
        "epoch": "e", "offset": 2}}
    assert one(PROTOBUF.encode_reply(7, "history", HistoryResult([], "", 0))) == {"id": 7, "history": {}}
    assert one(PROTOBUF.encode_reply(8, "presence", PresenceResult({"c1": INFO}))) == {"id": 8, "presence": {
        "presence": {"c1": {"user": "alice", "client": "c1", "conn_info": b'{"name":"A"}',
                            "chan_info": b'{"role":"r"}'}}}}
    assert one(PROTOBUF.encode_reply(9, "presence_stats", PresenceStatsResult(3, 2))) == {
        "id": 9, "presence_stats": {"num_clients": 3, "num_users": 2}}
    assert one(PROTOBUF.encode_reply(10, "rpc", RPCResult(b"\xff"))) == {"id": 10, "rpc": {"data": b"\xff"}}
    assert one(PROTOBUF.encode_reply(11, "rpc", RPCResult(None))) == {"id": 11, "rpc": {}}
    assert one(PROTOBUF.encode_reply(12, "refresh", RefreshResult(True, 100))) == {
        "id": 12, "refresh": {"expires": True, "ttl": 100}}
    assert one(PROTOBUF.encode_reply(13, "sub_refresh", RefreshResult(True, 100))) == {
        "id": 13, "sub_refresh": {"expires": True, "ttl": 100}}
    assert one(PROTOBUF.encode_reply(14, "refresh", RefreshResult())) == {"id": 14, "refresh": {}}


def test_errors():
    assert one(PROTOBUF.encode_error(3, ClientError(103, "permission denied"))) == {
        "id": 3, "error": {"code": 103, "message": "permission denied"}}
    assert one(PROTOBUF.encode_error(4, ClientError(100, "", temporary=True))) == {
        "id": 4, "error": {"code": 100, "message": "error", "temporary": True}}


def test_pushes():
    assert one(PROTOBUF.encode_publication("ch", Publication(b"\x00raw", 3, INFO))) == {"push": {
        "channel": "ch", "pub": {"data": b"\x00raw", "offset": 3, "info": {
            "user": "alice", "client": "c1", "conn_info": b'{"name":"A"}', "chan_info": b'{"role":"r"}'}}}}
    assert one(PROTOBUF.encode_publication("ch", Publication(b"", 0))) == {"push": {"channel": "ch", "pub": {}}}
    assert one(PROTOBUF.encode_join("ch", ClientInfo("u", "c"))) == {
        "push": {"channel": "ch", "join": {"info": {"user": "u", "client": "c"}}}}
    assert one(PROTOBUF.encode_leave("ch", ClientInfo("u", "c"))) == {
        "push": {"channel": "ch", "leave": {"info": {"user": "u", "client": "c"}}}}
    assert one(PROTOBUF.encode_unsubscribe("ch", 2000, "server unsubscribe")) == {
        "push": {"channel": "ch", "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}}
    assert one(PROTOBUF.encode_unsubscribe("ch", 2500, "")) == {
        "push": {"channel": "ch", "unsubscribe": {"code": 2500, "reason": "unsubscribed"}}}
    sub = SubscribeResult(positioned=True, recoverable=True, epoch="e", offset=4, data=b"d",
                          recovered=True, publications=[Publication(b"x", 4)])
    assert one(PROTOBUF.encode_subscribe("ch", sub)) == {"push": {"channel": "ch", "subscribe": {
        "recoverable": True, "epoch": "e", "offset": 4, "positioned": True, "data": b"d"}}}
    assert one(PROTOBUF.encode_message(b"\x01")) == {"push": {"message": {"data": b"\x01"}}}


def test_several_messages_join_by_concatenation():
    a, b = PROTOBUF.encode_reply(1, "publish", EMPTY), PROTOBUF.encode_join("ch", ClientInfo("u", "c"))
    assert PROTOBUF.join([a]) is a
    assert replies(PROTOBUF.join([a, b])) == [{"id": 1, "publish": {}}, {"push": {
        "channel": "ch", "join": {"info": {"user": "u", "client": "c"}}}}]


def test_text_that_is_not_utf8_is_replaced_never_sent_invalid():
    (view,) = replies(PROTOBUF.encode_join("ch\ud83d", ClientInfo("u\udc00", "c")))
    assert view["push"]["channel"] == "ch?" and view["push"]["join"]["info"]["user"] == "u?"


TEXT = st.text(max_size=12)


@settings(max_examples=300)
@given(data=st.binary(max_size=40), offset=st.integers(0, 2**64 - 1), channel=TEXT,
       info=st.none() | st.builds(ClientInfo, TEXT, TEXT, st.none() | st.binary(max_size=8),
                                  st.none() | st.binary(max_size=8)),
       tags=st.none() | st.dictionaries(TEXT, TEXT, max_size=3))
def test_publications_parse_as_the_generated_classes_build_them(data, offset, channel, info, tags):
    encoded = PROTOBUF.encode_publication(channel, Publication(data, offset, info, tags))
    size, pos = read_varint(encoded, 0)
    assert pos + size == len(encoded)
    expected = ours.Reply(push=ours.Push(channel=channel, pub=ours.Publication(
        data=data, offset=offset, tags=tags or {},
        info=None if info is None else ours.ClientInfo(user=info.user, client=info.client,
                                                       conn_info=info.conn_info or b"",
                                                       chan_info=info.chan_info or b""))))
    assert ours.Reply.FromString(encoded[pos:]) == expected
    assert theirs.Reply.FromString(encoded[pos:]).push.pub.offset == offset
