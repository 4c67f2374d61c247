"""Hand-written frames: every malformed input gets the protocol's answer, and harms no one else."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets
from conftest import token


async def expect_close(peer, code, reason=None):
    got_code, got_reason = await peer.closed()
    assert got_code == code
    if reason is not None:
        assert got_reason == reason


@pytest.mark.parametrize("frame", [
    "{not json",
    "[1,2,3]",
    '{"id":1,"frobnicate":{}}',
    '{"id":1,"connect":{},"subscribe":{}}',
    '{"id":-1,"connect":{}}',
    '{"id":"1","connect":{}}',
    '{"id":4294967296,"connect":{}}',
    '{"connect":{}}',
    "   ",
    '{"id":1,"connect":"token"}',
])
async def test_malformed_frames_close_with_bad_request(server, peer_factory, frame):
    peer = await peer_factory(server.url)
    await peer.send_raw(frame)
    await expect_close(peer, 3501, "bad request")


async def test_binary_frame_closes_with_bad_request(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.send_raw(orjson.dumps({"id": 1, "connect": {"token": token("a")}}))
    await expect_close(peer, 3501)


async def test_frame_over_size_limit_closes_with_1009(start_server, peer_factory):
    running = await start_server({"websocket": {"message_size_limit": 1024}})
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    await peer.send({"id": 2, "publish": {"channel": "chat:x", "data": {"blob": "x" * 2000}}})
    await expect_close(peer, 1009)


async def test_command_before_connect(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.send({"id": 1, "subscribe": {"channel": "chat:x"}})
    await expect_close(peer, 3501)


async def test_second_connect(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    await peer.send({"id": 2, "connect": {"token": token("alice")}})
    await expect_close(peer, 3501)


@pytest.mark.parametrize("command", [
    {"subscribe": {"channel": 123}},
    {"subscribe": {"channel": "chat:x", "offset": "5"}},
    {"subscribe": {"channel": "chat:x", "recover": "yes"}},
    {"history": {"channel": "chat:x", "limit": 1.5}},
    {"publish": {"channel": ["chat:x"], "data": {}}},
    {"subscribe": {"channel": ""}},
])
async def test_wrong_field_types_close_with_bad_request(server, peer_factory, command):
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    await peer.send({"id": 2, **command})
    await expect_close(peer, 3501)


async def test_invalid_channel_names_get_error_replies(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    too_long = await peer.call("subscribe", {"channel": "chat:" + "x" * 300})
    assert too_long["error"]["code"] == 107 and too_long["error"]["message"]
    non_ascii = await peer.call("subscribe", {"channel": "chat:héllo"})
    assert non_ascii["error"]["code"] == 107
    unknown_ns = await peer.call("subscribe", {"channel": "nope:x"})
    assert unknown_ns["error"] == {"code": 102, "message": "unknown channel"}
    ok = await peer.call("subscribe", {"channel": "chat:fine", "some_future_field": 1})
    assert "subscribe" in ok  # unknown fields are ignored, the connection is still fine


async def test_send_without_handler_closes_not_available(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    await peer.send({"send": {"data": {"x": 1}}})
    await expect_close(peer, 3508)


async def test_commands_in_one_frame_are_answered_in_order_in_one_frame(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.send(
        {"id": 1, "connect": {"token": token("alice")}},
        {"id": 2, "subscribe": {"channel": "chat:batch"}},
        {"id": 3, "publish": {"channel": "chat:batch", "data": {"n": 1}}},
        {"id": 4, "history": {"channel": "chat:batch", "limit": 10}},
    )
    messages = await peer.recv_messages()
    ids = [m.get("id") for m in messages if "id" in m]
    assert ids == [1, 2, 3, 4]
    history = next(m for m in messages if m.get("id") == 4)["history"]
    assert [p["data"] for p in history["publications"]] == [{"n": 1}]
    # the subscribe reply precedes every push of that channel
    first_push = next(i for i, m in enumerate(messages) if "push" in m)
    assert first_push > ids.index(2)


async def test_failed_connect_skips_the_rest_of_the_frame(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.send(
        {"id": 1, "connect": {"token": token("alice", ttl=-10)}},
        {"id": 2, "subscribe": {"channel": "chat:x"}},
    )
    messages = await peer.recv_messages()
    assert messages == [{"id": 1, "error": {"code": 109, "message": "token expired"}}]
    await peer.send({"id": 3, "connect": {"token": token("alice")}})
    assert "connect" in await peer.reply(3)
    assert peer.pushes == []  # no reply to the skipped subscribe came before this one, in a frame of its own


async def test_bad_token_closes_with_invalid_token(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.send({"id": 1, "connect": {"token": "not.a.jwt"}})
    await expect_close(peer, 3500, "invalid token")


async def test_none_algorithm_token_is_rejected(server, peer_factory):
    import jwt
    forged = jwt.encode({"sub": "admin"}, key=None, algorithm="none")
    peer = await peer_factory(server.url)
    await peer.send({"id": 1, "connect": {"token": forged}})
    await expect_close(peer, 3500)


async def test_bad_input_does_not_harm_other_connections(server, peer_factory):
    good = await peer_factory(server.url)
    await good.connect("good")
    await good.call("subscribe", {"channel": "chat:calm"})
    for frame in ["{oops", b"\x00\x01", '{"id":1,"zap":{}}']:
        bad = await peer_factory(server.url)
        await bad.send_raw(frame)
        await bad.closed()
    reply = await good.call("publish", {"channel": "chat:calm", "data": {"still": "here"}})
    assert reply.get("publish") == {}


async def test_pong_without_ping_is_ignored(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    await peer.send_raw("{}")
    reply = await peer.call("presence_stats", {"channel": "chat:x"})
    assert "error" in reply or "presence_stats" in reply  # still talking


async def test_v1_ping_command_is_answered(server, peer_factory):
    peer = await peer_factory(server.url)
    await peer.connect("alice")
    assert await peer.call("ping", {}) == {"id": 2, "ping": {}}


async def test_origin_check(start_server):
    running = await start_server({"client": {"allowed_origins": ["https://app.example.com", "https://*.example.org"]}})
    for origin in ["https://app.example.com", "https://x.example.org"]:
        async with websockets.connect(running.url, origin=origin) as ws:
            await ws.send(orjson.dumps({"id": 1, "connect": {"token": token("a")}}).decode())
            assert "connect" in orjson.loads(await ws.recv())
    with pytest.raises(websockets.InvalidStatus) as err:
        await websockets.connect(running.url, origin="https://evil.example.net")
    assert err.value.response.status_code == 403
    async with websockets.connect(running.url) as ws:  # no Origin: not a browser
        await ws.send(orjson.dumps({"id": 1, "connect": {"token": token("a")}}).decode())
        assert "connect" in orjson.loads(await ws.recv())


async def test_same_host_origin_allowed_without_list(server):
    port = server.server.port
    async with websockets.connect(server.url, origin=f"http://127.0.0.1:{port}") as ws:
        await ws.send('{"id":1,"connect":{}}')
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(server.url, origin="http://elsewhere.test")


async def test_subprotocol_picks_the_codec(server):
    async with websockets.connect(server.url, subprotocols=["centrifuge-protobuf"]) as ws:
        assert ws.subprotocol == "centrifuge-protobuf"
        await ws.send('{"id":1,"connect":{}}')  # a text frame to a Protobuf connection
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 3501
    async with websockets.connect(server.url, subprotocols=["centrifuge-json"]) as ws:
        assert ws.subprotocol == "centrifuge-json"


async def test_health_ready_and_unknown_path(server):
    base = server.url.rsplit("/connection", 1)[0].replace("ws://", "")
    host, port = base.split(":")
    for path, status in [("/health", 200), ("/ready", 200), ("/nope", 404)]:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {base}\r\n\r\n".encode())
        line = await reader.readline()
        writer.close()
        assert line.split()[1] == str(status).encode(), path


async def test_an_idle_connection_holds_no_task_and_no_handshake(server, peer_factory):
    from livegate.server.websocket import WebSocketConnection
    peer = await peer_factory(server.url)
    await peer.connect("mem")
    [session] = server.node.hub.connections()
    conn = session.transport
    assert isinstance(conn, WebSocketConnection) and session.transport is conn
    assert not hasattr(conn, "__dict__")  # slots only: one of these per connection
    assert conn._worker is None and conn._inbox is None  # no task, no queue while idle
    assert not any(isinstance(v, dict) for v in vars(conn._proto).values() if v)  # no request headers kept
    await peer.ws.send(orjson.dumps({"id": 9, "rpc": {"method": "x", "data": {}}}).decode())  # still reads
    assert (await peer.reply(9))["error"]["code"] in (104, 108)
    assert conn._worker is None
