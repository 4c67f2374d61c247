"""A hostile client and a careless backend against a real server: every input that once
crashed a handler, answered with the wrong code or locked out a legitimate client gets a
clean, documented answer now (issue 10 of the tracker: defects 7 to 10)."""

from __future__ import annotations

import asyncio

import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import REDIS_URL, SECRET, scaled, unique_prefix

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
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
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
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
