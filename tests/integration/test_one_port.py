"""The server API on the client port (http_api.port = http_server.port), as Centrifugo serves
it by default: the `cent` client and the SDKs on one port, and the collisions config refuses."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from cent import AsyncClient, PublishRequest
from cent.exceptions import CentUnauthorizedError
from conftest import make_config, token
from sdk import sdk_client, sdk_subscription

from livegate.errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_api_metrics_admin_and_clients_share_one_port(start_server):
    port = free_port()
    running = await start_server({"http_server": {"port": port}, "http_api": {"port": port},
                                  "admin": {"enabled": True, "password": "a-long-admin-password"}})
    assert running.server.port == running.server.api_port == port
    client, _ = sdk_client(f"ws://127.0.0.1:{port}/connection/websocket", token("alice"))
    sub, events = sdk_subscription(client, "chat:one")
    await client.connect()
    try:
        await sub.subscribe()
        await events.wait("subscribed")
        api = AsyncClient(f"http://127.0.0.1:{port}/api", "test-api-key")
        result = await api.publish(PublishRequest(channel="chat:one", data={"via": "cent"}))
        assert result.offset == 1
        (ctx,) = await events.wait("publication")
        assert ctx.pub.data == {"via": "cent"}
        with pytest.raises(CentUnauthorizedError):
            await AsyncClient(f"http://127.0.0.1:{port}/api", "wrong").publish(
                PublishRequest(channel="chat:one", data={}))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200 and "livegate_connections 1" in await resp.text()
                assert resp.headers.get("Connection") == "close"  # one request, one handler: see front.py
            async with http.get(f"http://127.0.0.1:{port}/admin") as resp:
                assert resp.status == 200 and "livegate" in (await resp.text()).lower()
            async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/apiary") as resp:  # not below /api: the client side
                assert resp.status == 404 and resp.headers.get("Connection") == "close"
    finally:
        await client.disconnect()


async def test_the_api_is_not_on_the_client_port_by_default(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.server.port)
    writer.write(b"POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: test-api-key\r\nContent-Length: 2\r\n\r\n{}")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 404") or answer.startswith(b"HTTP/1.1 405")


@pytest.mark.parametrize(("override", "key"), [
    ({"http_server": {"port": 9000, "address": "127.0.0.1"}, "http_api": {"port": 9000, "address": "0.0.0.0"}},
     "http_api.address"),
    ({"http_server": {"port": 9000, "address": "::"}, "http_api": {"port": 9000, "address": "127.0.0.1"}},
     "http_api.address"),
    ({"http_server": {"port": 9000}, "http_api": {"port": 9000, "handler_prefix": "/connection"}},
     "http_api.handler_prefix"),
    ({"http_server": {"port": 9000}, "http_api": {"port": 9000}, "admin": {"enabled": True, "password": "x" * 20,
                                                                           "handler_prefix": "/emulation"}},
     "admin.handler_prefix"),
])
def test_port_and_path_collisions_are_config_errors(override, key):
    with pytest.raises(ConfigError) as err:
        make_config(override)
    assert str(err.value).startswith(key), str(err.value)


def test_one_port_is_a_valid_config():
    cfg = make_config({"http_server": {"port": 9000}, "http_api": {"port": 9000}})
    assert cfg.one_port
    assert not make_config({}).one_port  # both 0 in tests: two ephemeral ports
    # The same port on two specific addresses binds fine: two listeners, not one port.
    two = make_config({"http_server": {"port": 9000, "address": "10.0.0.5"}, "http_api": {"port": 9000}})
    assert not two.one_port
