"""The HTTP fallback transports (HTTP-streaming, SSE) and the emulation endpoint, byte by byte.

The SDK-level behaviour (centrifuge-js over every transport) is in test_js_sdk.py and
test_js_protobuf.py; here: the framing, the headers, the emulation endpoint's answers, the
end of a stream, bad input, limits, and emulation requests that reach another instance.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import (
    REDIS_URL,
    delete_prefix,
    proto_to_dict,
    read_varint,
    scaled,
    token,
    unique_prefix,
    varint,
    wait_until,
)
from procs import kill_instances, pipe, start_instance

from livegate.protocol import codes
from livegate.protocol.proto import client_pb2 as pb


def base_of(url: str) -> str:
    return url.replace("ws://", "http://").rsplit("/connection/", 1)[0]


class Stream:
    """One open HTTP-streaming or SSE response, read message by message."""

    def __init__(self, resp: aiohttp.ClientResponse, kind: str) -> None:
        self.resp = resp
        self.kind = kind
        self.buf = b""
        self.messages: list[Any] = []

    async def _more(self) -> bool:
        chunk = await self.resp.content.readany()
        if not chunk:
            return False
        self.buf += chunk
        if self.kind == "protobuf":
            while self.buf:
                try:
                    n, pos = read_varint(self.buf, 0)
                except IndexError:
                    break
                if len(self.buf) < pos + n:
                    break
                self.messages.append(proto_to_dict(pb.Reply.FromString(self.buf[pos:pos + n])))
                self.buf = self.buf[pos + n:]
        elif self.kind == "sse":
            while b"\n\n" in self.buf:
                event, self.buf = self.buf.split(b"\n\n", 1)
                data = [line[6:] for line in event.split(b"\n") if line.startswith(b"data: ")]
                assert all(line.startswith(b"data: ") for line in event.split(b"\n") if line.strip()), event
                self.messages += [orjson.loads(line) for line in b"\n".join(data).split(b"\n") if line]
        else:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                self.messages.append(orjson.loads(line))
        return True

    async def next(self, within: float = 3.0) -> Any:
        async with asyncio.timeout(scaled(within)):
            while not self.messages:
                if not await self._more():
                    raise EOFError("stream ended")
            return self.messages.pop(0)

    async def ended(self, within: float = 3.0) -> list[Any]:
        """Everything until the end of the stream."""
        async with asyncio.timeout(scaled(within)):
            while await self._more():
                pass
        rest, self.messages = self.messages, []
        return rest


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def open_stream(http: aiohttp.ClientSession, base: str, kind: str, commands: list[dict[str, Any]],
                      **headers: str) -> Stream:
    if kind == "sse":
        body = "\n".join(json.dumps(c) for c in commands)
        resp = await http.get(f"{base}/connection/sse", params={"cf_connect": body}, headers=headers)
    elif kind == "protobuf":
        body_b = b"".join(_delimited(pb.Command(**c).SerializeToString()) for c in commands)
        resp = await http.post(f"{base}/connection/http_stream", data=body_b,
                               headers={"Content-Type": "application/octet-stream", **headers})
    else:
        resp = await http.post(f"{base}/connection/http_stream", data="\n".join(json.dumps(c) for c in commands),
                               headers={"Content-Type": "application/json", **headers})
    assert resp.status == 200, await resp.text()
    return Stream(resp, kind)


def _delimited(message: bytes) -> bytes:
    return varint(len(message)) + message


async def emulate(http: aiohttp.ClientSession, base: str, session: str, node: str, commands: list[dict[str, Any]],
                  protobuf: bool = False) -> aiohttp.ClientResponse:
    if protobuf:
        data = b"".join(_delimited(pb.Command(**c).SerializeToString()) for c in commands)
        body = pb.EmulationRequest(node=node, session=session, data=data).SerializeToString()
        return await http.post(f"{base}/emulation", data=body, headers={"Content-Type": "application/octet-stream"})
    return await http.post(f"{base}/emulation", json={
        "session": session, "node": node, "data": "\n".join(json.dumps(c) for c in commands)})


@pytest.mark.parametrize("kind", ["json", "sse"])
async def test_a_json_stream_carries_the_session_with_emulated_commands(server, http, kind):
    base = base_of(server.url)
    stream = await open_stream(http, base, kind, [{"id": 1, "connect": {"token": token("ann")}}])
    headers = stream.resp.headers
    assert headers["Content-Type"].startswith("text/event-stream" if kind == "sse" else "application/json")
    assert headers["Transfer-Encoding"] == "chunked"
    assert "no-cache" in headers["Cache-Control"] and headers["X-Accel-Buffering"] == "no"
    connect = (await stream.next())["connect"]
    assert connect["node"] == server.node.uid
    assert len(connect["session"]) >= 32 and connect["session"] != connect["client"]
    # Later commands, several in one request, answered in order on the stream.
    resp = await emulate(http, base, connect["session"], connect["node"], [
        {"id": 2, "subscribe": {"channel": "chat:e"}}, {"id": 3, "publish": {"channel": "chat:e", "data": {"a": 1}}}])
    assert resp.status == 204
    assert (await stream.next())["id"] == 2
    got = [await stream.next() for _ in range(3)]  # the publish reply, the publication, our own join
    assert {"id": 3, "publish": {}} in got
    pub = next(m for m in got if "pub" in m.get("push", {}))["push"]
    assert pub["pub"]["data"] == {"a": 1} and pub["pub"]["offset"] == 1
    # The server API reaches it like any connection.
    await server.node.publish("chat:e", b'{"b":\n 2}')
    assert (await stream.next())["push"]["pub"]["data"] == {"b": 2}
    # A ping is answered through the emulation endpoint as well: an empty command.
    assert (await emulate(http, base, connect["session"], connect["node"], [{}])).status == 204


async def test_protobuf_over_http_streaming(server, http):
    base = base_of(server.url)
    stream = await open_stream(http, base, "protobuf", [{"id": 1, "connect": pb.ConnectRequest(token=token("pia"))}])
    assert stream.resp.headers["Content-Type"] == "application/octet-stream"
    connect = (await stream.next())["connect"]
    assert connect["session"] and connect["node"] == server.node.uid
    resp = await emulate(http, base, connect["session"], connect["node"],
                         [{"id": 2, "subscribe": pb.SubscribeRequest(channel="bin:p")}], protobuf=True)
    assert resp.status == 204
    assert (await stream.next())["id"] == 2
    await server.node.publish("bin:p", b"\x00\xffraw")
    assert (await stream.next())["push"]["pub"]["data"] == b"\x00\xffraw"


async def test_a_server_disconnect_ends_the_stream_with_a_disconnect_push(server, http):
    base = base_of(server.url)
    stream = await open_stream(http, base, "json", [{"id": 1, "connect": {"token": token("dan")}}])
    connect = (await stream.next())["connect"]
    [session] = server.node.hub.connections()
    session.close(codes.FORCE_RECONNECT)
    assert await stream.ended() == [{"push": {"disconnect": {"code": 3011, "reason": "force reconnect"}}}]
    await wait_until(lambda: not server.node.hub.connections(), what="the session's release")
    resp = await emulate(http, base, connect["session"], connect["node"], [{"id": 2, "presence": {"channel": "x"}}])
    assert resp.status == 404
    assert await resp.json() == {"error": "unknown or closed session"}


async def test_a_client_that_goes_away_is_released(server, http):
    base = base_of(server.url)
    stream = await open_stream(http, base, "json", [{"id": 1, "connect": {"token": token("eve")}}])
    await stream.next()
    assert len(server.server.clients) == 1
    stream.resp.close()
    await wait_until(lambda: not server.server.clients and not server.node.hub.connections(),
                     what="the session's release after the client left")


async def test_a_bad_connect_closes_the_stream_with_the_protocol_code(server, http):
    base = base_of(server.url)
    stream = await open_stream(http, base, "json", [{"id": 1, "connect": {"token": "not-a-jwt"}}])
    assert await stream.ended() == [{"push": {"disconnect": {"code": 3500, "reason": "invalid token"}}}]
    resp = await http.post(f"{base}/connection/http_stream", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 200
    assert await Stream(resp, "json").ended() == [{"push": {"disconnect": {"code": 3501, "reason": "bad request"}}}]


async def test_bad_requests_get_clear_http_errors(start_server, http):
    running = await start_server({"http_stream": {"max_request_body_size": 100}, "sse": {"max_request_body_size": 100},
                                  "emulation": {"max_request_body_size": 200}})
    base = base_of(running.url)
    assert (await http.get(f"{base}/connection/http_stream")).status == 405
    assert (await http.post(f"{base}/connection/http_stream", data=b"x" * 101,
                            headers={"Content-Type": "application/json"})).status == 413
    assert (await http.get(f"{base}/connection/sse")).status == 400
    assert (await http.get(f"{base}/connection/sse", params={"cf_connect": "x" * 101})).status == 413
    assert (await http.put(f"{base}/connection/sse")).status == 405
    assert (await http.get(f"{base}/emulation")).status == 405
    for body, why in [(b"[1]", "body must be a JSON object"), (b"nope", "body is not JSON"),
                      (b'{"session":"","data":"{}"}', "session must be a non-empty string"),
                      (b'{"session":"s","data":{}}', "data must be a string (the encoded commands)"),
                      (b'{"session":"s","node":1,"data":"{}"}', "node must be a string")]:
        resp = await http.post(f"{base}/emulation", data=body, headers={"Content-Type": "application/json"})
        assert (resp.status, await resp.json()) == (400, {"error": why}), body
    resp = await http.post(f"{base}/emulation", data=b"\xff\xff", headers={"Content-Type": "application/octet-stream"})
    assert (resp.status, await resp.json()) == (400, {"error": "malformed EmulationRequest"})
    resp = await http.post(f"{base}/emulation", json={"session": "s", "data": "x" * 300})
    assert resp.status == 413
    resp = await http.post(f"{base}/emulation", json={"session": "no-such", "node": "elsewhere", "data": "{}"})
    assert (resp.status, await resp.json()) == (404, {"error": "unknown or closed session"})
    assert (await http.get(f"{base}/nope")).status == 404
    # HTTP/1.0 cannot carry a chunked stream: a clear answer, not a server error.
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /connection/sse?cf_connect=%7B%7D HTTP/1.0\r\nHost: x\r\n\r\n")
    assert (await reader.readline()).split()[1] == b"505"
    writer.close()
    assert (await http.get(f"{base}/health")).status == 200


async def test_origin_and_cors(start_server, http):
    running = await start_server({"client": {"allowed_origins": ["https://app.example"]}})
    base = base_of(running.url)
    pre = await http.options(f"{base}/connection/http_stream", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert pre.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "content-type"
    stream = await open_stream(http, base, "json", [{"id": 1, "connect": {"token": token("ola")}}],
                               Origin="https://app.example")
    assert stream.resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    await stream.next()
    for path in ("/connection/http_stream", "/emulation"):
        resp = await http.post(f"{base}{path}", data=b"{}", headers={"Origin": "https://evil.example",
                                                                     "Content-Type": "application/json"})
        assert resp.status == 403, path
    resp = await http.get(f"{base}/connection/sse", params={"cf_connect": "{}"}, headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    assert running.node.hub.connections() != [] and len(running.server.clients) == 1


async def test_stream_lifetime_and_drain_end_streams_with_reconnect_codes(start_server, http):
    running = await start_server({"http_stream": {"max_lifetime": "300ms"}})
    base = base_of(running.url)
    stream = await open_stream(http, base, "json", [{"id": 1, "connect": {"token": token("lou")}}])
    await stream.next()
    assert await stream.ended(within=3) == [{"push": {"disconnect": {"code": 3001, "reason": "shutdown"}}}]
    sse = await open_stream(http, base, "sse", [{"id": 1, "connect": {"token": token("lou")}}])
    await sse.next()
    await running.server.drain(0)
    assert await sse.ended() == [{"push": {"disconnect": {"code": 3001, "reason": "shutdown"}}}]


async def test_websocket_can_be_disabled_while_streams_work(start_server, http):
    import websockets
    running = await start_server({"websocket": {"disabled": True}})
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(running.url)
    assert err.value.response.status_code == 404
    stream = await open_stream(http, base_of(running.url), "json", [{"id": 1, "connect": {"token": token("wes")}}])
    assert "connect" in await stream.next()


async def test_metrics_count_connections_by_transport(server, http, peer_factory):
    base = base_of(server.url)
    stream = await open_stream(http, base, "json", [{"id": 1, "connect": {"token": token("m")}}])
    await stream.next()
    sse = await open_stream(http, base, "sse", [{"id": 1, "connect": {"token": token("m")}}])
    await sse.next()
    await peer_factory(server.url)
    text = await (await http.get(f"http://127.0.0.1:{server.server.api_port}/metrics")).text()
    for transport in ("http_stream", "sse", "websocket"):
        assert f'livegate_transport_connections{{codec="json",transport="{transport}"}} 1.0' in text, text


# -- several instances --------------------------------------------------------------------------


@pytest.fixture
async def two_instances(tmp_path, redis_client):
    prefix = unique_prefix()
    override = {"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}}}
    instances = [await start_instance(tmp_path, override, name) for name in ("a", "b")]
    yield instances
    await kill_instances(instances)
    await delete_prefix(redis_client, prefix)


async def test_emulation_requests_reach_the_session_on_another_instance(two_instances, http):
    a, b = two_instances
    base_a, base_b = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"
    stream = await open_stream(http, base_a, "json", [{"id": 1, "connect": {"token": token("zed")}}])
    connect = (await stream.next())["connect"]
    # Instance b learns of instance a from its heartbeats (a few seconds at most).
    deadline = asyncio.get_running_loop().time() + scaled(10)
    while True:
        resp = await emulate(http, base_b, connect["session"], connect["node"],
                             [{"id": 2, "subscribe": {"channel": "chat:far"}}])
        if resp.status == 204 or asyncio.get_running_loop().time() > deadline:
            break
        assert resp.status == 404
        await asyncio.sleep(0.2)
    assert resp.status == 204, await resp.text()
    assert (await stream.next())["id"] == 2
    resp = await emulate(http, base_b, connect["session"], connect["node"],
                         [{"id": 3, "publish": {"channel": "chat:far", "data": {"via": "b"}}}])
    assert resp.status == 204
    got = [await stream.next() for _ in range(3)]  # the publish reply, the publication, our own join
    assert {"id": 3, "publish": {}} in got
    assert any(m.get("push", {}).get("pub", {}).get("data") == {"via": "b"} for m in got), got
    # A session the other instance does not hold: a clear 404 from the instance asked.
    resp = await emulate(http, base_b, "no-such-session", connect["node"], [{"id": 4, "presence": {"channel": "c"}}])
    assert (resp.status, await resp.json()) == (404, {"error": "unknown or closed session"})


# -- unidirectional ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uni_http_stream", "uni_sse"])
async def test_unidirectional_streams_get_pushes_of_server_side_subscriptions(start_server, http, kind):
    running = await start_server({kind: {"enabled": True}})
    base = base_of(running.url)
    connect = json.dumps({"token": token("uma", channels=["chat:uni"]), "data": {"hello": 1}})
    if kind == "uni_sse":
        resp = await http.get(f"{base}/connection/uni_sse", params={"cf_connect": connect})
    else:
        resp = await http.post(f"{base}/connection/uni_http_stream", data=connect,
                               headers={"Content-Type": "application/json"})
    assert resp.status == 200
    stream = Stream(resp, "sse" if kind == "uni_sse" else "json")
    first = await stream.next()
    assert set(first) == {"connect"}  # a push, without the Reply wrapper
    result = first["connect"]
    assert result["pong"] is False and "session" not in result
    assert result["subs"]["chat:uni"]["recoverable"] is True
    await running.node.publish("chat:uni", b'{"n":1}')
    msg = await stream.next()
    while "join" in msg:  # its own join in chat (join_leave)
        msg = await stream.next()
    assert msg == {"channel": "chat:uni", "pub": {"data": {"n": 1}, "offset": 1}}
    [session] = running.node.hub.connections()
    assert session.wire.unidirectional and session.pong_deadline == 0
    session.close(codes.FORCE_DISCONNECT)
    assert await stream.ended() == [{"disconnect": {"code": 3503, "reason": "force disconnect"}}]


async def test_unidirectional_bad_connects(start_server, http):
    running = await start_server({"uni_http_stream": {"enabled": True}, "uni_sse": {"enabled": True}})
    base = base_of(running.url)
    resp = await http.post(f"{base}/connection/uni_http_stream", data=b"[1]", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    resp = await http.get(f"{base}/connection/uni_sse", params={"cf_connect": '{"token":"nope"}'})
    assert await Stream(resp, "sse").ended() == [{"disconnect": {"code": 3500, "reason": "invalid token"}}]
    assert (await http.post(f"{base}/emulation", json={"session": "x", "data": "{}"})).status == 404


class PathBalancer:
    """An HTTP-aware balancer for one test: a connection whose first request is an emulation
    POST goes to ``emulation_port``, any other to ``stream_port`` (so every command after the
    connect reaches the instance that does not hold the session)."""

    def __init__(self, stream_port: int, emulation_port: int) -> None:
        self.ports = (stream_port, emulation_port)
        self.server: asyncio.Server | None = None
        self.routed: list[tuple[str, int]] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        path = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else ""
        port = self.ports[1] if path.startswith("/emulation") else self.ports[0]
        self.routed.append((path, port))
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        up_writer.write(line)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_centrifuge_js_behind_a_balancer_that_splits_its_requests(two_instances, http):
    from test_js_sdk import NodeScript

    a, b = two_instances
    balancer = PathBalancer(a.port, b.port)
    port = await balancer.start()
    try:
        # b must know a (heartbeats) before it can forward: wait until it answers 404, not "unknown node".
        stream = await open_stream(http, f"http://127.0.0.1:{a.port}", "json", [{"id": 1, "connect": {"token": token("w")}}])
        connect = (await stream.next())["connect"]
        deadline = asyncio.get_running_loop().time() + scaled(10)
        while (await emulate(http, f"http://127.0.0.1:{b.port}", connect["session"], connect["node"], [{}])).status != 204:
            assert asyncio.get_running_loop().time() < deadline, "instance b never learned of instance a"
            await asyncio.sleep(0.2)
        stream.resp.close()
        script = await NodeScript.start("pubsub.mjs", url=f"ws://127.0.0.1:{port}/connection/websocket",
                                        transport="http_stream", token=token("alice"), channel="chat:lb",
                                        data={"text": "through b"})
        try:
            await script.finish()
        finally:
            script.kill()
        assert script.of("connected")[0]["transport"] == "http_stream"
        assert only_one(script.of("own_publication"))["data"] == {"text": "through b"}
        assert ("/connection/http_stream", a.port) in balancer.routed
        assert ("/emulation", b.port) in balancer.routed
        assert all(port_ == b.port for path, port_ in balancer.routed if path == "/emulation")
    finally:
        await balancer.close()


def only_one(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(events) == 1, events
    return events[0]


async def test_a_peer_that_never_finishes_its_request_head_is_cut_off(server, monkeypatch):
    from livegate.server import front
    monkeypatch.setattr(front, "HEAD_TIMEOUT", 0.2)
    host, port = base_of(server.url).removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    async with asyncio.timeout(scaled(3)):
        assert await reader.read() == b""  # closed by the server
    writer.close()
    # Big heads are refused at once.
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (front.MAX_HEAD + 10))
    async with asyncio.timeout(scaled(3)):
        assert await reader.read() == b""
    writer.close()


async def test_unidirectional_websocket(start_server):
    import websockets
    running = await start_server({"uni_websocket": {"enabled": True}})
    url = running.url.replace("/connection/websocket", "/connection/uni_websocket")
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"token": token("uwe", channels=["feed:u"])}))
        first = orjson.loads(await ws.recv())
        assert set(first) == {"connect"} and first["connect"]["pong"] is False
        assert "feed:u" in first["connect"]["subs"]
        await ws.send('{"id":2,"publish":{"channel":"feed:u","data":{}}}')  # the client only listens: ignored
        await running.node.publish("feed:u", b'{"n":1}')
        assert orjson.loads(await ws.recv()) == {"channel": "feed:u", "pub": {"data": {"n": 1}, "offset": 1}}
        [session] = running.node.hub.connections()
        assert session.wire.name == "uni_websocket/json"
        session.close(codes.FORCE_RECONNECT)
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 3011
    async with websockets.connect(url) as ws:
        await ws.send("[1]")
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 3501


# -- regressions found in review --------------------------------------------------------------


async def test_a_body_that_arrives_in_pieces_is_read_whole(server):
    host, port = base_of(server.url).removeprefix("http://").split(":")
    body = json.dumps({"id": 1, "connect": {"token": token("pat")}}).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /connection/http_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[:20])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(body[20:])
    async with asyncio.timeout(scaled(3)):
        received = b""
        while b'"connect"' not in received and b"disconnect" not in received:
            received += await reader.read(4096)
    assert b'{"id":1,"connect":{"client"' in received
    writer.close()


async def test_a_client_that_leaves_during_the_release_leaves_nothing_behind(server, http, monkeypatch):
    presence = server.node.presence
    original = presence.remove_presence

    async def slow_remove(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - as a slow Redis would be
        await asyncio.sleep(0.3)
        return await original(*args, **kwargs)

    monkeypatch.setattr(presence, "remove_presence", slow_remove)
    base = base_of(server.url)
    stream = await open_stream(http, base, "json", [{"id": 1, "connect": {"token": token("lea")}}])
    connect = (await stream.next())["connect"]
    await emulate(http, base, connect["session"], connect["node"], [
        {"id": 2, "subscribe": {"channel": "chat:lv1"}}, {"id": 3, "subscribe": {"channel": "chat:lv2"}}])
    got = [await stream.next() for _ in range(4)]  # two replies, two joins of its own
    assert {m.get("id") for m in got} >= {2, 3}
    assert sorted(server.node.hub.channels()) == ["chat:lv1", "chat:lv2"]
    [session] = server.node.hub.connections()
    session.close(codes.FORCE_RECONNECT)
    assert "disconnect" in (await stream.next())["push"]  # the client leaves at once, during the release
    stream.resp.close()
    await wait_until(lambda: not server.node.hub.channels() and not server.server.clients, within=3,
                     what="the release to finish although the client left")


async def test_plain_http_connections_are_not_kept_alive(server):
    host, port = base_of(server.url).removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    async with asyncio.timeout(scaled(3)):
        answer = await reader.read()  # until the server closes: after the first answer
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
    assert answer.count(b"HTTP/1.1") == 1  # the upgrade was never answered by aiohttp (a 404)
    writer.close()


async def test_unidirectional_clients_get_one_message_per_frame_and_event(start_server, http):
    import websockets
    running = await start_server({"uni_websocket": {"enabled": True}, "uni_sse": {"enabled": True}})
    url = running.url.replace("/connection/websocket", "/connection/uni_websocket")
    pretty = json.dumps({"token": token("ivo", channels=["feed:many"])}, indent=2)  # newlines in it
    async with websockets.connect(url) as ws:
        await ws.send(pretty)
        assert "connect" in orjson.loads(await ws.recv())
        resp = await http.get(f"{base_of(running.url)}/connection/uni_sse", params={"cf_connect": pretty})
        sse_raw = b""
        while b'"connect"' not in sse_raw:
            sse_raw += await resp.content.readany()
        await asyncio.gather(*(running.node.publish("feed:many", b'{"n":%d}' % n) for n in range(5)))
        got = [orjson.loads(await ws.recv()) for _ in range(5)]  # each message one JSON value
        assert [m["pub"]["data"]["n"] for m in got] == [0, 1, 2, 3, 4]
        async with asyncio.timeout(scaled(3)):
            while sse_raw.count(b'"pub"') < 5:
                sse_raw += await resp.content.readany()
        events = [e for e in sse_raw.split(b"\n\n") if e.strip()]
        assert all(e.count(b"data: ") == 1 for e in events), events  # one data line per event
        resp.close()
