"""Shared fixtures: configs, tokens, a real server on a free port, a raw WebSocket peer.

Redis and PostgreSQL are real servers (``make test`` makes sure they run). A test that
needs one and cannot reach it fails; it never skips.
"""

from __future__ import annotations

import asyncio
import copy
import os
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
from livegate.config import Config, parse_config
from livegate.server.lifecycle import Server

SECRET = "test-secret-0123456789abcdef0123456789abcdef"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
#: A second Redis server, for sharding (scripts/services.sh starts one; there is no default).
REDIS_URL_2 = os.environ.get("REDIS_URL_2", "")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: The namespaces most tests use. "chat" is the demo namespace of config.toml.
BASE_CONFIG: dict[str, Any] = {
    "http_server": {"address": "127.0.0.1", "port": 0, "shutdown_drain": "0.2s"},
    "http_api": {"address": "127.0.0.1", "port": 0, "key": "test-api-key"},
    "client": {"token": {"hmac_secret_key": SECRET}, "ping_interval": "25s", "pong_timeout": "8s"},
    "websocket": {"write_timeout": "0.5s"},
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


@dataclass
class Running:
    server: Server
    url: str
    config: Config

    @property
    def node(self):  # noqa: ANN201
        return self.server.node


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Start real servers on free ports in this event loop; all stop at teardown."""
    running: list[Server] = []

    async def start(override: dict[str, Any] | None = None, app: App | None = None) -> Running:
        config = make_config(override)
        server = Server(config, app)
        await server.start()
        running.append(server)
        return Running(server, f"ws://127.0.0.1:{server.port}{config.websocket.handler_prefix}", config)

    yield start
    for server in running:
        await server.drain(0)
        await server.stop()


@pytest.fixture
async def server(start_server: Callable[..., Awaitable[Running]]) -> Running:
    return await start_server()


class RawPeer:
    """A hand-driven WebSocket peer that speaks raw protocol frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next_id = 0
        self.inbox: list[dict[str, Any]] = []
        self.pushes: list[dict[str, Any]] = []  # messages seen while waiting for a reply

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> RawPeer:
        return cls(await websockets.connect(url, **kwargs))

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def send(self, *commands: dict[str, Any]) -> None:
        await self.ws.send("\n".join(orjson.dumps(c).decode() for c in commands))

    async def recv_messages(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
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

    async def connect(self, user: str | None = "alice", **params: Any) -> dict[str, Any]:
        if user is not None and "token" not in params:
            params["token"] = token(user)
        return await self.call("connect", params)

    async def closed(self, timeout: float = 3.0) -> tuple[int | None, str | None]:
        """Wait for the server to close; returns (code, reason)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except websockets.ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture
async def peer_factory() -> AsyncIterator[Callable[..., Awaitable[RawPeer]]]:
    peers: list[RawPeer] = []

    async def open_peer(url: str, **kwargs: Any) -> RawPeer:
        p = await RawPeer.open(url, **kwargs)
        peers.append(p)
        return p

    yield open_peer
    for p in peers:
        await p.close()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Any]]:
    """Make centrifuge-python clients with their recorded events; all disconnect at teardown."""
    from sdk import sdk_client  # tests/integration/sdk.py (on sys.path once integration tests load)

    made: list[Any] = []

    def make(url: str, tok: str = "", **kw: Any) -> Any:
        client, events = sdk_client(url, tok, **kw)
        made.append(client)
        return client, events

    yield make
    for client in made:
        await client.disconnect()
