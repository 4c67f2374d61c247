"""The WebSocket connection at the byte level (livegate/server/websocket.py drives websockets'
Sans-I/O protocol itself): fragments, pings, UTF-8, frames right behind the handshake, many
messages in one read, and the closing handshake. A raw socket, so nothing in between helps."""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import orjson
from conftest import scaled, token
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

HANDSHAKE = ("GET /connection/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def connect_frame(user: str, cmd_id: int = 1) -> bytes:
    return client_frame(0x1, orjson.dumps({"id": cmd_id, "connect": {"token": token(user)}}))


class RawSocket:
    """A socket that sent the handshake itself; reads server frames with websockets' parser."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.stream = StreamReader()
        self.parser = None

    @classmethod
    async def open(cls, running, *, extra: bytes = b"") -> RawSocket:
        port = int(running.url.split(":")[2].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(HANDSHAKE.format(key=key).encode() + extra)
        sock = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(5))
        assert head.startswith(b"HTTP/1.1 101"), head
        return sock

    async def frame(self, timeout: float = 5) -> Frame | None:
        """The next server frame, or None at EOF."""
        while True:
            gen = Frame.parse(self.stream.read_exact, mask=False)
            try:
                while True:
                    next(gen)
                    # needs more bytes
                    data = await asyncio.wait_for(self.reader.read(65536), scaled(timeout))
                    if not data:
                        return None
                    self.stream.feed_data(data)
                    gen = Frame.parse(self.stream.read_exact, mask=False)
            except StopIteration as done:
                return done.value

    async def replies(self, count: int) -> list[dict]:
        out: list[dict] = []
        while len(out) < count:
            frame = await self.frame()
            assert frame is not None and frame.opcode is Opcode.TEXT, frame
            out.extend(orjson.loads(line) for line in frame.data.split(b"\n") if line)
        return out


async def test_a_fragmented_message_is_put_together(server):
    sock = await RawSocket.open(server)
    payload = orjson.dumps({"id": 1, "connect": {"token": token("frag")}})
    sock.writer.write(client_frame(0x1, payload[:10], fin=False) + client_frame(0x0, payload[10:20], fin=False))
    await sock.writer.drain()
    sock.writer.write(client_frame(0x0, payload[20:], fin=True))
    [reply] = await sock.replies(1)
    assert reply["id"] == 1 and reply["connect"]["client"]


async def test_a_ping_gets_its_pong_and_the_connection_goes_on(server):
    sock = await RawSocket.open(server)
    sock.writer.write(client_frame(0x9, b"hello") + connect_frame("pinger"))
    pong = await sock.frame()
    assert pong is not None and pong.opcode is Opcode.PONG and pong.data == b"hello"
    [reply] = await sock.replies(1)
    assert reply["id"] == 1


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(server):
    sock = await RawSocket.open(server)
    sock.writer.write(client_frame(0x1, b'{"id":1,"connect":{"data":"\xff\xfe"}}'))
    close = await sock.frame()
    assert close is not None and close.opcode is Opcode.CLOSE
    assert struct.unpack("!H", close.data[:2])[0] == 1007
    assert await sock.frame() is None  # and the server ends the TCP connection


async def test_a_frame_sent_right_behind_the_handshake_is_handled(server):
    sock = await RawSocket.open(server, extra=connect_frame("eager"))
    [reply] = await sock.replies(1)
    assert reply["id"] == 1 and reply["connect"]["client"]


async def test_many_messages_in_one_read_are_answered_in_order(start_server):
    """More than the connection lets wait (INBOX_LIMIT): reading pauses, nothing is lost."""
    from livegate.server.websocket import INBOX_LIMIT

    running = await start_server({"client": {"rate_limit": {"history": {"rate": 0}}}})
    sock = await RawSocket.open(running)
    n = INBOX_LIMIT * 3
    burst = [connect_frame("burst")]
    burst += [client_frame(0x1, orjson.dumps({"id": i, "presence_stats": {"channel": "chat:x"}}))
              for i in range(2, n + 2)]
    sock.writer.write(b"".join(burst[:INBOX_LIMIT * 2]))  # one read: the inbox overflows
    replies = await sock.replies(1)
    sock.writer.write(b"".join(burst[INBOX_LIMIT * 2:]))  # read only once reading resumes
    replies += await sock.replies(n + 1 - len(replies))
    assert [r["id"] for r in replies] == list(range(1, n + 2))


async def test_a_client_close_is_answered_and_the_session_released(server):
    sock = await RawSocket.open(server)
    sock.writer.write(connect_frame("leaver"))
    await sock.replies(1)
    assert server.node.hub.num_clients == 1
    sock.writer.write(client_frame(0x8, struct.pack("!H", 1000) + b"bye"))
    close = await sock.frame()
    assert close is not None and close.opcode is Opcode.CLOSE
    assert struct.unpack("!H", close.data[:2])[0] == 1000
    assert await sock.frame() is None
    for _ in range(200):
        if server.node.hub.num_clients == 0 and not server.server.clients:
            break
        await asyncio.sleep(0.01)
    assert server.node.hub.num_clients == 0 and not server.server.clients


async def test_a_peer_that_never_answers_the_close_is_cut_off(start_server):
    running = await start_server({"websocket": {"write_timeout": "200ms"}})
    sock = await RawSocket.open(running)
    sock.writer.write(connect_frame("mute"))
    await sock.replies(1)
    [session] = running.node.hub.connections()
    session.close(__import__("livegate.protocol.codes", fromlist=["SHUTDOWN"]).SHUTDOWN)
    close = await sock.frame()
    assert close is not None and close.opcode is Opcode.CLOSE
    assert struct.unpack("!H", close.data[:2])[0] == 3001
    # We never send our close frame: the server aborts after write_timeout.
    assert await sock.frame(timeout=5) is None


async def test_a_refused_handshake_gets_an_http_answer_with_our_server_header(start_server):
    running = await start_server({"client": {"allowed_origins": ["https://ok.example"]}})
    port = int(running.url.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(HANDSHAKE.format(key=key).replace("\r\n\r\n", "\r\nOrigin: https://evil.example\r\n\r\n").encode())
    answer = await asyncio.wait_for(reader.read(), scaled(5))
    assert answer.startswith(b"HTTP/1.1 403") and b"\r\nServer: livegate\r\n" in answer
    assert answer.endswith(b"origin not allowed\n")


async def test_permessage_deflate_when_enabled(start_server, peer_factory):
    """websocket.compression: the extension is negotiated and the client's compressed frames
    are read; the server's frames go uncompressed (allowed by RFC 7692: RSV1 unset), so one
    frame still serves every subscriber."""
    running = await start_server({"websocket": {"compression": True}})
    peer = await peer_factory(running.url, compression="deflate")
    assert "permessage-deflate" in (peer.ws.response.headers.get("Sec-WebSocket-Extensions") or "")
    await peer.connect("zip")
    assert "error" not in await peer.call("subscribe", {"channel": "chat:z"})
    await peer.send({"id": 50, "publish": {"channel": "chat:z", "data": {"text": "y" * 2000}}})
    await peer.reply(50)
    pubs = [m for m in peer.pushes if "pub" in m.get("push", {})]
    while not pubs:  # the publication may come before or after the publish reply
        message = await peer.recv()
        pubs = [message] if "pub" in message.get("push", {}) else []
    assert pubs[0]["push"]["pub"]["data"] == {"text": "y" * 2000}


async def test_a_reset_connection_is_closed_for_the_session_and_released(server):
    import socket as socketlib

    sock = await RawSocket.open(server)
    sock.writer.write(connect_frame("reset"))
    await sock.replies(1)
    [session] = server.node.hub.connections()
    conn = session.transport
    raw = sock.writer.get_extra_info("socket")
    raw.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    sock.writer.close()
    for _ in range(200):
        if not server.server.clients:
            break
        await asyncio.sleep(0.01)
    assert not server.server.clients and server.node.hub.num_clients == 0
    assert not conn.is_open() and conn.write(b"x") is False  # nothing written into a dead socket
