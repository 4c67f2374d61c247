"""Pings, pong deadlines, stale connections, expiry, slow consumers and shutdown.

Each timer has one test on the real clock and the server's own sweep loop (short, scaled
durations), so the loop itself stays covered. The other timer tests run the server on a
``FakeClock`` with the default durations (a ping every 25 s, 8 s for the pong, ...):
``running.advance(seconds)`` moves the clock and runs one sweep, so nothing waits for them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import orjson
import websockets
from conftest import BASE_CONFIG, SECRET, FakeClock, dur, exp_in, scaled, token

# -- the real clock and the sweep loop: one test per timer ---------------------------------


async def test_server_pings_and_missing_pong_closes(start_server, peer_factory):
    running = await start_server({"client": {"ping_interval": dur(1, minimum=1), "pong_timeout": dur(0.5)}})
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    assert await peer.recv(timeout=2) == {}  # the ping
    code, reason = await peer.closed(timeout=2)
    assert (code, reason) == (3012, "no pong")


async def test_no_connect_in_time_is_stale(start_server, peer_factory):
    # A short pong timeout only to make the sweep loop run often (a quarter of it).
    running = await start_server({"client": {"stale_close_delay": dur(0.3), "pong_timeout": dur(0.2)}})
    peer = await peer_factory(running.url)
    assert await peer.closed(timeout=2) == (3502, "stale")


async def test_expired_subscription_token_unsubscribes(start_server, peer_factory):
    running = await start_server({"client": {"expired_close_delay": dur(0.2), "pong_timeout": dur(0.2)}})
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    reply = await peer.call("subscribe", {"channel": "$locked:x",
                                          "token": token("alice", channel="$locked:x", exp=exp_in(0.5))})
    assert reply["subscribe"]["expires"] is True
    push = await peer.recv(timeout=4)
    assert push == {"push": {"channel": "$locked:x", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}}
    await peer.sync()  # the connection stays
    assert running.node.hub.num_subscribers("$locked:x") == 0


# (The connection expiry on the real clock: test_python_sdk.py,
# test_connection_without_refresh_is_closed_as_expired.)

# -- the same timers on a FakeClock --------------------------------------------------------


async def test_ping_then_missing_pong_on_a_fake_clock(start_server, peer_factory):
    running = await start_server(clock=FakeClock())  # ping_interval 25 s, pong_timeout 8 s
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    await running.advance(12)  # the first ping comes 12.5-25 s after the connect
    await peer.sync()
    assert peer.pushes == []
    await running.advance(13)
    assert await peer.recv() == {}  # the ping
    await running.advance(7)  # within the pong timeout
    await peer.sync()
    assert peer.pushes == []
    await running.advance(2)
    assert await peer.closed() == (3012, "no pong")


async def test_answered_pings_keep_the_connection(start_server, peer_factory):
    running = await start_server(clock=FakeClock())
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    for _ in range(3):
        # A ping is due; had the last pong not been taken, this sweep would close with 3012.
        await running.advance(25)
        assert await peer.recv() == {}
        await peer.send_raw("{}")
        await peer.sync()  # the pong was taken before the clock moves on
        assert peer.pushes == []
    await running.advance(9)
    assert (await peer.call("publish", {"channel": "plain", "data": {}}))["publish"] == {}


async def test_pings_flow_on_a_busy_connection(start_server, peer_factory):
    running = await start_server(clock=FakeClock())
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    await peer.call("subscribe", {"channel": "chat:busy"})
    seen: list[dict] = []
    n = 0
    for _ in range(2):
        for _ in range(10):
            n += 1
            await running.node.publish("chat:busy", orjson.dumps({"n": n}))
        await running.advance(25)  # a ping is due while publications are in flight
        for _ in range(10):
            n += 1
            await running.node.publish("chat:busy", orjson.dumps({"n": n}))
        while (msg := await peer.recv()) != {}:
            seen.append(msg)
        await peer.send_raw("{}")
        await peer.sync()
        seen += peer.pushes
        peer.pushes.clear()
    marker = await running.node.publish("chat:busy", b'"marker"')
    while (msg := await peer.recv()).get("push", {}).get("pub", {}).get("data") != "marker":
        seen.append(msg)
    assert {} not in seen  # one ping each time the clock passed the interval
    assert [m["push"]["pub"]["offset"] for m in seen if "pub" in m.get("push", {})] == list(range(1, 41))
    assert marker.position.offset == 41


async def test_no_connect_in_time_is_stale_on_a_fake_clock(start_server, peer_factory):
    running = await start_server(clock=FakeClock())  # stale_close_delay 10 s
    idle = await peer_factory(running.url)
    talker = await peer_factory(running.url)
    await talker.connect("alice")
    await running.advance(9)
    # The sweep that just ran is what would close it (the idle peer has no command to mark with).
    assert all(session.closing is None for session in running.server.clients)
    await running.advance(2)
    assert await idle.closed() == (3502, "stale")
    await talker.sync()  # a connected client is never stale
    assert talker.pushes == []


async def test_expired_connection_closes_on_a_fake_clock(start_server, peer_factory):
    # expired_close_delay 25 s; pings once an hour only, to keep them out of the way.
    running = await start_server({"client": {"ping_interval": "1h"}}, clock=FakeClock())
    peer = await peer_factory(running.url)
    reply = await peer.connect(token=token("alice", ttl=60))
    assert reply["connect"]["expires"] is True and 58 <= reply["connect"]["ttl"] <= 60
    await running.advance(80)  # expired, but within the grace for a refresh
    await peer.sync()
    assert peer.pushes == []
    await running.advance(10)
    assert await peer.closed() == (3005, "connection expired")


async def test_expired_subscription_on_a_fake_clock(start_server, peer_factory):
    # expired_close_delay 25 s; pings once an hour only, to keep them out of the way.
    running = await start_server({"client": {"ping_interval": "1h"}}, clock=FakeClock())
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    sub_token = token("alice", ttl=60, channel="$locked:x")
    assert (await peer.call("subscribe", {"channel": "$locked:x", "token": sub_token}))["subscribe"]["expires"]
    await peer.call("subscribe", {"channel": "feed:stays"})
    await running.advance(80)  # expired, but within the grace for a sub_refresh
    await peer.sync()
    assert peer.pushes == []
    await running.advance(10)
    assert await peer.recv() == {
        "push": {"channel": "$locked:x", "unsubscribe": {"code": 2501, "reason": "subscription expired"}}}
    await peer.sync()  # the connection and its other subscription stay
    assert running.node.hub.num_subscribers("$locked:x") == 0
    assert running.node.hub.num_subscribers("feed:stays") == 1


# -- slow consumers and shutdown -------------------------------------------------------------


async def test_slow_consumer_is_disconnected_others_unaffected(start_server, peer_factory):
    running = await start_server({"client": {"queue_max_size": 65536}, "channel": {"max_publication_size": 32768}})
    # A client that stops reading: tiny receive queue, never calls recv(). (It cannot read the
    # close either: a short close_timeout keeps the teardown from waiting for it.)
    slow = await peer_factory(running.url, max_queue=1, close_timeout=scaled(0.5))
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
    # The fast client got everything published so far, in order: all of it before the marker.
    marker = await running.node.publish("chat:flood", b'"marker"')
    while (msg := await fast.recv()).get("push", {}).get("pub", {}).get("data") != "marker":
        received += "pub" in msg.get("push", {})
    assert received == marker.position.offset - 1
    assert running.node.hub.num_subscribers("chat:flood") >= 1


async def test_sigterm_closes_clients_with_shutdown_and_exits_zero(tmp_path, unused_tcp_port):
    config = tmp_path / "config.toml"
    config.write_text(f"""
[http_server]
port = {unused_tcp_port}
shutdown_drain = "{dur(0.5)}"
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
        async with asyncio.timeout(scaled(5)):
            while True:
                try:
                    ws = await websockets.connect(url)
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        await ws.send(orjson.dumps({"id": 1, "connect": {"token": token("alice")}}).decode())
        assert "connect" in orjson.loads(await ws.recv())
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(scaled(3)):
                while True:
                    await ws.recv()
        except websockets.ConnectionClosed:
            pass
        assert ws.protocol.close_rcvd.code == 3001 and ws.protocol.close_rcvd.reason == "shutdown"
        assert await asyncio.wait_for(proc.wait(), scaled(5)) == 0
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
    running = await start_server({"http_server": {"shutdown_drain": dur(1)}})
    peers = []
    for i in range(10):
        peer = await peer_factory(running.url)
        await peer.connect(f"u{i}")
        peers.append(peer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    drain = loop.create_task(running.server.drain())
    await asyncio.sleep(0)  # the drain task starts
    assert running.node.ready is False  # /ready flips at once

    async def close_time(peer):  # noqa: ANN001, ANN202
        assert await peer.closed(timeout=3) == (3001, "shutdown")
        return loop.time() - started

    closed_at = await asyncio.gather(*(close_time(p) for p in peers))
    await drain
    assert max(closed_at) - min(closed_at) >= scaled(0.5)  # spread, not a storm
    assert max(closed_at) < scaled(2.0)
    try:
        await websockets.connect(running.url)
        refused = False
    except (OSError, websockets.InvalidStatus):
        refused = True
    assert refused


async def test_presence_refresh_rewrites_every_entry_in_chunks(start_server, peer_factory, monkeypatch):
    """The sweep's presence refresh writes each live connection's entries, a chunk of clients per
    engine call (pipelined), and never brings back an entry of a connection that has left."""
    import livegate.server.lifecycle as lifecycle

    monkeypatch.setattr(lifecycle, "PRESENCE_CHUNK", 4)
    running = await start_server()
    peers = []
    for i in range(10):
        peer = await peer_factory(running.url)
        await peer.connect(f"u{i}")
        await peer.call("subscribe", {"channel": "chat:p"})
        peers.append(peer)
    presence = running.node.presence
    calls: list[int] = []
    real = presence.add_presence_many

    async def counting(entries, ttl):  # noqa: ANN001, ANN202
        calls.append(len(entries))
        return await real(entries, ttl)

    monkeypatch.setattr(presence, "add_presence_many", counting)
    await peers[0].close()
    async with asyncio.timeout(scaled(5)):  # the server has released the connection that left
        while len(await presence.presence("chat:p")) != 9:
            await asyncio.sleep(0.01)
    await running.server._refresh_presence()
    assert calls == [4, 4, 1]  # chunks of 4 clients: 9 are left
    entries = await presence.presence("chat:p")
    assert len(entries) == 9 and all(info.user != "u0" for info in entries.values())
