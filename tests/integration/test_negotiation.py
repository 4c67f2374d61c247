"""Codec negotiation on the WebSocket endpoint: subprotocol ``centrifuge-<codec>`` or
``?format=`` / ``?cf_protocol=``, one Wire per codec the server speaks (livegate.protocol.codecs):
JSON and Protobuf."""

from __future__ import annotations

import orjson
import pytest
import websockets
from conftest import token

from livegate.protocol.codecs import CODECS
from livegate.server.websocket import WIRES, requested_format


def test_one_wire_per_codec():
    assert set(WIRES) == set(CODECS)
    for name, wire in WIRES.items():
        assert wire.codec is CODECS[name]
        first = wire.frame(b"x")[0]
        assert first == (0x82 if wire.codec.binary else 0x81)


@pytest.mark.parametrize(("query", "expected"), [
    ("", None), ("format=protobuf", "protobuf"), ("cf_protocol=json", "json"), ("a=1&format=json", "json"),
    ("formats=json", None),
])
def test_requested_format(query, expected):
    assert requested_format(query) == expected


@pytest.mark.parametrize(("suffix", "subprotocols"), [
    ("", ["centrifuge-protobuf"]), ("?format=protobuf", None), ("?cf_protocol=protobuf", None),
    ("", ["centrifuge-protobuf", "centrifuge-json"]),  # the first the server speaks wins
])
async def test_protobuf_by_subprotocol_or_by_url(server, peer_factory, suffix, subprotocols):
    peer = await peer_factory(server.url + suffix, protobuf=True, subprotocols=subprotocols)
    assert peer.ws.subprotocol == (subprotocols[0] if subprotocols else None)
    reply = await peer.connect("alice")
    assert reply["connect"]["client"] and reply["connect"]["version"]


@pytest.mark.parametrize("url_suffix", ["", "?format=json", "?cf_protocol=json", "?format=JSON", "?format=xml"])
async def test_json_by_default_and_by_name(server, url_suffix):
    async with websockets.connect(server.url + url_suffix) as ws:
        await ws.send(orjson.dumps({"id": 1, "connect": {"token": token("alice")}}).decode())
        reply = orjson.loads(await ws.recv())
        assert reply["connect"]["client"]


async def test_the_first_offered_subprotocol_the_server_speaks_wins(server):
    async with websockets.connect(server.url, subprotocols=["centrifuge-json", "centrifuge-protobuf"]) as ws:
        assert ws.subprotocol == "centrifuge-json"
    for other in (["chat.v1"], ["centrifuge-msgpack"]):  # not a format of the protocol: ignored
        async with websockets.connect(server.url, subprotocols=other) as ws:
            assert ws.subprotocol is None


async def test_binary_frames_are_refused_by_a_text_codec(server):
    async with websockets.connect(server.url) as ws:
        await ws.send(orjson.dumps({"id": 1, "connect": {"token": token("alice")}}))  # bytes: a binary frame
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.protocol.close_rcvd.code == 3501


async def test_text_frames_are_refused_by_a_binary_codec(server, peer_factory):
    peer = await peer_factory(server.url, protobuf=True)
    await peer.send_raw(orjson.dumps({"id": 1, "connect": {"token": token("alice")}}).decode())
    assert (await peer.closed())[0] == 3501
