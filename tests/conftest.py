"""Shared fixtures: configs, tokens, a real server on a free port, a raw WebSocket peer.

Redis and PostgreSQL are real servers (``make test`` makes sure they run). A test that
needs one and cannot reach it fails; it never skips.

Time. Every timeout a test waits with, every sleep and every short duration in a test
config is multiplied by the environment variable ``LIVEGATE_TEST_TIME_SCALE`` (a number > 0,
default 1): on a loaded machine, ``LIVEGATE_TEST_TIME_SCALE=3 make test`` gives every timing
test three times as long. Write them with ``scaled(seconds)`` (a float, for asyncio.timeout,
wait_for and sleep) and ``dur(seconds)`` (a duration string such as "0.5s", for configs).
The test helpers take their timeouts in test seconds and scale them themselves: RawPeer,
``wait_until``, sdk.Events.wait, procs.wait_http and Instance.stop, the JS scripts' waits
(test_js_sdk.py, tests/js/common.mjs) and the conformance Events.wait_for.

Timers that a test only wants to fire (pings, pong deadlines, stale and expired connections,
expired subscriptions) are driven without waiting at all: ``start_server(clock=FakeClock())``,
then ``running.advance(seconds)`` moves the clock and runs one ``Server.sweep()``.

That something did *not* happen is never checked by sleeping and looking: the test sends a
marker that shares the ordering of what must not arrive (a publication on the same channel,
a command on the same connection), waits for the marker, then looks.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from livegate.app import App
from livegate.auth import make_hmac_token
from livegate.clock import Clock
from livegate.config import Config, parse_config
from livegate.server.lifecycle import Server


def _time_scale() -> float:
    raw = os.environ.get("LIVEGATE_TEST_TIME_SCALE", "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise pytest.UsageError(f"LIVEGATE_TEST_TIME_SCALE must be a number > 0 (e.g. 1, 2.5), not {raw!r}")
    return value


#: How much longer than nominal every timing in the tests may take (LIVEGATE_TEST_TIME_SCALE).
TIME_SCALE = _time_scale()


def scaled(seconds: float) -> float:
    """``seconds`` of test time in seconds of wall-clock time (times LIVEGATE_TEST_TIME_SCALE)."""
    return seconds * TIME_SCALE


def dur(seconds: float, *, minimum: float = 0.0) -> str:
    """A config duration string for ``scaled(seconds)``, e.g. ``dur(0.5) == "0.5s"`` at scale 1;
    never under ``minimum`` seconds (for settings with a lower bound, such as ping_interval)."""
    value = max(scaled(seconds), minimum)
    return f"{value:.6f}".rstrip("0").rstrip(".") + "s"


def exp_in(seconds: float) -> int:
    """A token ``exp`` claim (whole Unix seconds) at least ``scaled(seconds)`` and less than
    ``scaled(seconds) + 1`` from now: ``token(user, exp=exp_in(1))`` stays valid for at least a
    second, unlike ``ttl=1``, which may leave it a millisecond."""
    return math.ceil(time.time() + scaled(seconds))


async def wait_until(condition: Callable[[], bool], within: float = 2.0, what: str = "condition") -> None:
    """Poll ``condition()`` until it holds; fails after ``scaled(within)`` seconds."""
    try:
        async with asyncio.timeout(scaled(within)):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what} did not hold within {scaled(within):g}s") from None


class FakeClock:
    """A ``livegate.clock.Clock`` that starts at the real monotonic and wall-clock time and
    only moves when a test calls ``advance``. The server's timers (its sweep) see this time;
    token verification keeps using the real ``time.time()``."""

    def __init__(self) -> None:
        self._mono = time.monotonic()
        self._wall = time.time()

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time does not go back"
        self._mono += seconds
        self._wall += seconds


SECRET = "test-secret-0123456789abcdef0123456789abcdef"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
#: A second Redis server, for sharding (scripts/services.sh starts one; there is no default).
REDIS_URL_2 = os.environ.get("REDIS_URL_2", "")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: The namespaces most tests use. "chat" is the demo namespace of config.toml.
BASE_CONFIG: dict[str, Any] = {
    "http_server": {"address": "127.0.0.1", "port": 0, "shutdown_drain": dur(0.2)},
    "http_api": {"address": "127.0.0.1", "port": 0, "key": "test-api-key"},
    "client": {"token": {"hmac_secret_key": SECRET}, "ping_interval": "25s", "pong_timeout": "8s"},
    "websocket": {"write_timeout": dur(0.5)},
    "http_stream": {"enabled": True},
    "sse": {"enabled": True},
    "log": {"level": "warning"},
    "channel": {
        "without_namespace": {"allow_subscribe_for_client": True, "allow_publish_for_client": True},
        "namespaces": [
            {"name": "chat", "presence": True, "join_leave": True, "force_push_join_leave": True,
             "history_size": 100, "history_ttl": "10m", "force_recovery": True,
             "allow_subscribe_for_client": True, "allow_publish_for_subscriber": True,
             "allow_presence_for_subscriber": True, "allow_history_for_subscriber": True},
            {"name": "locked"},
            {"name": "feed", "history_size": 10, "history_ttl": "1m", "allow_recovery": True,
             "allow_positioning": True, "allow_subscribe_for_client": True, "allow_history_for_client": True,
             "allow_publish_for_client": True},
            {"name": "dm", "allow_user_limited_channels": True},
            # Any bytes (Protobuf clients); JSON subscribers get what is JSON, and 3506 for the rest.
            {"name": "bin", "publication_data_format": "binary", "history_size": 10, "history_ttl": "1m",
             "force_recovery": True, "allow_subscribe_for_client": True, "allow_publish_for_subscriber": True,
             "allow_history_for_subscriber": True},
            {"name": "obj", "publication_data_format": "json_object", "allow_subscribe_for_client": True,
             "allow_publish_for_client": True},
        ],
    },
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (lists are replaced)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_config(override: dict[str, Any] | None = None) -> Config:
    return parse_config(merge(BASE_CONFIG, override or {}), environ={})


def token(user: str, *, ttl: float | None = 3600, **claims: Any) -> str:
    return make_hmac_token(SECRET, user, ttl=ttl, **claims)


def unique_prefix() -> str:
    return f"lgtest-{uuid.uuid4().hex[:10]}"


class NoEngineEvents:
    """An engine events sink that ignores everything (an engine built only to be looked at)."""

    def handle_publications(self, batch: Any) -> None: ...
    def handle_join(self, channel: str, info: Any) -> None: ...
    def handle_leave(self, channel: str, info: Any) -> None: ...
    def handle_gap(self, channels: Any) -> None: ...
    def handle_node_message(self, data: bytes) -> None: ...


async def delete_prefix(client: Any, prefix: str) -> None:
    """Remove a test run's Redis keys (``prefix``*) from ``client``'s server."""
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


@dataclass
class Running:
    server: Server
    url: str
    config: Config
    clock: Clock | None = None  # the clock given to start_server, if any

    @property
    def node(self):  # noqa: ANN201
        return self.server.node

    async def advance(self, seconds: float) -> None:
        """Move the server's FakeClock ``seconds`` on and run one pass of its timers there."""
        assert isinstance(self.clock, FakeClock), "start_server(clock=FakeClock()) to move time"
        self.clock.advance(seconds)
        await self.server.sweep()


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    """A client of the test Redis (REDIS_URL); fails, never skips, when Redis is not reachable."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    await client.ping()
    yield client
    await client.aclose()


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Start real servers on free ports in this event loop; all stop at teardown. With
    ``clock`` (e.g. a FakeClock) the server's timers run on that clock."""
    running: list[Server] = []

    async def start(override: dict[str, Any] | None = None, app: App | None = None, *,
                    clock: Clock | None = None) -> Running:
        config = make_config(override)
        server = Server(config, app) if clock is None else Server(config, app, clock=clock)
        await server.start()
        running.append(server)
        return Running(server, f"ws://127.0.0.1:{server.port}{config.websocket.handler_prefix}", config, clock)

    yield start
    for server in running:
        await server.drain(0)
        await server.stop()


@pytest.fixture
async def server(start_server: Callable[..., Awaitable[Running]]) -> Running:
    return await start_server()


class RawPeer:
    """A hand-driven WebSocket peer that speaks raw protocol frames. Its timeouts are in test
    seconds (scaled here)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next_id = 0
        self.inbox: list[dict[str, Any]] = []
        self.pushes: list[dict[str, Any]] = []  # messages seen while waiting for a reply

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawPeer:
        kwargs.setdefault("open_timeout", scaled(10))
        kwargs.setdefault("close_timeout", scaled(10))
        return cls(await websockets.connect(url, **kwargs))

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.ws.send("\n".join(orjson.dumps(c).decode() for c in commands))

    async def recv_messages(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        frame = await asyncio.wait_for(self.ws.recv(), scaled(timeout))
        assert isinstance(frame, str), "server frames must be text"
        return [orjson.loads(line) for line in frame.split("\n")]

    async def recv(self, timeout: float = 2.0) -> dict[str, Any]:
        """The next message (frames with several messages are split)."""
        while not self.inbox:
            self.inbox.extend(await self.recv_messages(timeout))
        return self.inbox.pop(0)

    async def reply(self, cid: int, timeout: float = 2.0) -> dict[str, Any]:
        """Wait for the reply to command ``cid``; pushes seen meanwhile stay in ``self.pushes``."""
        while True:
            msg = await self.recv(timeout)
            if msg.get("id") == cid:
                return msg
            self.pushes.append(msg)

    async def call(self, method: str, params: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        cid = self.next_id()
        await self.send({"id": cid, method: params})
        return await self.reply(cid, timeout)

    async def sync(self) -> None:
        """A marker: a command whose reply must come back on this connection. Once it did,
        everything the server sent before it is in ``pushes`` (the connection's messages are
        ordered), and the connection was not closed before it."""
        assert await self.call("ping", {}) == {"id": self._next_id, "ping": {}}

    async def connect(self, user: str | None = "alice", **params: Any) -> dict[str, Any]:
        if user is not None and "token" not in params:
            params["token"] = token(user)
        return await self.call("connect", params)

    async def closed(self, timeout: float = 3.0) -> tuple[int | None, str | None]:
        """Wait for the server to close; returns (code, reason)."""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    await self.ws.recv()
        except websockets.ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)

    async def close(self) -> None:
        await self.ws.close()


def proto_to_dict(msg: Any) -> dict[str, Any]:
    """A parsed Protobuf message as the JSON variant's shape: set fields only (an empty but
    present submessage is ``{}``), maps as dicts, ``bytes`` kept as bytes, integers as ints."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: proto_to_dict(v) if value_fd.message_type is not None else v for k, v in value.items()}
        elif fd.message_type is not None:
            is_list = fd.is_repeated
            out[fd.name] = [proto_to_dict(v) for v in value] if is_list else proto_to_dict(value)
        elif fd.is_repeated:
            out[fd.name] = list(value)
        else:
            out[fd.name] = value
    return out


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A test's own varint reader (independent of livegate's)."""
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


class ProtoPeer(RawPeer):
    """A RawPeer speaking the Protobuf variant (subprotocol centrifuge-protobuf). Commands
    are written as dicts of the JSON variant's shape (``data`` as bytes) into the messages of
    centrifuge-python's own generated schema, which is independent of livegate's; replies
    come back as dicts of that shape (see proto_to_dict)."""

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawPeer:
        kwargs.setdefault("subprotocols", ["centrifuge-protobuf"])
        return await super().open(url, **kwargs)

    @staticmethod
    def encode(command: dict[str, Any]) -> bytes:
        from centrifuge.protocol import client_pb2 as theirs
        from google.protobuf.json_format import ParseDict

        def jsonable(value: Any) -> Any:  # ParseDict takes bytes fields as base64 text
            if isinstance(value, bytes):
                return base64.b64encode(value).decode()
            if isinstance(value, dict):
                return {k: jsonable(v) for k, v in value.items()}
            return value

        body = ParseDict(jsonable(command), theirs.Command()).SerializeToString()
        return varint(len(body)) + body

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.ws.send(b"".join(self.encode(c) for c in commands))

    async def recv_messages(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        from centrifuge.protocol import client_pb2 as theirs

        frame = await asyncio.wait_for(self.ws.recv(), scaled(timeout))
        assert isinstance(frame, bytes), "Protobuf frames must be binary"
        messages, pos = [], 0
        while pos < len(frame):
            size, pos = read_varint(frame, pos)
            assert pos + size <= len(frame), "a message runs past the end of the frame"
            messages.append(proto_to_dict(theirs.Reply.FromString(frame[pos:pos + size])))
            pos += size
        return messages


@pytest.fixture
async def peer_factory() -> AsyncIterator[Callable[..., Awaitable[RawPeer]]]:
    peers: list[RawPeer] = []

    async def open_peer(url: str, *, protobuf: bool = False, **kwargs: Any) -> RawPeer:
        p = await (ProtoPeer if protobuf else RawPeer).open(url, **kwargs)
        peers.append(p)
        return p

    yield open_peer
    for p in peers:
        await p.close()


@pytest.fixture
def codec() -> str:
    """The codec SDK clients speak ("json"); a module parametrizes it to run over both."""
    return "json"


class Clients:
    """Makes centrifuge-python clients (``clients(url, token, **kwargs)``) speaking ``codec``,
    with their recorded events. Payloads differ by codec: the JSON SDK takes and gives JSON
    values, the Protobuf SDK bytes; ``enc`` and ``dec`` convert, so one test serves both."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.protobuf = codec == "protobuf"
        self.made: list[Any] = []

    def __call__(self, url: str, tok: str = "", **kw: Any) -> Any:
        from sdk import sdk_client  # tests/integration/sdk.py (on sys.path once integration tests load)

        kw.setdefault("use_protobuf", self.protobuf)
        client, events = sdk_client(url, tok, **kw)
        self.made.append(client)
        return client, events

    def enc(self, value: Any) -> Any:
        """A JSON value as the SDK's publish/rpc take it."""
        return orjson.dumps(value) if self.protobuf else value

    def dec(self, data: Any) -> Any:
        """Data the SDK handed over, as a JSON value."""
        return orjson.loads(data) if self.protobuf and isinstance(data, bytes) else data


@pytest.fixture
async def clients(codec: str) -> AsyncIterator[Clients]:
    """Make centrifuge-python clients with their recorded events; all disconnect at teardown."""
    made = Clients(codec)
    yield made
    for client in made.made:
        await client.disconnect()
