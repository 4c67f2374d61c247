"""The JSON codec (livegate.protocol.json_codec): frame decoding into typed commands and the
exact wire shapes of replies and pushes (protocol.md 1.2, 1.3, 2.2)."""

from __future__ import annotations

import orjson
import pytest

from livegate.errors import ClientError
from livegate.protocol import codes
from livegate.protocol import commands as c
from livegate.protocol.codec import Command, FrameError
from livegate.protocol.json_codec import JSON
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

decode_frame = JSON.decode_frame
encode_reply = JSON.encode_reply
encode_error = JSON.encode_error
encode_pub_push = JSON.encode_publication
encode_join_push = JSON.encode_join
encode_leave_push = JSON.encode_leave
encode_unsubscribe_push = JSON.encode_unsubscribe
encode_subscribe_push = JSON.encode_subscribe
PING = JSON.ping


def one_line(raw: bytes) -> dict:
    """Decode a server message, asserting it is one compact line."""
    assert isinstance(raw, bytes)
    assert b"\n" not in raw and b"\r" not in raw
    assert b": " not in raw and b", " not in raw, "server JSON must be compact"
    return orjson.loads(raw)


# -- decode_frame ------------------------------------------------------------------------


def test_single_command():
    assert decode_frame('{"id":1,"connect":{"token":"t","name":"js"}}') == [
        Command(1, "connect", c.ConnectRequest(token="t", name="js")),
    ]


def test_bytes_frame_is_accepted_too():
    assert decode_frame(b'{"id":7,"subscribe":{"channel":"a"}}') == [
        Command(7, "subscribe", c.SubscribeRequest(channel="a"))]


def test_several_commands_in_order():
    frame = '{"connect":{"name":"js"},"id":1}\n{"subscribe":{"channel":"a"},"id":2}\n{"id":3,"publish":{"channel":"a","data":1}}'
    cmds = decode_frame(frame)
    assert [(c.id, c.method) for c in cmds] == [(1, "connect"), (2, "subscribe"), (3, "publish")]
    assert cmds[2].request == c.PublishRequest(channel="a", data=b"1")


def test_blank_lines_and_surrounding_whitespace_are_skipped():
    frame = '\n  {"id":1,"connect":{}}\n\n   \n{"id":2,"ping":{}}\n'
    assert [(c.id, c.method) for c in decode_frame(frame)] == [(1, "connect"), (2, "ping")]


@pytest.mark.parametrize("frame", ["", "\n", "  \n \n", b""])
def test_empty_frame_is_an_error(frame):
    with pytest.raises(FrameError):
        decode_frame(frame)


@pytest.mark.parametrize("frame", [
    '{"id":1,"connect":{}',            # truncated
    "{'id':1}",                         # not JSON
    '{"id":1,"connect":{}}\n{"id":2,',  # second line broken
    b'{"id":1,"connect":{"name":"\xff"}}',  # invalid UTF-8
])
def test_invalid_json(frame):
    with pytest.raises(FrameError):
        decode_frame(frame)


@pytest.mark.parametrize("line", ["[1,2]", '"connect"', "1", "null", "true", '[{"id":1,"connect":{}}]'])
def test_non_object(line):
    with pytest.raises(FrameError, match="object"):
        decode_frame(line)


@pytest.mark.parametrize("line", [
    '{"id":1}',
    '{"id":1,"foo":{}}',
    '{"id":1,"result":{}}',
    '{"foo":1}',
])
def test_no_known_method(line):
    with pytest.raises(FrameError, match="no known method"):
        decode_frame(line)


def test_two_methods():
    with pytest.raises(FrameError, match="more than one"):
        decode_frame('{"id":1,"connect":{},"subscribe":{"channel":"a"}}')


def test_unknown_fields_next_to_the_method_are_ignored():
    assert decode_frame('{"id":4,"publish":{"channel":"a","data":1,"newer_field":2},"extra":true}') == [
        Command(4, "publish", c.PublishRequest(channel="a", data=b"1")),
    ]


def test_payloads_pass_through_byte_for_byte():
    (cmd,) = decode_frame('{"id":1,"rpc":{"method":"m","data":{"a": [1, 2.50, "x", 1e2, "\\u00e9"]}}}')
    assert cmd.request == c.RPCRequest(method="m", data=b'{"a": [1, 2.50, "x", 1e2, "\\u00e9"]}')


@pytest.mark.parametrize("data", [
    '"hi \\ud83d"',                                  # a lone surrogate: valid JSON, orjson refuses it
    '{"x":["\\udc00",1]}',
    "18446744073709551616",                           # beyond 64 bits: not turned into a float
    "-123456789012345678901234567890.5e-7",
    "[" * 250 + "]" * 250,                            # as deep as payloads may go
])
@pytest.mark.parametrize("method", ["publish", "rpc"])
def test_valid_json_that_orjson_would_change_or_refuse_passes_unchanged(data, method):
    params = '"channel":"a",' if method == "publish" else '"method":"m",'
    (cmd,) = decode_frame('{"id":3,"' + method + '":{' + params + '"data":' + data + "}}")
    assert cmd.request is not None and cmd.request.data == data.encode()


@pytest.mark.parametrize("line", [
    '{"id":3,"publish":{"channel":"\\ud83d","data":1}}',      # a lone surrogate in a channel name
    '{"id":3,"subscribe":{"channel":"a","token":"\\udfff"}}',
])
def test_a_lone_surrogate_outside_data_is_a_bad_request(line):
    (cmd,) = decode_frame(line)
    assert cmd.request is None and cmd.error is not None and cmd.error.code == 107


@pytest.mark.parametrize("line", ['{"id":1,"publish":{"channel":"a","data":NaN}}',
                                  '{"id":1,"publish":{"channel":"a","data":Infinity}}',
                                  '{"id":1,"publish":{"channel":"a","data":[1,]}}',
                                  '{"id":1,"publish":{"channel":"a","data":"\\ud83d"},}',
                                  '{"id":1,"publish":{"channel":"a","data":01}}'])
def test_what_is_not_json_stays_a_bad_frame(line):
    with pytest.raises(FrameError):
        decode_frame(line)
    (cmd,) = decode_frame('{"id":1,"rpc":{"method":"m","data":null}}')
    assert cmd.request == c.RPCRequest(method="m", data=None)


@pytest.mark.parametrize(("line", "problem"), [
    ('{"id":1,"subscribe":{"channel":5}}', "subscribe.channel"),
    ('{"id":1,"history":{"channel":"a","limit":"5"}}', "history.limit"),
    ('{"id":1,"subscribe":{"channel":"a","offset":-1}}', "subscribe.offset"),
])
def test_invalid_params_come_back_as_a_problem_in_order(line, problem):
    cmds = decode_frame('{"id":9,"ping":{}}\n' + line)
    assert cmds[0].request == c.PingRequest()
    assert cmds[1].request is None and cmds[1].problem.startswith(problem)


@pytest.mark.parametrize("cid", ["-1", str(1 << 32), '"1"', "1.5", "true", "[1]", "{}"])
def test_bad_id(cid):
    with pytest.raises(FrameError, match="id"):
        decode_frame('{"id":' + cid + ',"connect":{}}')


def test_id_bounds_accepted():
    assert decode_frame(f'{{"id":{(1 << 32) - 1},"rpc":{{"method":"x"}}}}')[0].id == (1 << 32) - 1
    assert decode_frame('{"id":1,"rpc":{}}')[0].id == 1


def test_pong_is_the_empty_object():
    assert decode_frame("{}") == [Command(0, "", None)]


def test_pong_between_commands():
    cmds = decode_frame('{"id":1,"connect":{}}\n{}\n{"id":2,"ping":{}}')
    assert [c.method for c in cmds] == ["connect", "", "ping"]


@pytest.mark.parametrize("method", ["connect", "subscribe", "publish", "rpc", "history", "refresh"])
def test_missing_or_zero_id_on_a_command_with_reply(method):
    with pytest.raises(FrameError, match="id"):
        decode_frame(orjson.dumps({method: {}}))
    with pytest.raises(FrameError, match="id"):
        decode_frame(orjson.dumps({"id": 0, method: {}}))


def test_send_needs_no_id():
    assert decode_frame('{"send":{"data":{"a":1}}}') == [Command(0, "send", c.SendRequest(data=b'{"a":1}'))]


def test_null_params_become_empty_and_non_object_params_fail():
    assert decode_frame('{"id":1,"ping":null}') == [Command(1, "ping", c.PingRequest())]
    with pytest.raises(FrameError, match="object"):
        decode_frame('{"id":1,"subscribe":"chat"}')
    with pytest.raises(FrameError, match="object"):
        decode_frame('{"id":1,"subscribe":["chat"]}')


def test_bad_line_fails_the_whole_frame():
    with pytest.raises(FrameError):
        decode_frame('{"id":1,"connect":{}}\n[]')


# -- encoders ----------------------------------------------------------------------------


def test_reply_shape_keeps_empty_result():
    raw = encode_reply(3, "publish", EMPTY)
    assert raw == b'{"id":3,"publish":{}}'


def test_reply_with_result_is_one_compact_line():
    raw = encode_reply(1, "connect", ConnectResult(client="c1", version="0.1.0", ping=25, pong=True,
                                                   data=b'{"welcome":true}'))
    assert one_line(raw) == {"id": 1, "connect": {"client": "c1", "version": "0.1.0", "ping": 25, "pong": True,
                                                 "data": {"welcome": True}}}


def test_error_has_code_and_message_and_no_temporary_when_false():
    raw = encode_error(5, codes.ErrPermissionDenied())
    assert raw == b'{"id":5,"error":{"code":103,"message":"permission denied"}}'


def test_error_temporary_only_when_true():
    assert one_line(encode_error(2, codes.ErrInternal())) == {
        "id": 2, "error": {"code": 100, "message": "internal server error", "temporary": True}}
    assert one_line(encode_error(2, codes.ErrTokenExpired(temporary=True)))["error"] == {
        "code": 109, "message": "token expired", "temporary": True}
    assert "temporary" not in one_line(encode_error(2, codes.ErrTokenExpired()))["error"]


def test_error_message_is_never_empty():
    body = one_line(encode_error(9, ClientError(4000, "")))["error"]
    assert body["code"] == 4000
    assert isinstance(body["message"], str) and body["message"]


def test_application_error_keeps_its_code_and_message():
    assert one_line(encode_error(9, ClientError(1000, "nope")))["error"] == {"code": 1000, "message": "nope"}


def test_pub_push_shape_and_raw_data():
    pub = Publication(b'{"n":1,"s":"a\\nb"}', offset=3)
    raw = encode_pub_push("chat:1", pub)
    assert raw == b'{"push":{"channel":"chat:1","pub":{"data":{"n":1,"s":"a\\nb"},"offset":3}}}'
    assert one_line(raw)["push"]["pub"]["data"] == {"n": 1, "s": "a\nb"}


def test_pub_push_offset_omitted_when_zero():
    msg = one_line(encode_pub_push("news", Publication(b"[1,2]")))
    assert msg == {"push": {"channel": "news", "pub": {"data": [1, 2]}}}


def test_pub_push_with_info_and_tags():
    info = ClientInfo("alice", "c1", conn_info=b'{"name":"A"}', chan_info=b'"vip"')
    pub = Publication(b'"hi"', offset=1, info=info, tags={"k": "v"})
    assert one_line(encode_pub_push("chat:1", pub)) == {"push": {"channel": "chat:1", "pub": {
        "data": "hi", "offset": 1, "tags": {"k": "v"},
        "info": {"user": "alice", "client": "c1", "conn_info": {"name": "A"}, "chan_info": "vip"}}}}


def test_client_info_always_has_user_and_client_even_empty():
    msg = one_line(encode_join_push("chat:1", ClientInfo("", "c2")))
    assert msg == {"push": {"channel": "chat:1", "join": {"info": {"user": "", "client": "c2"}}}}


def test_leave_push_shape():
    msg = one_line(encode_leave_push("chat:1", ClientInfo("bob", "c3", conn_info=b"1")))
    assert msg == {"push": {"channel": "chat:1", "leave": {"info": {"user": "bob", "client": "c3", "conn_info": 1}}}}


@pytest.mark.parametrize("reason", ["", None])
def test_unsubscribe_push_reason_never_empty(reason):
    msg = one_line(encode_unsubscribe_push("chat:1", 2000, reason))
    body = msg["push"]["unsubscribe"]
    assert msg["push"]["channel"] == "chat:1"
    assert body["code"] == 2000
    assert isinstance(body["reason"], str) and body["reason"]


def test_unsubscribe_push_keeps_given_reason():
    assert encode_unsubscribe_push("a", 2501, "subscription expired") == (
        b'{"push":{"channel":"a","unsubscribe":{"code":2501,"reason":"subscription expired"}}}')


def test_subscribe_push_shape():
    result = SubscribeResult(positioned=True, recoverable=True, epoch="e", offset=4, recovered=True,
                             publications=[Publication(b"1", 4)], was_recovering=True)
    msg = one_line(encode_subscribe_push("feed:1", result))
    assert msg == {"push": {"channel": "feed:1", "subscribe": {
        "positioned": True, "recoverable": True, "epoch": "e", "offset": 4}}}  # no recovery fields in a push


def test_ping_is_the_empty_object():
    assert PING == b"{}"


def test_encoded_messages_join_into_a_decodable_frame():
    parts = [encode_reply(1, "publish", EMPTY), encode_pub_push("a", Publication(b"1", 1)), PING]
    lines = JSON.join(parts).split(b"\n")
    assert [orjson.loads(line) for line in lines] == [
        {"id": 1, "publish": {}}, {"push": {"channel": "a", "pub": {"data": 1, "offset": 1}}}, {}]
    assert JSON.join([PING]) is PING


# -- typed results --------------------------------------------------------------------------


def test_subscribe_result_fields():
    assert one_line(encode_reply(1, "subscribe", SubscribeResult()))["subscribe"] == {}
    positioned = SubscribeResult(positioned=True, epoch="e", offset=0, was_recovering=True)
    assert one_line(encode_reply(1, "subscribe", positioned))["subscribe"] == {
        "positioned": True, "epoch": "e", "offset": 0, "was_recovering": True}
    full = SubscribeResult(positioned=True, recoverable=True, epoch="e", offset=2, recovered=True,
                           publications=[Publication(b"1", 1), Publication(b"2", 2)], expires=True, ttl=5,
                           data=b'{"d":1}')
    assert one_line(encode_reply(1, "subscribe", full))["subscribe"] == {
        "positioned": True, "recoverable": True, "epoch": "e", "offset": 2, "recovered": True,
        "publications": [{"data": 1, "offset": 1}, {"data": 2, "offset": 2}], "expires": True, "ttl": 5,
        "data": {"d": 1}}


def test_connect_result_with_subs_and_expiry():
    result = ConnectResult(client="c", version="v", ping=25, pong=True, expires=True, ttl=60,
                           subs={"s": SubscribeResult(positioned=True, epoch="e", offset=3)})
    assert one_line(encode_reply(1, "connect", result))["connect"] == {
        "client": "c", "version": "v", "ping": 25, "pong": True, "expires": True, "ttl": 60,
        "subs": {"s": {"positioned": True, "epoch": "e", "offset": 3}}}


def test_other_results():
    info = ClientInfo("u", "c1", conn_info=b"[1]")
    assert one_line(encode_reply(1, "presence", PresenceResult({"c1": info})))["presence"] == {
        "presence": {"c1": {"user": "u", "client": "c1", "conn_info": [1]}}}
    assert one_line(encode_reply(1, "presence_stats", PresenceStatsResult(2, 1)))["presence_stats"] == {
        "num_clients": 2, "num_users": 1}
    assert one_line(encode_reply(1, "history", HistoryResult([], "e", 0)))["history"] == {
        "publications": [], "epoch": "e", "offset": 0}
    assert one_line(encode_reply(1, "rpc", RPCResult(b'"x"')))["rpc"] == {"data": "x"}
    assert one_line(encode_reply(1, "rpc", RPCResult()))["rpc"] == {}
    assert one_line(encode_reply(1, "refresh", RefreshResult()))["refresh"] == {}
    assert one_line(encode_reply(1, "refresh", RefreshResult(expires=True, ttl=9)))["refresh"] == {
        "expires": True, "ttl": 9}
    with pytest.raises(TypeError):
        encode_reply(1, "x", object())  # type: ignore[arg-type]


def test_a_payload_too_deep_to_encode_is_an_error_reply_not_a_crash():
    deep = "[" * 251 + "]" * 251
    (cmd,) = decode_frame('{"id":1,"publish":{"channel":"a","data":' + deep + "}}")
    assert cmd.request is None and cmd.error is not None and cmd.error.code == 107
    assert "publish.data" in cmd.error.message and "250" in cmd.error.message
    with pytest.raises(FrameError, match="depth"):  # deeper than the parser takes: the frame is refused
        decode_frame('{"id":1,"publish":{"channel":"a","data":' + "[" * 1100 + "]" * 1100 + "}}")


def test_data_that_is_not_json_is_never_embedded():
    from livegate.protocol.codec import Unencodable

    for data in (b"\x00\xff", b"{", b"", b"nan", b'{"a":1} trailing'):
        with pytest.raises(Unencodable):
            encode_pub_push("ch", Publication(data, 1))
        with pytest.raises(Unencodable):
            encode_reply(1, "history", HistoryResult([Publication(data, 1)], "e", 1))
        with pytest.raises(Unencodable):
            encode_reply(1, "rpc", RPCResult(data))
        with pytest.raises(Unencodable):
            JSON.encode_message(data)
    # Valid JSON from a binary namespace: compacted onto one line; a lone surrogate escape is JSON.
    raw = encode_pub_push("ch", Publication(b'{\n  "a": [1,\r\n 2]\n}', 1))
    assert b"\n" not in raw and b"\r" not in raw  # the data keeps its spaces, as written
    assert orjson.loads(raw)["push"]["pub"]["data"] == {"a": [1, 2]}
    # RFC 8259 grammar allows a lone surrogate escape (JSON.parse in browsers takes it; orjson
    # refuses it), so it passes through as written rather than closing the connection.
    assert encode_pub_push("ch", Publication(b'"\\ud83d"', 1)).endswith(b'"data":"\\ud83d","offset":1}}}')
    assert one_line(JSON.encode_message(b'{"m":1}')) == {"push": {"message": {"data": {"m": 1}}}}
