"""The API port against hostile peers: connections that send nothing, trickle a request or
stall in its body are closed after ``http_api.read_timeout``, idle keep-alive ones after
``http_api.idle_timeout``; batches are bounded; bodies must be declared as JSON; malformed
input gets a 4xx, never a 500 or a traceback in the log. Real servers, raw sockets."""

from __future__ import annotations

import asyncio
import gzip
import logging
import resource
import time

import orjson
import pytest
from conftest import dur, scaled, wait_until

from livegate.api import commands

KEY = b"test-api-key"


def post(path: str, body: bytes, *headers: bytes, content_type: bytes | None = b"application/json",
         close: bool = True) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", f"Content-Length: {len(body)}".encode(),
             b"X-API-Key: " + KEY, *headers]
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join([*lines, b"", body])


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, headers lower-cased, body)."""
    async with asyncio.timeout(scaled(timeout)):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n")[1:]:
            if b":" in line:
                name, _, value = line.partition(b":")
                headers[name.decode().strip().lower()] = value.decode().strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
    return status, headers, body


async def exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Wait for the server to close the connection; returns what it sent before (fails after
    ``scaled(within)`` seconds)."""
    received = b""
    try:
        async with asyncio.timeout(scaled(within)):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open past {scaled(within):g}s") from None
    return received


@pytest.fixture
def no_tracebacks(caplog):  # noqa: ANN001, ANN201
    """Fails the test if anything logged an error or a traceback."""
    caplog.set_level(logging.DEBUG, logger="livegate")
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    yield caplog
    records = caplog.get_records("call")  # in teardown, caplog.records holds the teardown's only
    bad = [r for r in records if r.levelno >= logging.ERROR or r.exc_info or r.exc_text]
    assert not bad, [(r.name, r.getMessage(), r.exc_info) for r in bad]


# -- timeouts -----------------------------------------------------------------------------------


async def test_idle_api_sockets_are_closed_and_do_not_stop_websocket_handshakes(start_server, peer_factory,
                                                                               no_tracebacks):
    running = await start_server({"http_api": {"read_timeout": dur(1), "idle_timeout": dur(30)}})
    api_port = running.server.api_port
    opened = time.monotonic()
    idle = [await asyncio.open_connection("127.0.0.1", api_port) for _ in range(300)]
    try:
        # Both listeners share the process's descriptors: the client port still shakes hands.
        peers = [await peer_factory(running.url) for _ in range(20)]
        for n, peer in enumerate(peers):
            assert "connect" in await peer.connect(f"user{n}")
        status, _, _ = await exchange(api_port, post("/api/info", b"{}"))
        assert status == 200
        # Every silent socket is closed by the server once read_timeout has passed, not before.
        sent = await asyncio.gather(*(closed_by_server(reader, within=5) for reader, _ in idle))
        assert sent == [b""] * 300
        assert time.monotonic() - opened >= scaled(1) - 0.05
        for peer in peers:  # the WebSocket connections were not touched
            await peer.sync()
    finally:
        for _, writer in idle:
            writer.close()


async def test_a_trickled_request_head_is_closed_at_read_timeout(start_server, no_tracebacks):
    running = await start_server({"http_api": {"read_timeout": dur(1)}})
    reader, writer = await asyncio.open_connection("127.0.0.1", running.server.api_port)
    started = time.monotonic()
    writer.write(b"POST /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle() -> None:  # slowloris: one header byte every 100 ms, never the end of the head
        try:
            while True:
                await asyncio.sleep(scaled(0.1))
                writer.write(b"X")
                await writer.drain()
        except ConnectionError:
            pass

    trickling = asyncio.get_running_loop().create_task(trickle())
    try:
        assert await closed_by_server(reader, within=4) == b""
        assert time.monotonic() - started >= scaled(1) - 0.05  # trickling did not extend it, nor cut it short
    finally:
        trickling.cancel()
        writer.close()


async def test_a_stalled_body_is_closed_at_read_timeout(start_server, no_tracebacks):
    running = await start_server({"http_api": {"read_timeout": dur(1)}})
    reader, writer = await asyncio.open_connection("127.0.0.1", running.server.api_port)
    started = time.monotonic()
    head = post("/api/publish", b"", close=False).replace(b"Content-Length: 0", b"Content-Length: 100")
    writer.write(head + b'{"channel":')
    assert await closed_by_server(reader, within=4) == b""
    assert time.monotonic() - started >= scaled(1) - 0.05
    writer.close()
    # The server goes on serving.
    assert (await exchange(running.server.api_port, post("/api/info", b"{}")))[0] == 200


async def test_an_idle_keep_alive_connection_lasts_idle_timeout(start_server, no_tracebacks):
    running = await start_server({"http_api": {"read_timeout": dur(0.5), "idle_timeout": dur(1.5)}})
    reader, writer = await asyncio.open_connection("127.0.0.1", running.server.api_port)
    try:
        writer.write(post("/api/info", b"{}", close=False))
        assert (await read_response(reader))[0] == 200
        # Longer than read_timeout between requests: the keep-alive connection is still there.
        await asyncio.sleep(scaled(0.8))
        writer.write(post("/api/info", b"{}", close=False))
        assert (await read_response(reader))[0] == 200
        answered = time.monotonic()
        assert await closed_by_server(reader, within=4) == b""
        assert time.monotonic() - answered >= scaled(1.5) - 0.05
    finally:
        writer.close()


async def test_an_enormous_content_length_is_413_at_once(start_server, no_tracebacks):
    running = await start_server({"http_api": {"read_timeout": "60s"}})
    request = post("/api/publish", b"", close=False).replace(b"Content-Length: 0", b"Content-Length: 99999999999999")
    started = time.monotonic()
    status, headers, _ = await exchange(running.server.api_port, request, timeout=5)
    assert status == 413 and time.monotonic() - started < scaled(5)
    assert headers["x-content-type-options"] == "nosniff"


# -- the open files limit ------------------------------------------------------------------------


async def test_the_open_files_limit_is_raised_to_the_hard_limit(start_server, caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(hard - 1, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        caplog.set_level(logging.INFO, logger="livegate.server")
        await start_server()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        logged = [r for r in caplog.records if r.getMessage() == "open files limit"]
        assert [(r.__dict__["soft"], r.__dict__["hard"]) for r in logged] == [(hard, hard)]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), hard))


# -- batches ---------------------------------------------------------------------------------------


async def test_a_batch_over_max_batch_size_is_107_naming_the_limit(server, no_tracebacks):
    port = server.server.api_port
    allowed = orjson.dumps({"commands": [{"info": {}}] * 1000})
    status, _, body = await exchange(port, post("/api/batch", allowed))
    assert status == 200 and len(orjson.loads(body)["replies"]) == 1000
    for parallel in (False, True):
        over = orjson.dumps({"commands": [{"info": {}}] * 1001, "parallel": parallel})
        status, _, body = await exchange(port, post("/api/batch", over))
        error = orjson.loads(body)["error"]
        assert status == 200 and error["code"] == 107 and "http_api.max_batch_size (1000)" in error["message"]


async def test_a_parallel_batch_runs_at_most_max_batch_concurrency_at_once(start_server, monkeypatch,
                                                                         no_tracebacks):
    running = await start_server({"http_api": {"max_batch_concurrency": 4}})
    real_info = commands.METHODS["info"]
    now = peak = 0

    async def counted_info(node, req):  # noqa: ANN001, ANN202 - the real method, counted and slowed
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        try:
            await asyncio.sleep(scaled(0.02))
            return await real_info(node, req)
        finally:
            now -= 1

    monkeypatch.setitem(commands.METHODS, "info", counted_info)
    batch = [{"info": {}} if n % 5 else {"channels": {}} for n in range(40)]
    batch[7] = {"frobnicate": {}}
    status, _, body = await exchange(running.server.api_port,
                                     post("/api/batch", orjson.dumps({"commands": batch, "parallel": True})))
    replies = orjson.loads(body)["replies"]
    assert status == 200 and peak == 4
    # In the order of the commands, whatever order they finished in.
    assert [next(iter(r)) for r in replies] == [next(iter(c)) if n != 7 else "error" for n, c in enumerate(batch)]
    assert replies[7]["error"]["code"] == 104 and "nodes" in replies[1]["info"]
    # Sequential batches are not affected: one command at a time.
    peak = 0
    status, _, body = await exchange(running.server.api_port, post("/api/batch", orjson.dumps({"commands": batch})))
    assert status == 200 and peak == 1 and len(orjson.loads(body)["replies"]) == 40


# -- Content-Type and response headers -----------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, b"text/plain", b"application/x-www-form-urlencoded",
                                          b"multipart/form-data; boundary=x", b"application/json; charset=latin-1",
                                          b"application/jsonx", b"garbage;;="])
async def test_a_body_not_declared_as_json_is_415(server, content_type, no_tracebacks):
    status, headers, body = await exchange(server.server.api_port,
                                           post("/api/publish", b'{"channel":"chat:x","data":{}}',
                                                content_type=content_type))
    assert (status, body) == (415, b"Content-Type must be application/json\n")
    assert headers["content-type"].startswith("text/plain") and headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("content_type", [b"application/json", b"application/json; charset=utf-8",
                                          b'Application/JSON;Charset="UTF-8"', b"application/octet-stream"])
async def test_a_body_declared_as_json_is_taken(server, content_type):
    status, _, body = await exchange(server.server.api_port,
                                     post("/api/publish", b'{"channel":"chat:x","data":{}}', content_type=content_type))
    assert status == 200 and "result" in orjson.loads(body)


async def test_no_body_needs_no_content_type(server):
    status, _, body = await exchange(server.server.api_port, post("/api/info", b"", content_type=None))
    assert status == 200 and "nodes" in orjson.loads(body)["result"]


async def test_every_response_says_nosniff_and_no_version(server, no_tracebacks):
    port = server.server.api_port
    get = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    requests = [
        post("/api/info", b"{}"),                                                  # 200
        post("/api/info", b"{}").replace(b"X-API-Key: " + KEY, b"X-API-Key: no"),   # 401
        post("/api/frobnicate", b"{}"),                                            # 404
        get % b"/api/publish",                                                     # 405
        post("/api/publish", b"{not json"),                                        # 400 (ours)
        post("/api/publish", b"x" * 2_000_000),                                    # 413
        post("/api/publish", b"{}", content_type=b"text/plain"),                   # 415
        b"POST /api/info HTTP/1.1\r\nBad Header\r\n\r\n",                          # 400 (aiohttp's parser)
        get % b"/metrics", get % b"/health", get % b"/ready", get % b"/api/openapi.json",
    ]
    statuses = []
    for request in requests:
        status, headers, _ = await exchange(port, request)
        statuses.append(status)
        assert headers.get("x-content-type-options") == "nosniff", (request[:40], headers)
        assert headers.get("server") == "livegate", (request[:40], headers)
    assert statuses == [200, 401, 404, 405, 400, 413, 415, 400, 200, 200, 200, 200]


async def test_the_websocket_port_names_no_version_either(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
    handshake = (f"GET {server.config.websocket.handler_prefix} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    writer.write(handshake)
    async with asyncio.timeout(scaled(5)):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 101") and b"\r\nServer: livegate\r\n" in head
    status, headers, _ = await exchange(server.server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 200 and headers["server"] == "livegate"


# -- malformed input: a 4xx, never a 500 or a traceback --------------------------------------------


async def test_a_body_that_is_not_utf8_is_400(server, no_tracebacks):
    status, _, body = await exchange(server.server.api_port,
                                     post("/api/publish", b'{"channel":"chat:x","data":"\xff\xfe\x80"}'))
    assert status == 400 and b"UTF-8" in body


@pytest.mark.parametrize("opening, closing", [(b"[", b"]"), (b'{"a":', b"}")])
async def test_a_body_nested_100000_deep_is_400(server, opening, closing, no_tracebacks):
    deep = opening * 100_000 + (b"1" if opening != b"[" else b"") + closing * 100_000
    for path, body in [("/api/publish", deep), ("/api/publish", b'{"channel":"chat:x","data":' + deep + b"}"),
                       ("/api", b'{"method":"publish","params":' + deep + b"}")]:
        status, _, text = await exchange(server.server.api_port, post(path, body))
        assert status == 400 and text.startswith(b"body is not JSON"), (path, status, text[:100])
    assert (await exchange(server.server.api_port, post("/api/info", b"{}")))[0] == 200


@pytest.mark.parametrize("path", [b"/api/%00", b"/api/pub%C3%A9lish", b"/api/..%2F..%2Fetc", b"/api/a%20b",
                                  b"/api/" + b"x" * 5000, b"/api/publish%ff", b"/api/\xc3\xa9", b"/api/a\tb"])
async def test_a_method_name_with_odd_characters_is_a_clean_4xx(server, path, no_tracebacks):
    request = post("/api/info", b"{}").replace(b"/api/info", path, 1)
    status, headers, _ = await exchange(server.server.api_port, request)
    assert status in (400, 404), status
    assert headers["server"] == "livegate"
    assert (await exchange(server.server.api_port, post("/api/info", b"{}")))[0] == 200


async def test_compressed_bodies_that_do_not_decode_or_swell_past_the_limit_are_4xx(server, no_tracebacks):
    port = server.server.api_port
    cases = [(b"garbage!!", 400), (gzip.compress(b" " * 50_000_000), 413), (gzip.compress(b"{}"), 200)]
    for body, expected in cases:
        status, _, _ = await exchange(port, post("/api/info", body, b"Content-Encoding: gzip"))
        assert status == expected, (body[:10], status)


async def test_a_client_gone_in_the_middle_of_its_body_leaves_no_traceback(server, no_tracebacks):
    aiohttp_server = server.server._api_runner.server
    for n in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.server.api_port)
        head = post("/api/publish", b"", close=False).replace(b"Content-Length: 0", b"Content-Length: 1000")
        writer.write(head + b'{"channel":')
        await wait_until(lambda n=n: aiohttp_server.requests_count == n + 1, what="the request is being read")
        writer.transport.abort()
    # Their handlers are done (and would have logged) once aiohttp has forgotten them.
    await wait_until(lambda: not aiohttp_server.connections, what="aborted requests handled")
    assert (await exchange(server.server.api_port, post("/api/info", b"{}")))[0] == 200
