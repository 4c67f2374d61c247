"""Measurements the issue notes ask for, outside the scenario table:

- cross-instance publish-to-receive latency (two `livegate serve` processes on Redis),
- server API publish throughput (one connection, and 50 concurrent),
- archive write throughput and outbox end-to-end throughput and latency (PostgreSQL).

    python -m bench.extra        (REDIS_URL and DATABASE_URL as for make test)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid

import aiohttp
import asyncpg
import orjson

from bench.__main__ import ROOT, SECRET, Server, _wait_port, free_port, start_server, token
from bench.loadgen import Stats, close_clients, open_clients

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def cross_instance_latency() -> str:
    import subprocess

    a = start_server("livegate-redis")
    # The second instance: the same config (same Redis prefix) on other ports.
    config = (a.tmp / "config.toml").read_text().replace(f"port = {a.port}", f"port = {(bport := free_port())}").replace(
        f"port = {a.api_port}", f"port = {(bapi := free_port())}")
    (a.tmp / "b.toml").write_text(config)
    proc = subprocess.Popen(  # noqa: ASYNC220 - started before anything is measured
        [sys.executable, "-m", "livegate.cli", "serve", "--config", str(a.tmp / "b.toml")], cwd=ROOT)
    b = Server("livegate-redis", proc, bport, bapi)
    _wait_port(bapi)
    _wait_port(bport)
    await asyncio.sleep(0.5)
    try:
        stats = Stats(record_latency=True)
        subs, _ = await open_clients("127.0.0.1", b.port, "/connection/websocket", 1, lambda i: [
            orjson.dumps({"id": 1, "connect": {"token": token("sub")}}),
            orjson.dumps({"id": 2, "subscribe": {"channel": "bench:x"}})], stats)
        pub_stats = Stats()
        pubs, _ = await open_clients("127.0.0.1", a.port, "/connection/websocket", 1, lambda i: [
            orjson.dumps({"id": 1, "connect": {"token": token("pub")}})], pub_stats)
        async with aiohttp.ClientSession(headers={"X-API-Key": "bench"}) as http:
            for i in range(1000):  # 200 publications/s through instance A's HTTP API
                data = b'{"ts":%d,"seq":%d}' % (time.monotonic_ns(), i)
                async with http.post(f"http://127.0.0.1:{a.api_port}/api/publish",
                                     data=b'{"channel":"bench:x","data":%s}' % data) as r:
                    await r.read()
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        lat = [v / 1e6 for v in stats.latencies]
        close_clients(subs + pubs)
        return (f"cross-instance publish (HTTP API of A) to receive (client on B): {len(lat)} samples, "
                f"p50 {pct(lat, 0.5):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, max {max(lat):.2f} ms")
    finally:
        a.stop()
        b.stop()


async def api_throughput() -> str:
    server = start_server("livegate-redis")
    try:
        url = f"http://127.0.0.1:{server.api_port}/api/publish"
        body = b'{"channel":"bench:api","data":{"x":1}}'
        out = []
        for concurrency in (1, 50):
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector, headers={"X-API-Key": "bench"}) as http:
                done = 0
                until = time.monotonic() + 3

                async def worker(until: float = until) -> None:
                    nonlocal done
                    while time.monotonic() < until:
                        async with http.post(url, data=body) as r:
                            assert r.status == 200
                            await r.read()
                        done += 1

                started, cpu0 = time.monotonic(), server.cpu_seconds()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                cpu = (server.cpu_seconds() - cpu0) / done * 1e6
                out.append(f"{done / (time.monotonic() - started):,.0f} req/s with {concurrency} connection(s) "
                           f"(server CPU {cpu:.0f} µs per request)")
        return "API publish throughput (redis engine, server on one core): " + ", ".join(out)
    finally:
        server.stop()


async def persistence() -> str:
    from livegate.config import parse_config
    from livegate.persistence.migrate import migrate
    from livegate.server.lifecycle import Server as LgServer

    schema = "lgbench_" + uuid.uuid4().hex[:8]
    await migrate(DATABASE_URL, schema)
    config = parse_config({
        "http_server": {"port": 0}, "http_api": {"port": 0, "key": "bench"},
        "client": {"token": {"hmac_secret_key": SECRET}}, "log": {"level": "warning"},
        "persistence": {"dsn": DATABASE_URL, "schema": schema, "outbox_poll_interval": "1s"},
        "channel": {"namespaces": [{"name": "ar", "archive": True, "history_size": 100, "history_ttl": "5m",
                                    "allow_subscribe_for_client": True}]}}, environ={})
    server = LgServer(config)
    await server.start()
    conn = await asyncpg.connect(DATABASE_URL)
    try:
        archive = server.persistence.archive
        n = 20000
        started = time.monotonic()
        for i in range(n):
            await server.node.publish(f"ar:{i % 100}", b'{"n":%d}' % i)
        while archive.written < n:
            await asyncio.sleep(0.01)
        archive_rate = n / (time.monotonic() - started)
        # outbox: a subscriber counts deliveries
        stats = Stats(record_latency=True)
        clients, _ = await open_clients("127.0.0.1", server.port, "/connection/websocket", 1, lambda i: [
            orjson.dumps({"id": 1, "connect": {"token": token("o")}}),
            orjson.dumps({"id": 2, "subscribe": {"channel": "ar:outbox"}})], stats)
        rows = 5000
        started = time.monotonic()
        async with conn.transaction():
            await conn.executemany(
                f"INSERT INTO {schema}.outbox (method, payload) VALUES ('publish', $1)",
                [(orjson.dumps({"channel": "ar:outbox", "data": {"ts": 0, "n": i}}).decode(),) for i in range(rows)])
        while stats.delivered < rows:
            await asyncio.sleep(0.005)
        outbox_rate = rows / (time.monotonic() - started)
        stats.latencies.clear()
        for _ in range(200):  # one row per transaction: commit-to-receive latency
            await conn.execute(f"INSERT INTO {schema}.outbox (method, payload) VALUES ('publish', $1)",
                               orjson.dumps({"channel": "ar:outbox", "data": {"ts": time.monotonic_ns()}}).decode())
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        lat = [v / 1e6 for v in stats.latencies]
        close_clients(clients)
        return (f"archive writes: {archive_rate:,.0f} publications/s (20,000 publications, publish to row committed); "
                f"outbox: {outbox_rate:,.0f} rows/s end to end (5,000 rows in one transaction to all received), "
                f"commit-to-receive latency p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 0.99):.1f} ms "
                f"({len(lat)} single-row transactions)")
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
        await server.drain(0)
        await server.stop()


async def main() -> None:
    for fn in (cross_instance_latency, api_throughput, persistence):
        print(await fn(), flush=True)


if __name__ == "__main__":
    import uvloop
    uvloop.run(main())
