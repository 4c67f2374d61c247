"""The pure parts of the HTTP transports and the client port's front door."""

from __future__ import annotations

import pytest
from conftest import make_config

from livegate.protocol.proto import client_pb2 as pb
from livegate.protocol.unidirectional import connect_command
from livegate.protocol.unidirectional import unwrapped as _unwrapped
from livegate.server.front import _is_websocket_request
from livegate.server.http_transports import STREAM_WIRES, _emulation_request, _sse_frame, chunk


def test_chunks_and_sse_events():
    assert chunk(b"abc") == b"3\r\nabc\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    # Every line of a multi-message frame is a data: line of one event.
    assert _sse_frame(b'{"a":1}\n{"b":2}') == chunk(b'data: {"a":1}\ndata: {"b":2}\n\n')
    assert STREAM_WIRES[("http_stream", "json")].frame(b'{"a":1}\n{"b":2}') == chunk(b'{"a":1}\n{"b":2}\n')
    assert STREAM_WIRES[("http_stream", "protobuf")].frame(b"\x02\x08\x01") == chunk(b"\x02\x08\x01")


def test_unidirectional_messages_lose_their_reply_wrapper():
    body = b'{"id":1,"connect":{"client":"c"}}\n{"push":{"channel":"ch","pub":{"data":{"x":"}"}}}}\n{}'
    assert _unwrapped(body) == b'{"connect":{"client":"c"}}\n{"channel":"ch","pub":{"data":{"x":"}"}}}\n{}'
    assert _unwrapped(b'{"id":12,"error":{"code":103}}') == b'{"error":{"code":103}}'
    assert STREAM_WIRES[("uni_sse", "json")].unidirectional and not STREAM_WIRES[("sse", "json")].unidirectional
    assert connect_command(b' {"token":"t"} ') == b'{"id":1,"connect":{"token":"t"}}'
    assert connect_command(b"") == b'{"id":1,"connect":{}}'
    assert connect_command(b"[1]") is None and connect_command(b"{") is None


def test_emulation_request_bodies():
    assert _emulation_request(b'{"session":"s","node":"n","data":"{\\"id\\":1}"}', False) == ("n", "s", b'{"id":1}')
    assert _emulation_request(b'{"session":"s","data":""}', False) == ("", "s", b"")
    raw = pb.EmulationRequest(node="n", session="s", data=b"\x00\x01").SerializeToString()
    assert _emulation_request(raw, True) == ("n", "s", b"\x00\x01")
    assert _emulation_request(pb.EmulationRequest(node="n").SerializeToString(), True) == "session is missing"
    assert _emulation_request(b"\x0a\xff", True) == "malformed EmulationRequest"
    assert _emulation_request(b'"s"', False) == "body must be a JSON object"


@pytest.mark.parametrize(("head", "ws"), [
    (b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", True),
    (b"GET /connection/websocket?format=protobuf HTTP/1.1\r\nupgrade: WebSocket\r\n\r\n", True),
    (b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n\r\n", False),  # no upgrade: aiohttp answers
    (b"POST /connection/websocket HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", False),
    (b"GET /other HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", False),
    (b"GET /connection/websocket\r\nUpgrade: websocket\r\n\r\n", False),  # not a request line
    (b"GET /connection/websocket HTTP/1.1\r\nX-Upgrade-Note: websocket\r\n\r\n", False),
])
def test_the_front_door_sends_websocket_upgrades_to_websockets(head, ws):
    assert _is_websocket_request(head, {b"/connection/websocket"}) is ws


def test_transport_paths_must_differ():
    with pytest.raises(Exception, match="sse.handler_prefix"):
        make_config({"sse": {"enabled": True, "handler_prefix": "/connection/websocket"}})
    with pytest.raises(Exception, match="must be a path"):
        make_config({"http_stream": {"handler_prefix": "stream"}})
    cfg = make_config({"uni_sse": {"enabled": True}})
    assert cfg.uni_sse.handler_prefix == "/connection/uni_sse" and cfg.sse.handler_prefix == "/connection/sse"


