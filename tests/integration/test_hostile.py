"""A hostile client and a careless backend against a real server: every input that once
crashed a handler, answered with the wrong code or locked out a legitimate client gets a
clean, documented answer now (issue 10 of the tracker: defects 7 to 10)."""

from __future__ import annotations

import asyncio

import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import REDIS_URL, SECRET, delete_prefix, scaled, unique_prefix

from livegate.app import App

KEY = b"test-api-key"


async def raw_http(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """Send a hand-written HTTP request; returns (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(scaled(5)):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
    writer.close()
    return status, head, body


def handshake(path: str, *extra: bytes) -> bytes:
    return b"\r\n".join([
        f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Upgrade: websocket", b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13", *extra, b"", b""])


# -- the WebSocket handshake ---------------------------------------------------------------


async def test_an_empty_subprotocol_header_is_json(server):
    """centrifuge-python before 0.7 sends `Sec-WebSocket-Protocol:` empty for JSON."""
    status, head, _ = await raw_http(server.server.port, handshake("/connection/websocket", b"Sec-WebSocket-Protocol: "))
    assert status == 101
    assert b"sec-websocket-protocol" not in head.lower()


async def test_two_origin_headers_are_refused_cleanly(server):
    status, _, body = await raw_http(server.server.port, handshake(
        "/connection/websocket", b"Origin: http://localhost:1", b"Origin: http://elsewhere.test"))
    assert status == 400 and b"Origin" in body and b"Traceback" not in body


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "expire_at"])
async def test_a_signed_token_with_an_absurd_time_is_invalid_not_a_crash(server, peer_factory, claim):
    huge = 18_500_000_000_000_000_000  # beyond 64 bits
    tok = jwt.encode({"sub": "alice", claim: huge}, SECRET, algorithm="HS256")
    peer = await peer_factory(server.url)
    await peer.send({"id": 1, "connect": {"token": tok}})
    assert await peer.closed() == (3500, "invalid token")
    ok = await peer_factory(server.url)  # the server goes on serving
    assert "connect" in await ok.connect("bob")


# -- RPC ---------------------------------------------------------------------------------------


async def test_rpc_on_a_server_without_rpc_is_not_available(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    reply = await peer.call("rpc", {"method": "anything", "data": {}})
    assert reply["error"] == {"code": 108, "message": "not available"}


async def test_an_unknown_method_among_registered_ones_is_not_found(start_server, peer_factory):
    app = App()

    @app.rpc("known")
    async def known(ctx, data):  # noqa: ANN001, ANN202
        return data

    running = await start_server(app=app)
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    assert (await peer.call("rpc", {"method": "unknown"}))["error"]["code"] == 104
    assert (await peer.call("rpc", {"method": "known", "data": [1]}))["rpc"] == {"data": [1]}


async def test_data_nested_too_deep_is_a_bad_request(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    deep = "[" * 300 + "]" * 300
    await peer.send_raw('{"id":5,"publish":{"channel":"plain","data":' + deep + "}}")
    reply = await peer.reply(5)
    assert reply["error"]["code"] == 107
    assert (await peer.call("publish", {"channel": "plain", "data": [1]}))["publish"] == {}  # still connected


# -- the server API ----------------------------------------------------------------------------


def api_request(path: str, body: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Content-Type: application/json",
                         f"Content-Length: {len(body)}".encode(), b"Connection: close", *headers, b"", body])


async def test_an_api_key_that_is_not_utf8_is_unauthorized(server):
    status, _, body = await raw_http(server.server.api_port, api_request("/api/info", b"{}", b"X-API-Key: \xff\xfe\x80"))
    assert status == 401 and body == b""
    status, _, _ = await raw_http(server.server.api_port, api_request("/api/info", b"{}", b"X-API-Key: " + KEY))
    assert status == 200


async def test_api_data_nested_too_deep_is_107(server):
    deep = b"[" * 300 + b"]" * 300
    for method, body in [("publish", b'{"channel":"plain","data":' + deep + b"}"),
                         ("broadcast", b'{"channels":["plain"],"data":' + deep + b"}"),
                         ("subscribe", b'{"user":"u","channel":"plain","info":' + deep + b"}")]:
        status, _, raw = await raw_http(server.server.api_port, api_request(f"/api/{method}", body,
                                                                            b"X-API-Key: " + KEY))
        reply = orjson.loads(raw)
        error = reply["error"] if "error" in reply else reply["result"]["responses"][0]["error"]
        assert (status, error["code"]) == (200, 107), (method, reply)


@pytest.fixture
async def redis_server(start_server):
    prefix = unique_prefix()
    running = await start_server({"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}}})
    yield running
    client = aioredis.Redis.from_url(REDIS_URL)
    await delete_prefix(client, prefix)
    await client.aclose()


@pytest.mark.parametrize("limit", [1 << 63, -(1 << 63) - 1, 1 << 70])
async def test_api_history_limit_out_of_range_is_107_naming_the_field(redis_server, limit):
    body = b'{"channel":"chat:h","limit":%d}' % limit
    _, _, raw = await raw_http(redis_server.server.api_port, api_request("/api/history", body, b"X-API-Key: " + KEY))
    error = orjson.loads(raw)["error"]
    assert error["code"] == 107 and "limit" in error["message"] and "script" not in error["message"]


async def test_api_history_with_the_largest_limit_works_on_redis(redis_server):
    body = b'{"channel":"chat:h","limit":%d}' % ((1 << 63) - 1)
    await redis_server.node.publish("chat:h", b"1")
    _, _, raw = await raw_http(redis_server.server.api_port, api_request("/api/history", body, b"X-API-Key: " + KEY))
    assert [p["data"] for p in orjson.loads(raw)["result"]["publications"]] == [1]



# -- the Redis API stream stays bounded ------------------------------------------------------


async def test_processed_api_stream_entries_are_trimmed(redis_server):
    client = aioredis.Redis.from_url(REDIS_URL)
    prefix = redis_server.config.engine.redis.prefix
    stream = f"{prefix}.api.stream"
    try:
        for n in range(300):
            await client.xadd(stream, {"method": "publish", "payload": orjson.dumps({"channel": "chat:t", "data": n})})
        async with asyncio.timeout(scaled(10)):  # all executed: the channel's history has them all
            while (await client.hget(f"{prefix}.meta.{{chat:t}}", "s")) != b"300":
                await asyncio.sleep(0.02)
            while (await client.xpending(stream, "livegate"))["pending"]:
                await asyncio.sleep(0.02)
        removed = await redis_server.server.api_stream.trim()
        assert removed >= 300 - 100 and await client.xlen(stream) == 0  # the periodic trim may have come first
    finally:
        await client.aclose()


async def test_an_api_stream_nobody_reads_is_cut_to_its_bound(start_server):
    from livegate.api.stream import ApiStreamConsumer

    prefix = unique_prefix()
    running = await start_server({"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}}})
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        # A consumer on a stream of its own that is never started: nothing gets read.
        idle = ApiStreamConsumer(running.node, client, f"{prefix}-idle", max_length=50)
        await idle._ensure_group()
        ids = [await client.xadd(idle.stream, {"method": "publish", "payload": b"{}"}) for _ in range(120)]
        assert await idle.trim() == 70
        assert [entry_id for entry_id, _ in await client.xrange(idle.stream)] == ids[-50:]  # the newest stay
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


# -- the Redis function door: exactly what the HTTP API accepts --------------------------------


@pytest.fixture
async def fcall(redis_server):
    client = aioredis.Redis.from_url(REDIS_URL)
    prefix = redis_server.config.engine.redis.prefix

    async def call(channel: str, data: bytes, options: dict | None = None, info: bytes | None = None):
        args = [data, orjson.dumps({"prefix": prefix, **(options or {})})]
        if info is not None:
            args.append(info)
        return await client.fcall("livegate_publish", 1, channel, *args)

    yield call
    await client.aclose()


async def test_the_reported_info_injection_is_refused(redis_server, fcall, peer_factory):
    peer = await peer_factory(redis_server.url)
    await peer.connect("alice")
    await peer.call("subscribe", {"channel": "chat:a"})
    forged = b'{"user":"x"}}}\n{"push":{"channel":"chat:other","pub":{"data":"FORGED"}}}\n{"x":{"y":{'
    with pytest.raises(aioredis.ResponseError, match="info must be a JSON object"):
        await fcall("chat:a", b'{"a":1}', info=forged)
    with pytest.raises(aioredis.ResponseError, match="data must be JSON"):  # "trusted" is not honoured
        await fcall("chat:a", b"not json", {"trusted": True})
    # Nothing reached the subscriber, and nothing stayed in history: the next publication is offset 1.
    assert (await fcall("chat:a", b'"marker"'))[0] == 1
    pubs = [msg async for msg in pushes_until(peer, "marker")]
    assert pubs == [{"data": "marker", "offset": 1}]


@pytest.mark.parametrize("data", [
    b"NaN", b"Infinity", b"-Infinity", b"0x10", b"[1,]", b"{\"a\":1,}", b"01", b"1.", b".5", b"1e", b"+1",
    b"\"\xff\"", b"\"\xed\xa0\x80\"", b"\"\xc0\xaf\"", b"\"a\x01\"", b"\"\\x41\"", b"\"\\u12\"", b"{\"a\" 1}",
    b"[1 2]", b"tru", b"nul", b"\"unterminated", b"{} {}", b"[" * 251 + b"]" * 251, b"'single'",
])
async def test_what_no_strict_json_parser_takes_is_refused(fcall, data):
    with pytest.raises(aioredis.ResponseError, match="data must be JSON"):
        await fcall("chat:strict", data)


@pytest.mark.parametrize("data", [
    b'"hi \\ud83d"', b"18446744073709551616", b"-0.0e+00", b'"\\u00e9 \xc3\xa9 \xf0\x9f\x98\x80"', b"[]", b"{}",
    b" [ 1 , { \"a\" : [ ] } ] ", b"[" * 250 + b"]" * 250, b'"\\/\\b\\f\\n\\r\\t\\"\\\\"', b"\"\x7f\"",
])
async def test_valid_json_passes_unchanged_to_subscribers(redis_server, fcall, peer_factory, data):
    peer = await peer_factory(redis_server.url)
    await peer.connect("alice")
    await peer.call("subscribe", {"channel": "chat:ok"})
    offset, _ = await fcall("chat:ok", data)
    while '"pub"' not in (frame := await peer.ws.recv()):
        pass  # the join push of the subscriber itself
    assert data.strip() in frame.encode() and f'"offset":{offset}' in frame
    assert peer_json_ok(frame)


async def pushes_until(peer, marker):  # noqa: ANN001, ANN201
    """The pub pushes a peer receives, up to and including the one whose data is ``marker``."""
    while True:
        msg = await peer.recv()
        pub = msg.get("push", {}).get("pub")
        if pub is not None:
            yield pub
            if pub.get("data") == marker:
                return


def peer_json_ok(frame: str) -> bool:
    from livegate.protocol.jsontext import is_json
    return all(is_json(line.encode()) for line in frame.split("\n"))


async def test_an_oversized_publication_is_refused_at_every_door(start_server, peer_factory):
    prefix = unique_prefix()
    running = await start_server({"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}},
                                  "channel": {"max_publication_size": 1000}})
    big = b'"' + b"x" * 1000 + b'"'
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        with pytest.raises(aioredis.ResponseError, match="over max_publication_size"):  # FCALL
            await client.fcall("livegate_publish", 1, "chat:big", big, orjson.dumps({"prefix": prefix}))
        _, _, raw = await raw_http(running.server.api_port, api_request(  # HTTP API
            "/api/publish", b'{"channel":"chat:big","data":' + big + b"}", b"X-API-Key: " + KEY))
        assert orjson.loads(raw)["error"]["code"] == 107 and "max_publication_size" in orjson.loads(raw)["error"]["message"]
        peer = await peer_factory(running.url)  # a client
        await peer.connect("alice")
        await peer.call("subscribe", {"channel": "chat:big"})
        reply = await peer.call("publish", {"channel": "chat:big", "data": "x" * 1000})
        assert reply["error"]["code"] == 107
        stream = f"{prefix}.api.stream"  # the Redis API stream: dead-lettered with the reason
        await client.xadd(stream, {"method": "publish", "payload": b'{"channel":"chat:big","data":' + big + b"}"})
        async with asyncio.timeout(scaled(10)):
            while not await client.xlen(f"{prefix}.api.dead"):
                await asyncio.sleep(0.02)
        (_, fields), = await client.xrange(f"{prefix}.api.dead")
        assert fields[b"error"].startswith(b"107") and b"max_publication_size" in fields[b"error"]
        assert (await peer.call("publish", {"channel": "chat:big", "data": "ok"}))["publish"] == {}  # still here
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


@pytest.mark.parametrize("path,body", [
    ("/api/publish", b'{"channel":"chat:raw","data":%s}'),
    ("/api/broadcast", b'{"channels":["chat:raw"],"data":%s}'),
    ("/api", b'{"method":"publish","params":{"channel":"chat:raw","data":%s}}'),
])
async def test_the_http_api_passes_data_through_byte_for_byte(server, peer_factory, path, body):
    data = b'{"t": "hi \\ud83d", "big": 18446744073709551616, "x": 2.50}'
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    await peer.call("subscribe", {"channel": "chat:raw"})
    status, _, raw = await raw_http(server.server.api_port, api_request(path, body % data, b"X-API-Key: " + KEY))
    assert status == 200 and b"error" not in raw, raw
    while '"pub"' not in (frame := await peer.ws.recv()):
        pass  # the subscriber's own join
    assert data in frame.encode()


async def test_the_batch_bound_holds_at_the_redis_stream_door(redis_server):
    client = aioredis.Redis.from_url(REDIS_URL)
    prefix = redis_server.config.engine.redis.prefix
    try:
        commands = [{"publish": {"channel": "chat:b", "data": n}} for n in range(1001)]
        await client.xadd(f"{prefix}.api.stream", {"method": "batch", "payload": orjson.dumps({"commands": commands})})
        async with asyncio.timeout(scaled(10)):
            while not await client.xlen(f"{prefix}.api.dead"):
                await asyncio.sleep(0.02)
        (_, fields), = await client.xrange(f"{prefix}.api.dead")
        assert fields[b"error"].startswith(b"107") and b"max_batch_size" in fields[b"error"]
    finally:
        await client.aclose()
