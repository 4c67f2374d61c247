"""Pings, pong deadlines, stale connections, slow consumers and shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import orjson
import websockets
from conftest import BASE_CONFIG, SECRET, token


async def test_server_pings_and_missing_pong_closes(start_server, peer_factory):
    running = await start_server({"client": {"ping_interval": "1s", "pong_timeout": "0.5s"}})
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    assert await peer.recv(timeout=2) == {}  # the ping
    code, reason = await peer.closed(timeout=2)
    assert (code, reason) == (3012, "no pong")


async def test_answered_pings_keep_the_connection(start_server, peer_factory):
    running = await start_server({"client": {"ping_interval": "1s", "pong_timeout": "0.5s"}})
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    pings = 0
    async with asyncio.timeout(4):
        while pings < 3:
            if await peer.recv(timeout=2) == {}:
                pings += 1
                await peer.send_raw("{}")
    assert (await peer.call("publish", {"channel": "plain", "data": {}}))["publish"] == {}


async def test_pings_flow_on_a_busy_connection(start_server, peer_factory):
    running = await start_server({"client": {"ping_interval": "1s", "pong_timeout": "0.5s"}})
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    await peer.call("subscribe", {"channel": "chat:busy"})
    pings = 0
    async with asyncio.timeout(3):
        while pings < 2:
            await running.node.publish("chat:busy", b'{"x":1}')
            while peer.inbox or pings < 2:
                try:
                    msg = await peer.recv(timeout=0.05)
                except TimeoutError:
                    break
                if msg == {}:
                    pings += 1
                    await peer.send_raw("{}")
    assert pings == 2


async def test_no_connect_in_time_is_stale(start_server, peer_factory):
    running = await start_server({"client": {"stale_close_delay": "0.3s"}})
    peer = await peer_factory(running.url)
    assert await peer.closed(timeout=2) == (3502, "stale")


async def test_slow_consumer_is_disconnected_others_unaffected(start_server, peer_factory):
    running = await start_server({"client": {"queue_max_size": 65536}})
    # A client that stops reading: tiny receive queue, never calls recv().
    slow = await peer_factory(running.url, max_queue=1)
    await slow.connect("slow")
    await slow.call("subscribe", {"channel": "chat:flood"})
    fast = await peer_factory(running.url)
    await fast.connect("fast")
    await fast.call("subscribe", {"channel": "chat:flood"})
    (slow_conn,) = [c for c in running.node.hub.connections() if c.user == "slow"]
    payload = orjson.dumps({"pad": "x" * 2000})
    received = 0
    for _ in range(4000):
        await running.node.publish("chat:flood", payload)
        while True:  # the fast client keeps up
            try:
                msg = await fast.recv(timeout=0.0001)
            except TimeoutError:
                break
            received += "pub" in msg.get("push", {})
        if slow_conn.closing is not None:
            break
    assert slow_conn.closing is not None and slow_conn.closing.code == 3008
    # The fast client got everything published so far, in order.
    published = running.node.hub  # keep reading what is still in flight
    while True:
        try:
            msg = await fast.recv(timeout=0.3)
        except TimeoutError:
            break
        received += "pub" in msg.get("push", {})
    history = await fast.call("history", {"channel": "chat:flood", "limit": 0})
    assert received == history["history"]["offset"]
    assert published.num_subscribers("chat:flood") >= 1


async def test_sigterm_closes_clients_with_shutdown_and_exits_zero(tmp_path, unused_tcp_port):
    config = tmp_path / "config.toml"
    config.write_text(f"""
[http_server]
port = {unused_tcp_port}
shutdown_drain = "0.5s"
[client.token]
hmac_secret_key = "{SECRET}"
[log]
level = "info"
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livegate.cli", "serve", "--config", str(config),
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"ws://127.0.0.1:{unused_tcp_port}/connection/websocket"
        for _ in range(100):
            try:
                ws = await websockets.connect(url)
                break
            except OSError:
                await asyncio.sleep(0.05)
        await ws.send(orjson.dumps({"id": 1, "connect": {"token": token("alice")}}).decode())
        assert "connect" in orjson.loads(await ws.recv())
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(3):
                while True:
                    await ws.recv()
        except websockets.ConnectionClosed:
            pass
        assert ws.protocol.close_rcvd.code == 3001 and ws.protocol.close_rcvd.reason == "shutdown"
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        with_refused = False
        try:
            await websockets.connect(url)
        except OSError:
            with_refused = True
        assert with_refused
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert BASE_CONFIG  # the shared config stays importable for subprocess tests


async def test_drain_spreads_closes_over_the_window(start_server, peer_factory):
    running = await start_server({"http_server": {"shutdown_drain": "1s"}})
    peers = []
    for i in range(10):
        peer = await peer_factory(running.url)
        await peer.connect(f"u{i}")
        peers.append(peer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    drain = loop.create_task(running.server.drain())
    await asyncio.sleep(0.05)
    assert running.node.ready is False  # /ready flips at once
    async def close_time(peer):  # noqa: ANN001, ANN202
        assert await peer.closed(timeout=3) == (3001, "shutdown")
        return loop.time() - started

    closed_at = await asyncio.gather(*(close_time(p) for p in peers))
    await drain
    assert max(closed_at) - min(closed_at) >= 0.5  # spread, not a storm
    assert max(closed_at) < 2.0
    try:
        await websockets.connect(running.url)
        refused = False
    except (OSError, websockets.InvalidStatus):
        refused = True
    assert refused
