"""The Protobuf variant of the protocol next to JSON: mixed channels fed from every door,
payload formats per namespace (publication_data_format), every command over raw Protobuf
frames, and bad binary input. The SDK suite itself runs over both codecs in test_python_sdk.py."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import orjson
import pytest
from centrifuge import ClientState
from centrifuge.exceptions import ReplyError
from conftest import REDIS_URL, ProtoPeer, delete_prefix, dur, token, unique_prefix, varint
from sdk import sdk_subscription

from livegate import App

KEY = "test-api-key"


async def api(running: Any, method: str, params: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        f"http://127.0.0.1:{running.server.api_port}/api/{method}", json=params, headers={"X-API-Key": KEY},
    ) as resp:
        assert resp.status == 200
        return await resp.json()


async def subscribed_pair(running: Any, clients: Any, channel: str) -> tuple[Any, Any, Any, Any, Any, Any]:
    """A JSON and a Protobuf SDK client, both subscribed to ``channel``."""
    js, js_client_ev = clients(running.url, token("jay"), use_protobuf=False)
    pb, pb_client_ev = clients(running.url, token("pia"), use_protobuf=True)
    js_sub, js_ev = sdk_subscription(js, channel)
    pb_sub, pb_ev = sdk_subscription(pb, channel)
    for client, sub, ev in ((js, js_sub, js_ev), (pb, pb_sub, pb_ev)):
        await client.connect()
        await sub.subscribe()
        await ev.wait("subscribed")
    return js_sub, js_ev, js_client_ev, pb_sub, pb_ev, pb_client_ev


async def test_a_mixed_channel_gets_every_publication_from_every_door(start_server, clients, redis_client):
    prefix = unique_prefix()
    running = await start_server({"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}}})
    try:
        js_sub, js_ev, _, pb_sub, pb_ev, _ = await subscribed_pair(running, clients, "chat:mixed")

        async def from_stream_door() -> None:
            payload = orjson.dumps({"channel": "chat:mixed", "data": {"door": "stream"}})
            await redis_client.xadd(f"{prefix}.api.stream", {"method": "publish", "payload": payload})

        doors = [
            lambda: js_sub.publish({"door": "json client"}),
            lambda: pb_sub.publish(b'{"door":"protobuf client"}'),
            lambda: api(running, "publish", {"channel": "chat:mixed", "data": {"door": "http api"}}),
            from_stream_door,
            lambda: redis_client.fcall("livegate_publish", 1, "chat:mixed", b'{"door":"fcall"}',
                                       orjson.dumps({"prefix": prefix})),
        ]
        for n, door in enumerate(doors, 1):
            await door()  # one at a time: each door's publication is the next offset
            await js_ev.wait("publication", n)
            await pb_ev.wait("publication", n)
        js_pubs = [(ctx.pub.offset, ctx.pub.data) for ctx in js_ev.of("publication")]
        pb_pubs = [(ctx.pub.offset, orjson.loads(ctx.pub.data)) for ctx in pb_ev.of("publication")]
        expected = [(n, {"door": d}) for n, d in enumerate(
            ["json client", "protobuf client", "http api", "stream", "fcall"], 1)]
        assert js_pubs == pb_pubs == expected
        # Who published, as each codec carries it.
        for events in (js_ev, pb_ev):
            assert [ctx.pub.info.user for ctx in events.of("publication")[:2]] == ["jay", "pia"]
    finally:
        await delete_prefix(redis_client, prefix)


async def test_binary_namespace_passes_bytes_to_protobuf_and_closes_json_on_binary(server, clients):
    js_sub, js_ev, js_cev, pb_sub, pb_ev, _ = await subscribed_pair(server, clients, "bin:raw")
    await pb_sub.publish(b'{\n  "pretty": true\n}')  # JSON: both get it
    (js_first,) = await js_ev.wait("publication")
    (pb_first,) = await pb_ev.wait("publication")
    assert js_first.pub.data == {"pretty": True}
    assert pb_first.pub.data == b'{\n  "pretty": true\n}'  # byte for byte: binary namespaces do not touch data
    binary = bytes(range(256))
    await pb_sub.publish(binary)
    pb_pubs = await pb_ev.wait("publication", 2)
    assert pb_pubs[1].pub.data == binary and pb_pubs[1].pub.offset == 2
    # Not JSON: never written into a JSON frame; the JSON client is told it speaks the wrong protocol.
    (gone,) = await js_cev.wait("disconnected")
    assert gone.code == 3506
    assert len(js_ev.of("publication")) == 1
    # Empty data is data in a binary namespace.
    await pb_sub.publish(b"")
    assert (await pb_ev.wait("publication", 3))[2].pub.offset == 3


async def test_json_namespaces_refuse_data_that_is_not_json(server, clients):
    pb, _ = clients(server.url, token("pia"), use_protobuf=True)
    js, _ = clients(server.url, token("jay"), use_protobuf=False)
    await pb.connect()
    await js.connect()
    for client, channel, data in [
        (pb, "plain", b"\x00\x01 not json"), (pb, "plain", b""), (pb, "obj:x", b"[1, 2]"), (pb, "obj:x", b"\xff"),
        (js, "obj:x", [1, 2]), (js, "obj:x", "text"),
    ]:
        with pytest.raises(ReplyError) as err:
            await client.publish(channel, data)
        assert err.value.code == 107, (channel, data)
    await pb.publish("obj:x", b' {"ok": 1}')
    await js.publish("obj:x", {"ok": 2})
    await pb.publish("plain", b'"json text"')
    assert pb.state == js.state == ClientState.CONNECTED


async def test_history_with_binary_data_closes_a_json_reader(server, clients):
    js_sub, js_ev, js_cev, pb_sub, _, _ = await subscribed_pair(server, clients, "bin:h")
    await pb_sub.publish(b'{"n":1}')
    await js_ev.wait("publication")
    history = await js_sub.history(limit=10)
    assert [p.data for p in history.publications] == [{"n": 1}]
    assert [p.data for p in (await pb_sub.history(limit=10)).publications] == [b'{"n":1}']
    await pb_sub.publish(b"\x89PNG")
    pb_history = await pb_sub.history(limit=10)
    assert [p.data for p in pb_history.publications] == [b'{"n":1}', b"\x89PNG"]
    (gone,) = await js_cev.wait("disconnected")  # the live publication already closed it
    assert gone.code == 3506


async def test_api_b64data_reaches_protobuf_clients_as_bytes(server, clients):
    pb, _ = clients(server.url, token("pia"), use_protobuf=True)
    sub, events = sdk_subscription(pb, "bin:api")
    await pb.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    raw = b"\x00\xffbinary\n"
    reply = await api(server, "publish", {"channel": "bin:api", "b64data": base64.b64encode(raw).decode()})
    assert reply["result"]["offset"] == 1
    (ctx,) = await events.wait("publication")
    assert ctx.pub.data == raw
    # Into a JSON namespace, b64data must decode to JSON.
    bad = await api(server, "publish", {"channel": "chat:x", "b64data": base64.b64encode(raw).decode()})
    assert bad["error"]["code"] == 107 and "JSON" in bad["error"]["message"]
    good = await api(server, "publish", {"channel": "chat:x", "b64data": base64.b64encode(b'{"a":1}').decode()})
    assert good["result"]["offset"] == 1
    bad = await api(server, "publish", {"channel": "bin:api", "b64data": "not base64!"})
    assert bad["error"]["code"] == 107


async def test_recovery_over_protobuf_in_a_binary_namespace(server, clients):
    pb, cev = clients(server.url, token("pia"), use_protobuf=True)
    sub, events = sdk_subscription(pb, "bin:rec")
    await pb.connect()
    await sub.subscribe()
    await events.wait("subscribed")
    await server.node.publish("bin:rec", b"\x01")
    await events.wait("publication")
    (conn,) = server.node.hub.connections()
    from livegate.protocol import codes
    conn.close(codes.FORCE_RECONNECT)
    await cev.wait("connecting", 2)
    for n in (2, 3):
        await server.node.publish("bin:rec", bytes([n]))
    again = (await events.wait("subscribed", 2))[1]
    assert again.recovered
    pubs = await events.wait("publication", 3)
    assert [(p.pub.offset, p.pub.data) for p in pubs] == [(1, b"\x01"), (2, b"\x02"), (3, b"\x03")]


# -- raw frames ------------------------------------------------------------------------------


async def test_every_command_over_raw_protobuf(start_server, peer_factory):
    app = App()

    @app.rpc("echo")
    async def echo(ctx, data):
        return data  # bytes from a Protobuf client come back as bytes

    sent: list[Any] = []

    @app.on_message
    async def on_message(ctx, data):
        sent.append(data)

    running = await start_server(app=app)
    peer = await peer_factory(running.url, protobuf=True)
    other = await peer_factory(running.url, protobuf=True)
    connected = await peer.connect("alice", data=b'{"hello":1}', name="test", version="1")
    assert connected["connect"]["client"] and connected["connect"]["pong"] is True
    assert connected["connect"]["ping"] == 25 and connected["connect"]["expires"] is True
    await other.connect("bob")
    assert (await other.call("subscribe", {"channel": "chat:raw"}))["subscribe"]["recoverable"] is True
    sub = (await peer.call("subscribe", {"channel": "chat:raw", "recover": True, "join_leave": True}))["subscribe"]
    assert sub["positioned"] is True and sub["epoch"] and "offset" not in sub  # offset 0: the default, left out
    assert (await peer.call("publish", {"channel": "chat:raw", "data": b'{"n":1}'}))["publish"] == {}
    presence = (await peer.call("presence", {"channel": "chat:raw"}))["presence"]["presence"]
    assert sorted(info["user"] for info in presence.values()) == ["alice", "bob"]
    assert all(info["client"] == client for client, info in presence.items())
    assert (await peer.call("presence_stats", {"channel": "chat:raw"}))["presence_stats"] == {
        "num_clients": 2, "num_users": 2}
    history = (await peer.call("history", {"channel": "chat:raw", "limit": 10}))["history"]
    assert [(p["offset"], p["data"]) for p in history["publications"]] == [(1, b'{"n":1}')]
    assert history["offset"] == 1 and history["epoch"] == sub["epoch"]
    since = (await peer.call("history", {"channel": "chat:raw", "limit": 10,
                                         "since": {"offset": 1, "epoch": history["epoch"]}}))["history"]
    assert "publications" not in since and since["offset"] == 1
    assert (await peer.call("rpc", {"method": "echo", "data": b"\x00\x01"}))["rpc"] == {"data": b"\x00\x01"}
    assert (await peer.call("rpc", {"method": "nope"}))["error"] == {"code": 104, "message": "method not found"}
    await peer.send({"send": {"data": b'{"m":1}'}})
    refreshed = (await peer.call("refresh", {"token": token("alice")}))["refresh"]
    assert refreshed["expires"] is True and refreshed["ttl"] > 3000  # RefreshResult: fields 3 and 4
    private = "$locked:p"
    assert "subscribe" in await peer.call("subscribe", {"channel": private, "token": token("alice", channel=private)})
    sub_refreshed = (await peer.call("sub_refresh", {"channel": private,
                                                     "token": token("alice", channel=private)}))["sub_refresh"]
    assert sub_refreshed["expires"] is True and sub_refreshed["ttl"] > 3000  # SubRefreshResult: fields 1 and 2
    await peer.sync()
    assert sent == [{"m": 1}]
    pushes = [m["push"] for m in peer.pushes]
    pubs = [p for p in pushes if "pub" in p]
    assert len(pubs) == 1 and pubs[0]["channel"] == "chat:raw"
    assert pubs[0]["pub"]["data"] == b'{"n":1}' and pubs[0]["pub"]["offset"] == 1
    assert pubs[0]["pub"]["info"] == {"user": "alice", "client": connected["connect"]["client"]}
    joins = [p["join"]["info"]["user"] for p in pushes if "join" in p]
    assert joins == ["alice"]
    await other.close()
    leave = (await peer.recv())["push"]
    assert leave["channel"] == "chat:raw" and leave["leave"]["info"]["user"] == "bob"
    assert (await peer.call("unsubscribe", {"channel": "chat:raw"}))["unsubscribe"] == {}


async def next_push(peer: Any, kind: str) -> dict[str, Any]:
    """The next push of ``kind`` (others, e.g. join pushes, are skipped)."""
    while True:
        push = (await peer.recv()).get("push", {})
        if kind in push:
            return push


async def test_server_side_pushes_over_raw_protobuf(server, peer_factory):
    peer = await peer_factory(server.url, protobuf=True)
    connected = await peer.connect("carol")
    client = connected["connect"]["client"]
    await api(server, "subscribe", {"user": "carol", "channel": "chat:pushed",
                                    "b64data": base64.b64encode(b"\x07").decode()})
    push = await next_push(peer, "subscribe")
    assert push["channel"] == "chat:pushed" and push["subscribe"]["data"] == b"\x07"
    assert push["subscribe"]["recoverable"] and push["subscribe"]["positioned"]
    await server.node.publish("chat:pushed", b'{"x":1}')
    assert (await next_push(peer, "pub"))["pub"]["data"] == b'{"x":1}'
    await api(server, "unsubscribe", {"user": "carol", "channel": "chat:pushed"})
    assert await next_push(peer, "unsubscribe") == {"channel": "chat:pushed", "unsubscribe": {
        "code": 2000, "reason": "server unsubscribe"}}
    await api(server, "disconnect", {"user": "carol", "client": client,
                                     "disconnect": {"code": 4501, "reason": "bye"}})
    assert await peer.closed() == (4501, "bye")


async def test_ping_is_an_empty_reply_and_pong_an_empty_command(start_server, peer_factory):
    running = await start_server({"client": {"ping_interval": dur(1), "pong_timeout": dur(0.8)}})
    peer = await peer_factory(running.url, protobuf=True)
    await peer.connect("alice")
    for _ in range(2):  # answered, the next ping comes, and the connection stays
        assert await peer.ws.recv(decode=False) == b"\x00"  # one empty Reply
        await peer.send_raw(b"\x00")  # one empty Command: the pong
    await peer.sync()


def command(**fields: Any) -> bytes:
    return ProtoPeer.encode(fields)


@pytest.mark.parametrize(("frame", "why"), [
    (b"", "empty frame"),
    (b"\xff" * 11, "malformed varint"),
    (b"\x80", "varint cut at the end of the frame"),
    (b"\x05\x08\x01", "length beyond the frame"),
    (varint(4) + b"\x08\x02\x5a\x05", "truncated message (a field longer than the message)"),
    (varint(3) + b"\x08\x02\x07", "invalid wire type"),
    (command(id=2, ping={}, presence={"channel": "chat:x"}), "two methods in one command"),
    (command(presence={"channel": "chat:x"}), "a command without id"),
    (varint(4) + b"\x08\x02\xfa\x06", "only an unknown field (a method from the future)"),
    (varint(8) + b"\x08\x02\x42\x04\x0a\x02\xc3\x28", "invalid UTF-8 in a string"),
])
async def test_bad_binary_input_closes_with_bad_request(server, peer_factory, frame, why):
    peer = await peer_factory(server.url, protobuf=True)
    await peer.connect("alice")
    await peer.send_raw(frame)
    assert (await peer.closed())[0] == 3501, why


async def test_unknown_fields_are_ignored(server, peer_factory):
    peer = await peer_factory(server.url, protobuf=True)
    await peer.connect("alice")
    body = b"\x08\x05" + b"\x4a\x02\x08\x00" + b"\xa0\x06\x01"  # id 5, presence_stats {}, field 100 = 1
    await peer.send_raw(varint(len(body)) + body)
    reply = await peer.reply(5)
    assert reply["error"]["code"] == 107  # an empty channel: the request, not the frame, is refused


async def test_several_commands_in_one_frame_get_replies_in_one_frame(server, peer_factory):
    peer = await peer_factory(server.url, protobuf=True)
    await peer.connect("alice")
    await peer.send({"id": 2, "subscribe": {"channel": "chat:f"}}, {"id": 3, "presence_stats": {"channel": "chat:f"}})
    messages = await peer.recv_messages()
    assert [m["id"] for m in messages] == [2, 3]


async def test_frame_over_the_size_limit_closes_with_1009(start_server, peer_factory):
    running = await start_server({"websocket": {"message_size_limit": 1024}})
    peer = await peer_factory(running.url, protobuf=True)
    await peer.connect("alice")
    await peer.send({"id": 2, "publish": {"channel": "chat:x", "data": b"x" * 2000}})
    assert (await peer.closed())[0] == 1009


async def test_an_app_pushes_messages_to_a_connection(start_server, peer_factory):
    app = App()

    @app.rpc("notify")
    async def notify(ctx, data):
        assert ctx.send(data) is True
        return None

    @app.rpc("notify_binary")
    async def notify_binary(ctx, data):
        ctx.send(b"\xff\xfe")

    running = await start_server(app=app)
    pb_peer = await peer_factory(running.url, protobuf=True)
    await pb_peer.connect("alice")
    assert (await pb_peer.call("rpc", {"method": "notify", "data": b"\x00\x01"}))["rpc"] == {}
    assert (await pb_peer.call("rpc", {"method": "notify_binary"}))["rpc"] == {}
    assert [m["push"] for m in pb_peer.pushes] == [{"message": {"data": b"\x00\x01"}},
                                                   {"message": {"data": b"\xff\xfe"}}]
    json_peer = await peer_factory(running.url)
    await json_peer.connect("bob")
    assert (await json_peer.call("rpc", {"method": "notify", "data": {"hi": 1}}))["rpc"] == {}
    assert json_peer.pushes == [{"push": {"message": {"data": {"hi": 1}}}}]
    await json_peer.send({"id": 9, "rpc": {"method": "notify_binary", "data": {}}})
    assert (await json_peer.closed())[0] == 3506  # binary data never goes into a JSON frame
