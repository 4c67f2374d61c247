"""What an innocent client sees while another one floods the server (issue notes: the hostile
client run). Each scenario measures the innocent client's round trip (an `rpc` echo) for a few
seconds with nobody else, then while the attacker runs, and prints what the attacker got.

    python -m bench.attacks          (REDIS_URL as for make test; the server runs this tree's code)

Scenarios:
- rpc flood: one connection sends echo RPCs as fast as it can (50 per frame);
- join/leave churn: 300 subscribers with join/leave pushes on one channel, the attacker
  subscribes and unsubscribes in a loop (each subscribe/unsubscribe pushes to all 300).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import websockets

from bench.__main__ import REDIS_URL, ROOT, SECRET, _pinned, _wait_port, free_port, token

APP = '''
from livegate import App
app = App()

@app.rpc("echo")
async def echo(ctx, data):
    return data
'''


def start(tmp: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    port, api_port = free_port(), free_port()
    (tmp / "attack_app.py").write_text(APP)
    (tmp / "config.toml").write_text(f"""
[http_server]
port = {port}
[http_api]
port = {api_port}
key = "bench"
[client]
queue_max_size = 67108864
[client.token]
hmac_secret_key = "{SECRET}"
[engine]
type = "redis"
[engine.redis]
address = ["{REDIS_URL}"]
prefix = "lgattack-{os.getpid()}"
[log]
level = "error"
[[channel.namespaces]]
name = "room"
join_leave = true
force_push_join_leave = true
allow_subscribe_for_client = true
""")
    env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "livegate.cli", "serve", "--config", str(tmp / "config.toml"), "--app", "attack_app:app"]
    proc = subprocess.Popen(_pinned(cmd, "0"), cwd=ROOT, env=env)
    _wait_port(port)
    return proc, port, api_port


async def connect(url: str, user: str) -> websockets.ClientConnection:
    ws = await websockets.connect(url, max_size=None, max_queue=None)
    await ws.send(orjson.dumps({"id": 1, "connect": {"token": token(user)}}).decode())
    await ws.recv()
    return ws


async def innocent_rtts(url: str, seconds: float) -> list[float]:
    ws = await connect(url, "innocent")
    rtts: list[float] = []
    until = time.monotonic() + seconds
    n = 10
    try:
        while time.monotonic() < until:
            n += 1
            started = time.perf_counter()
            await ws.send(orjson.dumps({"id": n, "rpc": {"method": "echo", "data": {"n": n}}}).decode())
            while True:
                frame = await asyncio.wait_for(ws.recv(), 10)
                if f'"id":{n},' in frame:
                    break
            rtts.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.02)
    finally:
        await ws.close()
    return rtts


def describe(rtts: list[float]) -> str:
    if not rtts:
        return "no answers"
    q = statistics.quantiles(rtts, n=100) if len(rtts) > 2 else rtts * 100
    return f"p50 {statistics.median(rtts):.1f} ms, p99 {q[98]:.1f} ms ({len(rtts)} round trips)"


async def rpc_flood(url: str, seconds: float) -> str:
    ws = await connect(url, "flooder")
    sent = answered = errors = 0
    closed: str = "stayed connected"

    async def read() -> None:
        nonlocal answered, errors, closed
        try:
            async for frame in ws:
                for line in str(frame).split("\n"):
                    answered += 1
                    errors += '"error"' in line
        except websockets.ConnectionClosed as exc:
            closed = f"closed by the server with {exc.rcvd.code if exc.rcvd else '?'}"

    reader = asyncio.create_task(read())
    until = time.monotonic() + seconds
    n = 100
    try:
        while time.monotonic() < until and closed == "stayed connected":
            frame = "\n".join(orjson.dumps({"id": n + i, "rpc": {"method": "echo", "data": {}}}).decode() for i in range(50))
            n += 50
            await ws.send(frame)
            sent += 50
            await asyncio.sleep(0)
    except websockets.ConnectionClosed:
        pass
    await asyncio.sleep(0.5)
    reader.cancel()
    await ws.close()
    return (f"sent {sent / seconds:,.0f} rpc/s, answered {answered - errors:,} ok and {errors:,} with an error; "
            f"{closed}")


async def join_leave_churn(url: str, seconds: float, api_port: int) -> str:

    listeners = []
    for i in range(300):
        ws = await connect(url, f"listener{i}")
        await ws.send(orjson.dumps({"id": 2, "subscribe": {"channel": "room:x"}}).decode())
        listeners.append(ws)
    received = 0

    async def drain(ws: websockets.ClientConnection) -> None:
        nonlocal received
        try:
            async for frame in ws:
                received += str(frame).count("\n") + 1
        except websockets.ConnectionClosed:
            pass

    drains = [asyncio.create_task(drain(ws)) for ws in listeners]
    await asyncio.sleep(1)
    received = 0
    ws = await connect(url, "churner")
    ok = refused = 0
    closed = "stayed connected"
    until = time.monotonic() + seconds
    n = 10
    try:
        while time.monotonic() < until:
            n += 2
            await ws.send(orjson.dumps({"id": n, "subscribe": {"channel": "room:x"}}).decode() + "\n"
                          + orjson.dumps({"id": n + 1, "unsubscribe": {"channel": "room:x"}}).decode())
            frame = str(await asyncio.wait_for(ws.recv(), 10))
            refused += frame.count('"code":111')
            ok += frame.count('"subscribe":{') + frame.count('"unsubscribe":{}')
    except (websockets.ConnectionClosed, TimeoutError) as exc:
        closed = f"closed by the server with {getattr(getattr(exc, 'rcvd', None), 'code', '?')}"
    pushes = received
    for task in drains:
        task.cancel()
    for listener in listeners:
        await listener.close()
    await ws.close()
    return (f"{ok / seconds:,.0f} subscribe/unsubscribe a second accepted, {refused:,} refused (111); {closed}; "
            f"{pushes / seconds:,.0f} join/leave pushes a second reached the 300 listeners")


async def main() -> None:
    seconds = float(os.environ.get("ATTACK_SECONDS", "5"))
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, api_port = start(Path(tmp))
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        try:
            await asyncio.sleep(1)
            quiet = await innocent_rtts(url, 3)
            print(f"innocent client, nobody else: {describe(quiet)}")
            for name, attack in [("rpc flood", lambda: rpc_flood(url, seconds)),
                                 ("join/leave churn", lambda: join_leave_churn(url, seconds, api_port))]:
                attacker = asyncio.create_task(attack())
                await asyncio.sleep(0.5)
                during = await innocent_rtts(url, seconds - 1)
                print(f"{name}: attacker {await attacker}")
                print(f"{name}: innocent client during it: {describe(during)}")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
