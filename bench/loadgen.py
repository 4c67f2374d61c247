"""A load generator fast enough not to be the bottleneck: raw asyncio Protocols that speak
WebSocket and the client protocol just enough, count messages with bytes.count, parse
timestamps with one regex per frame, and a RESP publisher that writes pre-encoded commands.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import hiredis
import orjson

PUSH = b'{"push"'
TS = re.compile(rb'"ts":(\d+)')


def ws_client_frame(payload: bytes, binary: bool = False) -> bytes:
    """A masked text (or binary) frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    first = 0x82 if binary else 0x81
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return header + mask + masked


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def count_protobuf_pushes(payload: bytes) -> tuple[int, list[bytes]]:
    """Walk the varint-delimited Replies of a binary frame: the number whose first field is
    `push` (tag 0x22; the id, field 1, is absent in pushes), and the other replies (for
    `_control`: results of commands and the empty ping)."""
    pos, n, pushes = 0, len(payload), 0
    others: list[bytes] = []
    while pos < n:
        length = payload[pos]
        pos += 1
        if length & 0x80:
            length &= 0x7F
            shift = 7
            while True:
                b = payload[pos]
                pos += 1
                length |= (b & 0x7F) << shift
                if not b & 0x80:
                    break
                shift += 7
        if length and payload[pos] == 0x22:
            pushes += 1
        else:
            others.append(payload[pos:pos + length])
        pos += length
    return pushes, others


@dataclass
class Stats:
    delivered: int = 0
    latencies: list[int] = field(default_factory=list)  # ns
    record_latency: bool = False
    frames: int = 0


class WSClient(asyncio.Protocol):
    __slots__ = ("stats", "request", "buf", "handshaken", "transport", "ready", "commands", "replies", "closed",
                 "protobuf")

    def __init__(self, stats: Stats, host: str, port: int, path: str, commands: list[bytes],
                 protobuf: bool = False) -> None:
        """``protobuf``: negotiate `centrifuge-protobuf`; ``commands`` are then encoded
        `Command` messages (without their length prefix)."""
        self.stats = stats
        self.protobuf = protobuf
        key = base64.b64encode(os.urandom(16)).decode()
        sub = "Sec-WebSocket-Protocol: centrifuge-protobuf\r\n" if protobuf else ""
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                        f"{sub}\r\n").encode()
        self.buf = b""
        self.handshaken = False
        self.commands = commands  # sent one after another, each after the previous reply
        self.replies = 0
        self.ready = asyncio.get_running_loop().create_future()
        self.closed: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(
                f"closed before ready: close={self.closed} handshaken={self.handshaken} replies={self.replies} "
                f"exc={exc!r} buf={self.buf[:80]!r}"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(buf[:end].decode(errors="replace")))
                self.transport.close()
                return
            self.handshaken = True
            buf = buf[end + 4:]
            self._next_command()
        pos, n = 0, len(buf)
        stats = self.stats
        while n - pos >= 2:
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if n - pos < head + length:
                break
            opcode = buf[pos] & 0x0F
            payload = buf[pos + head:pos + head + length]
            pos += head + length
            if opcode == 1:
                stats.frames += 1
                count = payload.count(PUSH)
                if count:
                    stats.delivered += count
                    if stats.record_latency:
                        now = time.monotonic_ns()
                        stats.latencies.extend(now - int(ts) for ts in TS.findall(payload))
                if count == 0 or b'"id"' in payload or b"{}" in payload:
                    self._control(payload)
            elif opcode == 2:
                stats.frames += 1
                count, others = count_protobuf_pushes(payload)
                stats.delivered += count
                for reply in others:
                    self._control_protobuf(reply)
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
                self.closed = (code, payload[2:].decode(errors="replace"))
            elif opcode == 9:  # websocket ping: answer with a pong
                self.transport.write(bytes((0x8A, 0x80)) + os.urandom(4))
        self.buf = buf[pos:] if pos < n else b""

    def _control(self, payload: bytes) -> None:
        for line in payload.split(b"\n"):
            if line == b"{}":
                self.transport.write(ws_client_frame(b"{}"))  # pong
            elif line.startswith(b'{"id"'):
                msg = orjson.loads(line)
                if "error" in msg:
                    if not self.ready.done():
                        self.ready.set_exception(RuntimeError(f"error reply: {msg['error']}"))
                    return
                self.replies += 1
                self._next_command()

    def _control_protobuf(self, reply: bytes) -> None:
        if not reply:
            self.transport.write(ws_client_frame(b"\x00", binary=True))  # pong: an empty Command
            return
        from livegate.protocol.proto.client_pb2 import Reply
        msg = Reply.FromString(reply)
        if msg.HasField("error"):
            if not self.ready.done():
                self.ready.set_exception(RuntimeError(f"error reply: {msg.error.code} {msg.error.message}"))
            return
        self.replies += 1
        self._next_command()

    def _next_command(self) -> None:
        if self.replies < len(self.commands):
            command = self.commands[self.replies]
            if self.protobuf:
                self.transport.write(ws_client_frame(varint(len(command)) + command, binary=True))
            else:
                self.transport.write(ws_client_frame(command))
        elif not self.ready.done():
            self.ready.set_result(None)


class HTTPStreamClient(asyncio.Protocol):
    """An HTTP-streaming client (POST /connection/http_stream): its commands go in the
    request body, one per line (connect, then subscribe); it counts the pushes of the
    chunked response with bytes.count (keeping a few bytes across reads, so a marker split
    between two reads is counted once). Ready once the subscribe reply arrived."""

    __slots__ = ("stats", "request", "transport", "ready", "head", "tail", "closed")

    def __init__(self, stats: Stats, host: str, port: int, path: str, commands: list[bytes]) -> None:
        self.stats = stats
        body = b"\n".join(commands)
        self.request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.ready = asyncio.get_running_loop().create_future()
        self.head = b""
        self.tail = b""
        self.closed: tuple[int, str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {self.head[:200]!r}"))

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.head += data
            if b'"id":2,' in self.head:
                if b'"error"' in self.head:
                    self.ready.set_exception(RuntimeError(self.head[-200:].decode(errors="replace")))
                    return
                self.ready.set_result(None)
                self.tail = self.head[-6:]
            return
        self.stats.frames += 1
        joined = self.tail + data
        self.stats.delivered += joined.count(PUSH)
        self.tail = joined[-6:]


async def open_clients(host: str, port: int, path: str, count: int, commands_for: Callable[[int], list[bytes]],
                       stats: Stats, concurrency: int = 200,
                       protobuf: Callable[[int], bool] = lambda i: False,
                       http_stream: bool = False) -> tuple[list[WSClient], float]:
    """Open ``count`` connections (at most ``concurrency`` handshakes at once); returns them
    and the wall time it took until every one was connected and subscribed. ``protobuf(i)``
    says whether connection i speaks Protobuf (its commands then are encoded `Command`s)."""
    loop = asyncio.get_running_loop()
    clients: list[WSClient] = [None] * count  # type: ignore[list-item]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            if http_stream:
                _, proto = await loop.create_connection(
                    lambda: HTTPStreamClient(stats, host, port, path, commands_for(i)), host, port)
            else:
                _, proto = await loop.create_connection(
                    lambda: WSClient(stats, host, port, path, commands_for(i), protobuf(i)), host, port)
            clients[i] = proto
            await asyncio.wait_for(proto.ready, 30)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return clients, time.perf_counter() - started


def close_clients(clients: list[WSClient]) -> None:
    for c in clients:
        if c is not None and c.transport is not None:
            c.transport.abort()


def resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class RedisPublisher(asyncio.Protocol):
    """Writes pre-encoded commands to Redis and counts the replies."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.acked = 0
        self.errors: list[str] = []
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.wait_for = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                self.errors.append(str(reply))
            self.acked += 1
        if self.waiter is not None and self.acked >= self.wait_for and not self.waiter.done():
            self.waiter.set_result(None)

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(payload)

    async def until_acked(self, n: int) -> None:
        if self.acked >= n:
            return
        self.wait_for = n
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter


async def redis_publisher(host: str, port: int) -> RedisPublisher:
    _, proto = await asyncio.get_running_loop().create_connection(RedisPublisher, host, port)
    return proto
