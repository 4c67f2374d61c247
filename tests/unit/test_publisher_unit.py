"""livegate.publisher without servers: encodings, routing, how each door's answers become
typed errors, and the Redis conversations of broadcast and wait, driven step by step. The
doors themselves: tests/integration/test_publisher.py."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import NoEngineEvents, make_config
from redis import exceptions as rx

import livegate.publisher
import livegate.sharding
from livegate.api.stream import GROUP
from livegate.channels.redis import RedisEngine
from livegate.errors import BrokerUnavailable, ClientError
from livegate.protocol import codes
from livegate.publisher import (
    OutcomeUnknown,
    Publisher,
    PublisherUnavailable,
    PublishResult,
    SyncPublisher,
    api_body,
    encode_data,
)
from livegate.publisher.common import (
    BATCH_FUNCTION,
    DEAD_PAGE,
    FUNCTION,
    STREAM_GROUP,
    EntryWatch,
    Pipelined,
    RedisCall,
    broadcast_results,
    dead_letter_error,
    dead_letter_page,
    delivered,
    entry_result,
    error_for_code,
    fcall_error,
    fcall_options,
    fcall_result,
    http_error,
    http_result,
    merge_shards,
    need_channels,
    redis_failure,
    shard_broadcast,
    shard_index,
    stream_add,
)

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_publisher_loads_no_server_and_no_io_library():
    code = ("import sys, livegate.publisher; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('websockets', 'aiohttp', 'redis', 'asyncpg', 'pydantic') or m.startswith(('livegate.server', "
            "'livegate.node', 'livegate.channels', 'livegate.api'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
async def test_channels_route_to_the_redis_server_the_engine_uses(shards):
    addresses = [f"redis://127.0.0.1:{6379 + i}/0" for i in range(shards)]
    engine = RedisEngine(make_config({"engine": {"type": "redis", "redis": {"address": addresses}}}), NoEngineEvents())
    channels = [f"chat:{i}" for i in range(500)] + ["", "é:ü", "$private:x", "a" * 300]
    assert [shard_index(c, shards) for c in channels] == [engine.shards.index(engine.shard_for(c)) for c in channels]
    if shards > 1:
        assert len({shard_index(c, shards) for c in channels}) == shards


def test_one_routing_and_one_set_of_names_for_the_engine_and_the_publisher():
    assert livegate.publisher.shard_index is shard_index is livegate.sharding.shard_index
    # Known values: the hash must not change between releases (servers and backends of
    # different versions route alike).
    assert [shard_index(f"chat:{i}", 3) for i in range(8)] == [0, 2, 1, 2, 0, 1, 1, 1]
    assert STREAM_GROUP == GROUP
    lua = (ROOT / "livegate" / "channels" / "redis" / "livegate.lua").read_text()
    for name in (FUNCTION, BATCH_FUNCTION):
        assert f"redis.register_function('{name}', " in lua


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


# -- answers that make no sense ----------------------------------------------------------------


@pytest.mark.parametrize("reply", [None, b"OK", 7, [1], [b"x", b"e"], [1, None], [None, b"e"], [True, b"e"],
                                   [1, b"\xff"], {"offset": 1}])
def test_a_malformed_fcall_reply_is_err_internal(reply):
    with pytest.raises(codes.ErrInternal, match="unexpected answer from Redis") as info:
        fcall_result(reply)
    assert not info.value.temporary


@pytest.mark.parametrize("body", [
    b'{"error":"boom"}', b'{"error":{"code":"102","message":"x"}}', b'{"error":{"code":102,"message":5}}',
    b'{"result":[1]}', b'{"result":{"offset":"7","epoch":"e"}}', b'{"result":{"offset":1,"epoch":5}}',
    b'{"result":{"offset":true}}',
])
def test_a_malformed_http_answer_is_err_internal(body):
    with pytest.raises(codes.ErrInternal, match="unexpected answer from the server API"):
        http_result(body)


def test_a_malformed_broadcast_answer_is_err_internal_for_all_or_for_one_channel():
    for body in (b'{"result":[1]}', b'{"result":{"responses":{}}}', b'{"result":"x"}'):
        with pytest.raises(codes.ErrInternal, match="per channel"):
            broadcast_results(body, 1)
    out = broadcast_results(b'{"result":{"responses":[7,{"result":{"offset":"x"}},{"result":{"offset":2,'
                            b'"epoch":"e"}},{"error":{"code":"x"}}]}}', 4)
    assert [type(item) for item in out] == [codes.ErrInternal, codes.ErrInternal, PublishResult, codes.ErrInternal]
    assert out[2] == PublishResult(2, "e")


def test_stream_entry_ids():
    assert entry_result(b"17-3") == PublishResult(0, "", "17-3")
    for bad in (None, b"OK", "17", 17):
        with pytest.raises(codes.ErrInternal, match="unexpected answer from Redis"):
            entry_result(bad)


# -- URLs and addresses ------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "127.0.0.1:8001/api", "ftp://h/api", "http:///api", "http://h:port/api", "http://h:99999/api",
    "http://h/api?key=1", "http://h/api#x", "http://h/a pi", "http://h/ap\ni", "http://h/é", "",
])
@pytest.mark.parametrize("factory", [Publisher, SyncPublisher], ids=["async", "sync"])
def test_a_bad_http_url_is_a_value_error_when_the_publisher_is_made(factory, url):
    with pytest.raises(ValueError, match="bad HTTP API URL"):
        factory.http(url)


@pytest.mark.parametrize("factory", [Publisher, SyncPublisher], ids=["async", "sync"])
async def test_good_http_urls_and_stream_addresses(factory):
    for url in ("http://127.0.0.1:8001/api/", "https://[::1]:8001/api", "http://gw.example/x"):
        pub = factory.http(url)
        assert pub.url == url.rstrip("/")
        await call_and_close(pub)
    # The stream door takes engine.redis.address as a list too: the stream is on the first.
    pub = factory.stream(["redis://127.0.0.1:7001/0", "redis://127.0.0.1:7002/0"])
    assert pub._client.connection_pool.connection_kwargs["port"] == 7001
    await call_and_close(pub)
    with pytest.raises(ValueError, match="at least one"):
        factory.stream([])


async def call_and_close(pub: Any) -> None:
    closed = pub.close()
    if closed is not None:
        await closed


# -- the Redis conversations, step by step -----------------------------------------------------


def drive(steps: Any, answers: list[Any]) -> tuple[list[Any], Any]:
    """Run a conversation as a door would, answering each step with the next of ``answers``
    (an exception is thrown in). Returns the steps it took and what it returned."""
    taken: list[Any] = []
    answer: Any = None
    while True:
        try:
            step = steps.throw(answer) if isinstance(answer, BaseException) else steps.send(answer)
        except StopIteration as done:
            assert not answers, f"answers left over: {answers}"
            return taken, done.value
        taken.append(step)
        answer = answers.pop(0)


OPTIONS = b'{"prefix":"lg"}'


def batch_call(*channels: str) -> RedisCall:
    return RedisCall("fcall", (BATCH_FUNCTION, len(channels), *channels, OPTIONS, *(b"1", b"", b"") * len(channels)))


def single(channel: str) -> RedisCall:
    return RedisCall("fcall", (FUNCTION, 1, channel, b"1", OPTIONS))


def test_a_broadcast_is_one_batch_per_server():
    steps, out = drive(shard_broadcast(["a:1", "b:2"], b"1", OPTIONS), [[[1, b"e"], [4, b"f", 1]]])
    assert steps == [batch_call("a:1", "b:2")]
    assert out == [PublishResult(1, "e"), PublishResult(4, "f")]


def test_a_batch_refused_for_one_publication_reports_it_and_retries_the_others_one_by_one():
    refused = rx.ResponseError('livegate_publish_batch: publication 2: unknown channel namespace "nope"')
    steps, out = drive(shard_broadcast(["a:1", "nope:x", "b:2"], b"1", OPTIONS), [
        refused, [[1, b"e"], rx.ResponseError("livegate_publish: data is 9 bytes, over max_publication_size (8)")]])
    assert steps == [batch_call("a:1", "nope:x", "b:2"), Pipelined((single("a:1"), single("b:2")))]
    assert out[0] == PublishResult(1, "e")
    assert type(out[1]) is codes.ErrUnknownChannel and out[1].message == 'unknown channel: unknown channel namespace "nope"'
    assert type(out[2]) is codes.ErrBadRequest and "max_publication_size" in out[2].message


@pytest.mark.parametrize("refusal", ["ERR Function not found", "livegate_publish_batch: options must be a JSON object",
                                     "livegate_publish_batch: publication 9: out of range"])
def test_any_other_batch_refusal_retries_every_channel_one_by_one(refusal):
    steps, out = drive(shard_broadcast(["a:1", "b:2"], b"1", OPTIONS),
                       [rx.ResponseError(refusal), [[1, b"e"], "not a reply"]])
    assert steps[1] == Pipelined((single("a:1"), single("b:2")))
    assert out[0] == PublishResult(1, "e") and type(out[1]) is codes.ErrInternal


def test_a_server_out_of_reach_is_unavailable_for_each_of_its_channels():
    steps, out = drive(shard_broadcast(["a:1", "b:2"], b"1", OPTIONS), [rx.ConnectionError("refused")])
    assert len(steps) == 1 and [type(item) for item in out] == [PublisherUnavailable] * 2
    _, out = drive(shard_broadcast(["nope:1", "b:2"], b"1", OPTIONS),
                   [rx.ResponseError("livegate_publish_batch: publication 1: unknown channel namespace"),
                    rx.TimeoutError("timed out")])  # the retry's pipeline fails as a whole
    assert type(out[0]) is codes.ErrUnknownChannel and type(out[1]) is PublisherUnavailable
    _, out = drive(shard_broadcast(["a:1", "b:2"], b"1", OPTIONS), [[[1, b"e"]]])  # one reply for two
    assert [type(item) for item in out] == [codes.ErrInternal] * 2


def test_broadcast_outcomes_come_back_in_channel_order_and_unavailable_is_raised_after_all():
    groups = {1: [0, 2], 0: [1]}
    ok = [PublishResult(1, "a"), PublishResult(2, "b"), PublishResult(3, "c")]
    assert merge_shards(3, groups, {1: [ok[0], ok[2]], 0: [ok[1]]}) == ok
    down = PublisherUnavailable("redis: refused")
    with pytest.raises(PublisherUnavailable) as info:
        merge_shards(3, groups, {1: [ok[0], ok[2]], 0: [down]})
    assert info.value is down


def test_batch_errors_are_typed_as_publish_errors():
    err = fcall_error("livegate_publish_batch: publication 3: tags must be an object of strings")
    assert type(err) is codes.ErrBadRequest and err.message == "bad request: tags must be an object of strings"
    err = fcall_error('ERR livegate_publish_batch: publication 1: no livegate config under prefix "x"')
    assert type(err) is codes.ErrNotAvailable


GROUPS = [{"name": b"livegate", "last-delivered-id": b"5-1"}]
NOT_READ = [{"name": b"livegate", "last-delivered-id": b"5-0"}]
ENTRY = [(b"5-1", {b"method": b"publish"})]


def info(added: int, length: int) -> dict[str, Any]:
    """XINFO STREAM, as redis-py reads it (what the watch uses of it)."""
    return {"length": length, "entries-added": added, "last-generated-id": b"9-0"}


def watch(max_length: int = 100) -> EntryWatch:
    return EntryWatch("lg.api.stream", "lg.api.dead", "5-1", max_length)


def look(w: EntryWatch, answers: list[Any]) -> tuple[list[Any], Any]:
    return drive(w.poll(), answers)


def test_an_entry_that_was_read_acknowledged_and_is_still_there_ran():
    steps, ran = look(watch(), [GROUPS, [], [ENTRY, info(10, 3)], []])
    assert [getattr(s, "name", "pipeline") for s in steps] == ["xinfo_groups", "xpending_range", "pipeline", "xrange"]
    assert steps[1].args == ("lg.api.stream", STREAM_GROUP)
    assert steps[2] == Pipelined((RedisCall("xrange", ("lg.api.stream",), {"min": "5-1", "max": "5-1", "count": 1}),
                                  RedisCall("xinfo_stream", ("lg.api.stream",))), transaction=True)
    assert steps[3].args == ("lg.api.dead",)  # no dead letter
    assert ran is True


def test_an_entry_not_read_or_still_pending_has_not_run_yet():
    assert look(watch(), [NOT_READ, [ENTRY, info(10, 3)]])[1] is False  # the group has not read it
    assert look(watch(), [[], [ENTRY, info(10, 3)]])[1] is False  # no group yet
    assert look(watch(), [rx.ResponseError("no such key")])[1] is False  # no stream yet
    steps, ran = look(watch(), [GROUPS, [{"message_id": b"5-1"}]])  # pending
    assert ran is False and len(steps) == 2


def test_a_dead_lettered_entry_raises_its_error():
    with pytest.raises(codes.ErrUnknownChannel):
        look(watch(), [GROUPS, [], [[], info(10, 3)], [(b"6-0", {b"id": b"5-1", b"error": b"102: unknown channel"})]])


def test_an_entry_seen_then_gone_ran_unless_enough_came_after_it_for_a_cut():
    w = watch(max_length=100)
    assert look(w, [NOT_READ, [ENTRY, info(added=50, length=4)]])[1] is False
    assert w.added_at == 47  # at most 3 entries came after it: it was at most the 47th
    steps, _ = look(w, [NOT_READ])  # seen once: nothing more to read while it is not read
    assert len(steps) == 1
    assert look(w, [GROUPS, [], [[], info(added=146, length=0)], []])[1] is True  # 99 came after: no cut reached it
    w = watch(max_length=100)
    look(w, [NOT_READ, [ENTRY, info(added=50, length=4)]])
    with pytest.raises(OutcomeUnknown):  # 100 came after it: a cut to 100 entries may have taken it
        look(w, [GROUPS, [], [[], info(added=147, length=100)], []])


def test_the_xadd_reads_how_many_entries_came_before():
    groups = [{"name": b"other", "entries-read": 1, "lag": 0}, {"name": b"livegate", "entries-read": 40, "lag": 2}]
    steps, result = drive(stream_add("lg.api.stream", "publish", b"{}"), [[groups, b"7-0"]])
    assert steps == [Pipelined((RedisCall("xinfo_groups", ("lg.api.stream",)),
                                RedisCall("xadd", ("lg.api.stream", {"method": "publish", "payload": b"{}"}))))]
    assert result == PublishResult(0, "", "7-0") and result.stream_added == 43
    for unknown in (rx.ResponseError("no such key"), [], [{"name": b"livegate", "entries-read": None, "lag": None}]):
        assert drive(stream_add("s", "publish", b"{}"), [[unknown, b"7-0"]])[1].stream_added is None
    with pytest.raises(rx.NoPermissionError):
        drive(stream_add("s", "publish", b"{}"), [[groups, rx.NoPermissionError("no permissions")]])


def test_an_entry_counted_at_its_xadd_and_gone_ran_unless_enough_came_after_it():
    w = EntryWatch("lg.api.stream", "lg.api.dead", "5-1", 100, added_at=43)
    steps, ran = look(w, [NOT_READ])  # counted already: nothing to look at until it is read
    assert ran is False and len(steps) == 1
    assert look(w, [GROUPS, [], [[], info(added=142, length=0)], []])[1] is True
    with pytest.raises(OutcomeUnknown):
        look(w, [GROUPS, [], [[], info(added=143, length=0)], []])


def test_an_entry_never_seen_and_gone_is_not_claimed_to_have_run():
    # Trimmed after it ran, or cut unrun (api_stream_max_length): nothing tells which.
    with pytest.raises(OutcomeUnknown, match="no longer in the stream") as info_:
        look(watch(), [GROUPS, [], [[], info(10, 0)], []])
    assert isinstance(info_.value, PublisherUnavailable) and info_.value.temporary
    w = watch()
    assert look(w, [NOT_READ, [[], {"length": 0}]])[1] is False  # before Redis 7.0: no entries-added
    with pytest.raises(OutcomeUnknown):
        look(w, [GROUPS, [], [[], {"length": 0}], []])


# -- the FastAPI example's answers -------------------------------------------------------------


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ScriptedPublisher(Publisher):
    """A publisher whose publish and wait end as told (the example's error mapping without a
    server; the real doors' errors: tests/integration/test_publisher.py)."""

    def __init__(self, publish_fails: BaseException | None = None, wait_fails: BaseException | None = None) -> None:
        self.publish_fails, self.wait_fails = publish_fails, wait_fails

    async def publish(self, channel, data, *, idempotency_key=None, tags=None, binary=False):
        if self.publish_fails is not None:
            raise self.publish_fails
        return PublishResult(3, "ep", "")

    async def broadcast(self, channels, data, *, idempotency_key=None, tags=None, binary=False):
        raise NotImplementedError

    async def wait(self, result, timeout=10.0):
        if self.wait_fails is not None:
            raise self.wait_fails

    async def close(self):
        pass


@pytest.mark.parametrize(("publish_fails", "wait_fails", "status"), [
    (None, None, 200),
    (codes.ErrUnknownChannel(), None, 400),
    (codes.ErrBadRequest(message="bad request: data is too big"), None, 400),
    (None, codes.ErrBadRequest(message="bad request: from the dead letter"), 400),
    (PublisherUnavailable("redis: refused"), None, 503),
    (None, OutcomeUnknown("gone"), 503),
    (None, TimeoutError("lg.api.stream entry 1-0 not executed within 10s"), 504),
    (codes.ErrNotAvailable(message="not available: no livegate config"), None, 502),
    (ClientError(4000, "app says no"), None, 502),
])
async def test_the_fastapi_example_answers_each_outcome_with_its_status(publish_fails, wait_fails, status):
    example = load_example("fastapi_app")
    got, body = await example.order_state_answer(ScriptedPublisher(publish_fails, wait_fails), 42, "paid")
    assert got == status
    if status == 200:
        assert body == {"channel": "orders:42", "offset": 3, "epoch": "ep"}
    else:
        failure = publish_fails or wait_fails
        assert body["detail"] == (failure.message if isinstance(failure, ClientError) else str(failure))
    if status == 502:
        assert body["code"] == failure.code


def test_the_fastapi_example_is_served_off_livegates_ports():
    text = (ROOT / "examples" / "fastapi_app.py").read_text()
    assert "uvicorn examples.fastapi_app:app --port 8080" in text and "http://127.0.0.1:8080/orders/" in text
    assert not re.search(r":8000\b", text)  # uvicorn's default port is livegate's client port
