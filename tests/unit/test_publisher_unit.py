"""livegate.publisher without servers: encodings, routing, and how each door's answers become
typed errors. The doors themselves: tests/integration/test_publisher.py."""

from __future__ import annotations

import json
import subprocess
import sys

import orjson
import pytest
from conftest import make_config
from redis import exceptions as rx

from livegate.channels.redis import RedisEngine
from livegate.errors import BrokerUnavailable, ClientError
from livegate.protocol import codes
from livegate.publisher import PublisherUnavailable, PublishResult, api_body, encode_data
from livegate.publisher.common import (
    DEAD_PAGE,
    broadcast_results,
    dead_letter_error,
    dead_letter_page,
    delivered,
    error_for_code,
    fcall_error,
    fcall_options,
    fcall_result,
    http_error,
    http_result,
    need_channels,
    redis_failure,
    shard_index,
)


def test_importing_the_publisher_loads_no_server_and_no_io_library():
    code = ("import sys, livegate.publisher; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('websockets', 'aiohttp', 'redis', 'asyncpg', 'pydantic') or m.startswith(('livegate.server', "
            "'livegate.node', 'livegate.channels', 'livegate.api'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _NoEvents:
    def handle_publications(self, batch): ...
    def handle_join(self, channel, info): ...
    def handle_leave(self, channel, info): ...
    def handle_gap(self, channels): ...
    def handle_node_message(self, data): ...


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
async def test_channels_route_to_the_redis_server_the_engine_uses(shards):
    addresses = [f"redis://127.0.0.1:{6379 + i}/0" for i in range(shards)]
    engine = RedisEngine(make_config({"engine": {"type": "redis", "redis": {"address": addresses}}}), _NoEvents())
    channels = [f"chat:{i}" for i in range(500)] + ["", "é:ü", "$private:x", "a" * 300]
    assert [shard_index(c, shards) for c in channels] == [engine.shards.index(engine.shard_for(c)) for c in channels]
    if shards > 1:
        assert len({shard_index(c, shards) for c in channels}) == shards


def test_data_is_json_encoded_or_taken_as_json_bytes():
    assert encode_data({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    assert json.loads(encode_data({"a": [2**70, "é"]})) == {"a": [2**70, "é"]}  # integers beyond 64 bits
    assert encode_data("text") == b'"text"'  # a str is a JSON string, not JSON text
    assert encode_data(b'{ "kept" : 1.50 }') == b'{ "kept" : 1.50 }'  # byte for byte
    assert encode_data(bytearray(b"[1]")) == b"[1]"
    assert encode_data(b"\x00\xff", binary=True) == b"\x00\xff"
    for bad in (b'{"a": 1,}', b"NaN", b"", b'1, "channel": "other"', b"\xff"):
        with pytest.raises(codes.ErrBadRequest, match="must be JSON text"):
            encode_data(bad)
    with pytest.raises(codes.ErrBadRequest, match="not JSON-serializable"):
        encode_data({"a": object()})
    with pytest.raises(TypeError, match="binary=True needs bytes"):
        encode_data({"a": 1}, binary=True)


def test_api_bodies_splice_the_data_as_written():
    body = api_body("publish", "chat:1", b'{ "x" : 1.50 }', idempotency_key="k-1", tags={"t": "v"})
    assert body == b'{"channel":"chat:1","data":{ "x" : 1.50 },"idempotency_key":"k-1","tags":{"t":"v"}}'
    assert orjson.loads(api_body("broadcast", ["a:1", "b:2"], {"n": 1})) == {"channels": ["a:1", "b:2"],
                                                                            "data": {"n": 1}}
    assert orjson.loads(api_body("publish", "bin:1", b"\x00\xff", binary=True)) == {"channel": "bin:1",
                                                                                  "b64data": "AP8="}
    with pytest.raises(codes.ErrBadRequest):
        api_body("publish", "chat:1", b'1, "channel": "elsewhere"')  # no way to change the body around it
    with pytest.raises(TypeError):
        api_body("publish", ["chat:1"], 1)
    with pytest.raises(TypeError):
        api_body("broadcast", "chat:1", 1)
    with pytest.raises(ValueError, match="publish and broadcast"):
        api_body("presence", "chat:1", 1)
    with pytest.raises(codes.ErrBadRequest, match="channels is required"):
        need_channels([])
    with pytest.raises(TypeError):
        need_channels("chat:1")


def test_fcall_options_and_results():
    assert fcall_options("lg", None, None) == b'{"prefix":"lg"}'  # the form the function reads without a decode
    assert orjson.loads(fcall_options("lg", "k", {"a": "b"})) == {"prefix": "lg", "idempotency_key": "k",
                                                                  "tags": {"a": "b"}}
    assert fcall_result([3, b"abc"]) == PublishResult(3, "abc")
    assert fcall_result([3, b"abc", 1]) == PublishResult(3, "abc")  # suppressed: the first one's position
    assert fcall_result([0, b""]) == PublishResult(0, "")


@pytest.mark.parametrize(("code", "cls"), [
    (100, codes.ErrInternal), (101, codes.ErrUnauthorized), (102, codes.ErrUnknownChannel),
    (103, codes.ErrPermissionDenied), (104, codes.ErrMethodNotFound), (107, codes.ErrBadRequest),
    (108, codes.ErrNotAvailable), (109, codes.ErrTokenExpired), (111, codes.ErrTooManyRequests),
    (112, codes.ErrUnrecoverablePosition), (113, codes.ErrConflict),
])
def test_server_codes_become_livegates_own_error_classes(code, cls):
    err = error_for_code(code, "why")
    assert type(err) is cls and err.code == code and err.message == "why"
    assert err.temporary == (code in (100, 111))


def test_an_unknown_code_is_a_plain_client_error():
    err = error_for_code(4321, "app error")
    assert type(err) is ClientError and (err.code, err.message) == (4321, "app error")


@pytest.mark.parametrize(("reply", "cls", "says"), [
    ('livegate_publish: unknown channel namespace "nope"', codes.ErrUnknownChannel, 'namespace "nope"'),
    ('livegate_publish: no livegate config under prefix "x"', codes.ErrNotAvailable, 'prefix "x"'),
    ("livegate_publish: data must be JSON: not JSON", codes.ErrBadRequest, "data must be JSON"),
    ("livegate_publish: data is empty", codes.ErrBadRequest, "data is empty"),
    ("livegate_publish: data is 70000 bytes, over max_publication_size (65536)", codes.ErrBadRequest, "70000"),
    ("livegate_publish: tags must be an object of strings", codes.ErrBadRequest, "tags"),
    ("livegate_publish: options must be a JSON object", codes.ErrBadRequest, "options"),
    ('livegate_publish: bad config entry for namespace "a"', codes.ErrInternal, "bad config entry"),
    ("Function not found", codes.ErrNotAvailable, "not loaded"),
    ("NOPERM this user has no permissions to run the 'fcall' command", codes.ErrPermissionDenied, "NOPERM"),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", codes.ErrInternal, "WRONGTYPE"),
    ("LOADING Redis is loading the dataset in memory", PublisherUnavailable, "LOADING"),
])
def test_fcall_error_replies_are_typed(reply, cls, says):
    err = fcall_error(reply)
    assert type(err) is cls and says in str(err)


@pytest.mark.parametrize(("exc", "cls"), [
    (rx.ConnectionError("refused"), PublisherUnavailable),
    (rx.TimeoutError("timed out"), PublisherUnavailable),
    (rx.BusyLoadingError("loading"), PublisherUnavailable),
    (rx.ReadOnlyError("replica"), PublisherUnavailable),
    (ConnectionResetError("reset"), PublisherUnavailable),
    (rx.AuthenticationError("invalid password"), codes.ErrPermissionDenied),
    (rx.NoPermissionError("no permissions"), codes.ErrPermissionDenied),
    (rx.ResponseError('livegate_publish: unknown channel namespace "x"'), codes.ErrUnknownChannel),
    (rx.DataError("bad argument"), codes.ErrInternal),
])
def test_redis_failures_are_typed(exc, cls):
    err = redis_failure(exc)
    assert type(err) is cls
    if cls is PublisherUnavailable:
        assert isinstance(err, BrokerUnavailable) and err.temporary


@pytest.mark.parametrize(("status", "cls"), [
    (401, codes.ErrUnauthorized), (404, codes.ErrMethodNotFound), (413, codes.ErrBadRequest),
    (400, codes.ErrBadRequest), (415, codes.ErrBadRequest), (502, PublisherUnavailable),
    (503, PublisherUnavailable), (302, codes.ErrInternal),
])
def test_http_statuses_are_typed(status, cls):
    err = http_error(status, b"body says why\n", "http://h/api/publish")
    assert type(err) is cls
    if status in (400, 413, 415):
        assert "body says why" in str(err)


def test_http_answers():
    assert http_result(b'{"result":{"offset":7,"epoch":"e"}}') == PublishResult(7, "e")
    assert http_result(b'{"result":{}}') == PublishResult(0, "")  # no history
    with pytest.raises(codes.ErrUnknownChannel, match="unknown channel"):
        http_result(b'{"error":{"code":102,"message":"unknown channel"}}')
    with pytest.raises(codes.ErrInternal, match="else than JSON"):
        http_result(b"<html>")
    out = broadcast_results(b'{"result":{"responses":[{"result":{"offset":1,"epoch":"e"}},'
                            b'{"error":{"code":107,"message":"bad request: x"}},{"result":{}}]}}', 3)
    assert out[0] == PublishResult(1, "e") and type(out[1]) is codes.ErrBadRequest and out[2] == PublishResult(0, "")
    with pytest.raises(codes.ErrBadRequest):
        broadcast_results(b'{"error":{"code":107,"message":"bad request: channels is required"}}', 1)
    with pytest.raises(codes.ErrInternal, match="per channel"):
        broadcast_results(b'{"result":{"responses":[]}}', 2)


@pytest.mark.parametrize(("error", "cls", "message"), [
    ("102: unknown channel", codes.ErrUnknownChannel, "unknown channel"),
    ("107: bad request: data is 2000 bytes", codes.ErrBadRequest, "bad request: data is 2000 bytes"),
    ("104: not found", codes.ErrMethodNotFound, "not found"),
    ("payload is neither JSON nor msgpack: oops", codes.ErrBadRequest, "bad request: payload is neither JSON nor msgpack: oops"),
    ("internal error: boom", codes.ErrInternal, "internal server error: internal error: boom"),
])
def test_dead_letters_are_typed(error, cls, message):
    err = dead_letter_error(error)
    assert type(err) is cls and err.message == message


def test_stream_entry_state():
    groups = [{"name": "other", "last-delivered-id": "9-0"}, {"name": b"livegate", "last-delivered-id": b"5-1"}]
    assert delivered(groups, "5-1") and delivered(groups, "4-9") and not delivered(groups, "5-2")
    assert not delivered(groups, "10-0") and not delivered([], "1-0")
    assert dead_letter_page([(b"7-0", {b"id": b"6-0", b"error": b"1"})], "5-1") is None  # last page, not there
    with pytest.raises(codes.ErrUnknownChannel):
        dead_letter_page([(b"7-0", {b"id": b"5-1", b"error": b"102: unknown channel"})], "5-1")
    full = [(f"{i}-0".encode(), {b"id": b"1-0"}) for i in range(DEAD_PAGE)]
    assert dead_letter_page(full, "5-1") == f"({DEAD_PAGE - 1}-0"  # the next page starts after the last
