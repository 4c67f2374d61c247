"""`make bench`: livegate against a raw `websockets` + `broadcast()` baseline, same run.

Servers run pinned to CPU 0 (taskset); this process (load generator and publisher) pins
itself to CPU 1. Publications enter the way production traffic does: from a backend through
Redis (FCALL livegate_publish for livegate, PUBLISH for the baseline); the memory engine gets
them over the HTTP API. Every figure is the median of --runs runs with min and max, and every
run checks that no message was lost.

    python -m bench [--runs 3] [--only S1,S2,...] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.loadgen import (
    RedisPublisher,
    Stats,
    close_clients,
    open_clients,
    redis_publisher,
    resp,
    ws_client_frame,
)

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAD = "x" * 48  # makes the publication data 100 bytes of JSON


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(user: str) -> str:
    import jwt
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def data_json(seq: int) -> bytes:
    body = b'{"ts":%d,"seq":%d,"pad":"%s"}' % (time.monotonic_ns(), seq, PAD.encode())
    return body + b" " * max(0, 100 - len(body))


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    port: int
    api_port: int = 0
    prefix: str = ""
    tmp: Path | None = None

    @property
    def pids(self) -> list[int]:
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    pids.append(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        return pids

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
        return total

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _pinned(cmd: list[str], cpu: str | None) -> list[str]:
    if cpu is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *cmd]
    return cmd


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def start_server(kind: str, workers: int | None = None, cpus: str | None = None) -> Server:
    """``workers`` (default: 2 for a kind ending in "2w", else 1) and ``cpus`` (a taskset CPU
    list; default: CPU 0 for one worker, unpinned for more) are the many-core layout's."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kind == "baseline":
        proc = subprocess.Popen(_pinned([sys.executable, "-m", "bench.baseline", str(port), REDIS_URL, SECRET],
                                        cpus or "0"),
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        _wait_port(port)
        time.sleep(0.3)  # its Redis subscription
        return Server(kind, proc, port)
    api_port = free_port()
    prefix = f"lgbench-{uuid.uuid4().hex[:8]}"
    if workers is None:
        workers = 2 if kind.endswith("2w") else 1
    engine = "memory" if "memory" in kind else "redis"
    tmp = Path(tempfile.mkdtemp(prefix="livegate-bench-"))
    (tmp / "config.toml").write_text(f"""
[http_server]
port = {port}
workers = {workers}
[http_api]
port = {api_port}
key = "bench"
[client]
queue_max_size = 67108864
[http_stream]
enabled = true
[client.token]
hmac_secret_key = "{SECRET}"
[engine]
type = "{engine}"
[engine.redis]
address = ["{REDIS_URL}"]
prefix = "{prefix}"
[log]
level = "{os.environ.get("BENCH_LOG", "warning")}"
[[channel.namespaces]]
name = "bench"
allow_subscribe_for_client = true
[[channel.namespaces]]
name = "benchh"
history_size = 100
history_ttl = "5m"
force_recovery = true
allow_subscribe_for_client = true
""")
    cmd = [sys.executable, "-m", "livegate.cli", "serve", "--config", str(tmp / "config.toml")]
    proc = subprocess.Popen(_pinned(cmd, cpus or (None if workers > 1 else "0")), cwd=ROOT, env=env)
    _wait_port(api_port)
    _wait_port(port)
    time.sleep(0.3 if workers == 1 else 1.5)
    return Server(kind, proc, port, api_port, prefix, tmp)


# -- publishers ------------------------------------------------------------------------------


class Publisher:
    """Publishes 100-byte JSON publications the way the server under test takes them."""

    def __init__(self, server: Server, batch: int = 1) -> None:
        self.server = server
        #: > 1: livegate's publications go out as FCALL livegate_publish_batch calls of up to
        #: this many (what a backend with a queue of events to send does)
        self.batch = batch if server.kind != "baseline" and "memory" not in server.kind else 1
        self._queued: list[tuple[bytes, bytes]] = []
        self.redis: RedisPublisher | None = None
        self.http: aiohttp.ClientSession | None = None
        self.sent = 0
        self.inflight_http: set[asyncio.Task[Any]] = set()

    async def open(self) -> None:
        if "memory" in self.server.kind:
            self.http = aiohttp.ClientSession(headers={"X-API-Key": "bench"})
        else:
            from urllib.parse import urlsplit
            url = urlsplit(REDIS_URL)
            self.redis = await redis_publisher(url.hostname or "127.0.0.1", url.port or 6379)
        self._opts = orjson.dumps({"prefix": self.server.prefix})

    async def close(self) -> None:
        if self.inflight_http:
            await asyncio.gather(*self.inflight_http, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        if self.redis is not None and self.redis.transport is not None:
            self.redis.transport.close()

    def publish(self, channel: str, seq: int) -> None:
        data = data_json(seq)
        self.sent += 1
        if self.redis is not None:
            if self.server.kind == "baseline":
                push = b'{"push":{"channel":"%s","pub":{"data":%s}}}' % (channel.encode(), data)
                self.redis.send(resp(b"PUBLISH", b"bench." + channel.encode(), push))
            elif self.batch > 1:
                self._queued.append((channel.encode(), data))
                if len(self._queued) >= self.batch:
                    self.flush()
            else:
                self.redis.send(resp(b"FCALL", b"livegate_publish", b"1", channel.encode(), data, self._opts))
            return
        assert self.http is not None
        url = f"http://127.0.0.1:{self.server.api_port}/api/publish"
        body = b'{"channel":"%s","data":%s}' % (channel.encode(), data)
        task = asyncio.get_running_loop().create_task(self._post(url, body))
        self.inflight_http.add(task)
        task.add_done_callback(self.inflight_http.discard)

    def flush(self) -> None:
        """Send the queued publications as one FCALL livegate_publish_batch."""
        queued, self._queued = self._queued, []
        if not queued or self.redis is None:
            return
        args: list[bytes] = [b"FCALL", b"livegate_publish_batch", b"%d" % len(queued)]
        args += [channel for channel, _ in queued]
        args.append(self._opts)
        for _, data in queued:
            args += [data, b"", b""]
        self.redis.send(resp(*args))

    async def _post(self, url: str, body: bytes) -> None:
        assert self.http is not None
        async with self.http.post(url, data=body) as resp_:
            await resp_.read()

    def errors(self) -> list[str]:
        return self.redis.errors if self.redis is not None else []


# -- scenarios -------------------------------------------------------------------------------


def connect_commands(channel_of: Any, protobuf: Any = lambda i: False) -> Any:
    """The connect and subscribe commands of connection i: JSON, or encoded Protobuf `Command`s
    where ``protobuf(i)``."""
    def commands(i: int) -> list[bytes]:
        if protobuf(i):
            from livegate.protocol.proto import client_pb2 as pb
            return [pb.Command(id=1, connect=pb.ConnectRequest(token=token(f"u{i}"))).SerializeToString(),
                    pb.Command(id=2, subscribe=pb.SubscribeRequest(channel=channel_of(i))).SerializeToString()]
        return [orjson.dumps({"id": 1, "connect": {"token": token(f"u{i}")}}),
                orjson.dumps({"id": 2, "subscribe": {"channel": channel_of(i)}})]
    return commands


PROTOBUF_SHARE = {"json": lambda i: False, "protobuf": lambda i: True, "mixed": lambda i: i % 2 == 1}


async def wait_drained(stats: Stats, expected: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while stats.delivered < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    return expected - stats.delivered


class RedisCommandStats:
    """Redis CPU per publication over the measured window: the main thread's CPU time (INFO
    cpu) divided by the publications sent. Only the benchmark's publisher and the server under
    test use this Redis meanwhile, so that is what publishing costs Redis (the pub/sub
    delivery to the server included). Not INFO commandstats: its per-command times are wall
    time, and the Redis shares its CPU with the load generator here."""

    def __init__(self) -> None:
        import redis

        self.client = redis.Redis.from_url(REDIS_URL)
        self.cpu0 = 0.0

    def _cpu(self) -> float:
        info = self.client.info("cpu")
        user = info.get("used_cpu_user_main_thread", info.get("used_cpu_user", 0.0))
        system = info.get("used_cpu_sys_main_thread", info.get("used_cpu_sys", 0.0))
        return float(user) + float(system)

    def reset(self) -> None:
        self.cpu0 = self._cpu()

    def us_per_publish(self, publications: int) -> float | None:
        cpu = self._cpu() - self.cpu0
        self.client.close()
        return cpu / publications * 1e6 if publications else None


async def closed_loop(server: Server, n_clients: int, channels: list[str], window_msgs: int, seconds: float,
                      warmup: float, codecs: str = "json", load_cpus: list[int] | None = None,
                      batch: int = 1) -> dict[str, Any]:
    """``codecs``: the subscribers' codec, "json", "protobuf" or "mixed" (every other one), or
    "http_stream" (JSON over HTTP-streaming). ``load_cpus``: the clients are spread over load
    generator processes, one pinned to each of these CPUs (the many-core layout); else they
    live in this process."""
    per_channel = n_clients // len(channels)
    stats: Any
    procs: LoadProcs | None = None
    clients: list[Any] = []
    if load_cpus:
        procs = stats = await LoadProcs.start(load_cpus, [server.port], "/connection/websocket", n_clients,
                                              channels=channels)
    else:
        stats = Stats()
        stream = codecs == "http_stream"
        proto = PROTOBUF_SHARE["json" if stream else codecs]
        clients, _ = await open_clients("127.0.0.1", server.port,
                                        "/connection/http_stream" if stream else "/connection/websocket", n_clients,
                                        connect_commands(lambda i: channels[i % len(channels)], proto), stats,
                                        protobuf=proto, http_stream=stream)
    pub = Publisher(server, batch)
    await pub.open()
    redis_stats = RedisCommandStats() if "memory" not in server.kind else None
    expected = 0
    seq = 0
    rng = random.Random(7)
    try:
        started = time.monotonic()
        measure_from = started + warmup
        until = measure_from + seconds
        d0 = c0 = t0 = None
        while True:
            now = time.monotonic()
            if d0 is None and now >= measure_from:
                d0, c0, t0, p0 = stats.delivered, server.cpu_seconds(), now, seq
                if redis_stats is not None:
                    redis_stats.reset()
            if now >= until:
                break
            while expected - stats.delivered < window_msgs:
                channel = channels[0] if len(channels) == 1 else channels[rng.randrange(len(channels))]
                pub.publish(channel, seq)
                seq += 1
                expected += per_channel
            pub.flush()
            await asyncio.sleep(0)
            if pub.inflight_http and len(pub.inflight_http) > 256:
                await asyncio.sleep(0.001)
        delivered = stats.delivered - d0
        cpu = server.cpu_seconds() - c0
        elapsed = time.monotonic() - t0
        redis_us = redis_stats.us_per_publish(seq - p0) if redis_stats is not None else None
        lost = await wait_drained(stats, expected)
    finally:
        await pub.close()
        close_clients(clients)
        if procs is not None:
            await procs.close()
    errors = pub.errors()
    return {"msgs_per_s": delivered / elapsed, "lost": lost, "published": seq,
            "cpu_us_per_msg": cpu / delivered * 1e6 if delivered else None,
            "redis_us_per_publish": redis_us,
            "frames": stats.frames, "errors": errors[:3]}


#: The many-core layout's windows are 8 times larger: its load generator processes report
#: their counts every 10 ms (more seldom when busy), and a window must outlast that delay or
#: it, not the server, sets the throughput.
MANY_CORE_WINDOW = 8


async def s1(server: Server, quick: bool, ns: str = "bench", codecs: str = "json",
             load_cpus: list[int] | None = None) -> dict[str, Any]:
    window = 1000 * 32 * (MANY_CORE_WINDOW if load_cpus else 1)
    return await closed_loop(server, 1000, [f"{ns}:s1"], window_msgs=window, seconds=2 if quick else 4, warmup=1,
                             codecs=codecs, load_cpus=load_cpus)


async def s3(server: Server, quick: bool, ns: str = "bench", load_cpus: list[int] | None = None,
             batch: int = 1) -> dict[str, Any]:
    return await closed_loop(server, 5000, [f"{ns}:c{i}" for i in range(5000)],
                             window_msgs=2000 * (MANY_CORE_WINDOW if load_cpus else 1),
                             seconds=2 if quick else 4, warmup=1, load_cpus=load_cpus, batch=batch)


class LoadProcs:
    """Load generator processes (bench/loadworker.py), one pinned to each CPU given, sharing
    the connections; ``delivered`` and ``frames`` add up what they report every 10 ms."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self.counts: list[int] = []
        self.frame_counts: list[int] = []
        self.reports: list[list[tuple[float, int]]] = []  # per process: (its clock, delivered)
        self.readers: list[asyncio.Task[None]] = []

    @property
    def delivered(self) -> int:
        return sum(self.counts)

    @property
    def frames(self) -> int:
        return sum(self.frame_counts)

    @classmethod
    async def start(cls, cpus: list[int], ports: list[int], path: str, n_clients: int,
                    channels: list[str] | None = None, go: bool = False) -> LoadProcs:
        self = cls()
        share, extra = divmod(n_clients, len(cpus))
        first = 0
        ready: list[asyncio.Future[None]] = []
        for k, cpu in enumerate(cpus):
            count = share + (1 if k < extra else 0)
            params = {"port": ports[k % len(ports)], "path": path, "first": first, "count": count, "go": go,
                      "subscribe": channels is not None, "channels": channels or [], "secret": SECRET}
            first += count
            proc = await asyncio.create_subprocess_exec(
                *_pinned([sys.executable, "-m", "bench.loadworker", orjson.dumps(params).decode()], str(cpu)),
                cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            self.procs.append(proc)
            self.counts.append(0)
            self.frame_counts.append(0)
            self.reports.append([])
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ready.append(fut)
            self.readers.append(asyncio.get_running_loop().create_task(self._read(k, proc, fut)))
        try:
            async with asyncio.timeout(120):
                await asyncio.gather(*ready)
        except BaseException:
            await self.close()
            raise
        return self

    async def _read(self, k: int, proc: asyncio.subprocess.Process, ready: asyncio.Future[None]) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            parts = line.split()
            if parts[0] == b"ready":
                ready.set_result(None)
            elif parts[0] == b"d":
                self.counts[k], self.frame_counts[k] = int(parts[1]), int(parts[2])
                self.reports[k].append((float(parts[3]), int(parts[1])))
        if not ready.done():
            ready.set_exception(ConnectionError(f"load generator {k} exited with {await proc.wait()}"))

    def rate(self, skip: float) -> float:
        """Messages a second, added up over the processes, each measured by its own clock
        from ``skip`` seconds after its first report to its last (a process whose loop is
        busy reading reports seldom, so wall-clock sampling here would miss its counts)."""
        total = 0.0
        for reports in self.reports:
            start = next(((t, d) for t, d in reports if t >= reports[0][0] + skip), None) if reports else None
            if start is None or reports[-1][0] <= start[0]:
                continue
            total += (reports[-1][1] - start[1]) / (reports[-1][0] - start[0])
        return total

    async def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self.procs:
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self.readers:
            task.cancel()


def pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6


async def s2(server: Server, quick: bool, rate: int) -> dict[str, Any]:
    stats = Stats()
    n = 1000
    clients, _ = await open_clients("127.0.0.1", server.port, "/connection/websocket", n,
                                    connect_commands(lambda i: "bench:s2"), stats)
    pub = Publisher(server)
    await pub.open()
    seconds = 2 if quick else 4
    try:
        await asyncio.sleep(0.3)
        stats.record_latency = True
        interval = 1 / rate
        start = time.monotonic()
        for i in range(int(seconds * rate)):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pub.publish("bench:s2", i)
        lost = await wait_drained(stats, pub.sent * n)
    finally:
        await pub.close()
        close_clients(clients)
    lat = stats.latencies
    return {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "p999_ms": pct(lat, 0.999),
            "max_ms": max(lat) / 1e6 if lat else float("nan"), "lost": lost, "samples": len(lat)}


async def s4(server: Server, quick: bool) -> dict[str, Any]:
    n = 3000 if quick else 10000
    stats = Stats()
    await asyncio.sleep(0.5)
    rss0 = server.rss_bytes()
    # Tokens are made before the clock starts: signing them is the load generator's cost, not the server's.
    make = connect_commands(lambda i: f"bench:idle{i % 100}")
    commands = [make(i) for i in range(n)]
    cpu0 = server.cpu_seconds()
    # 64 handshakes at a time: below the baseline's default listen backlog (100).
    clients, took = await open_clients("127.0.0.1", server.port, "/connection/websocket", n,
                                       commands.__getitem__, stats, concurrency=64)
    cpu_per_connect = (server.cpu_seconds() - cpu0) / n * 1e6
    await asyncio.sleep(1.0)
    rss1 = server.rss_bytes()
    alive = sum(1 for c in clients if c.closed is None and not c.transport.is_closing())
    close_clients(clients)
    return {"rss_kib_per_conn": (rss1 - rss0) / n / 1024, "connects_per_s": n / took,
            "server_cpu_us_per_connect": cpu_per_connect, "lost": n - alive}


async def loadgen_ceiling(per_frame: int, protobuf: bool = False) -> float:
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        _pinned([sys.executable, "-m", "bench.trivial", str(port), str(per_frame), *(["protobuf"] if protobuf else [])],
                "0"), cwd=ROOT)
    try:
        _wait_port(port)
        stats = Stats()
        clients, _ = await open_clients("127.0.0.1", port, "/", 200, lambda i: [], stats)
        for c in clients:
            c.transport.write(ws_client_frame(b"go"))
        await asyncio.sleep(0.5)
        d0, t0 = stats.delivered, time.monotonic()
        await asyncio.sleep(2.0)
        rate = (stats.delivered - d0) / (time.monotonic() - t0)
        close_clients(clients)
        return rate
    finally:
        proc.terminate()
        proc.wait()


# -- driver ----------------------------------------------------------------------------------

SCENARIOS = {
    "S1": ("fan-out, 1,000 subscribers, delivered msgs/s", s1, "msgs_per_s", ">= 2.0x", lambda r: r >= 2.0),
    "S2@10": ("latency p99 at 10 pub/s, 1,000 subscribers (ms)", lambda s, q: s2(s, q, 10), "p99_ms", "<= 0.8x",
              lambda r: r <= 0.8),
    "S2@50": ("latency p99 at 50 pub/s, 1,000 subscribers (ms)", lambda s, q: s2(s, q, 50), "p99_ms", "<= 0.8x",
              lambda r: r <= 0.8),
    "S3": ("many channels, 5,000 conns, delivered msgs/s", s3, "msgs_per_s", ">= 3.0x", lambda r: r >= 3.0),
    "S4-rss": ("idle RSS per subscribed connection (KiB)", s4, "rss_kib_per_conn", "<= 1.1x", lambda r: r <= 1.1),
    "S4-rate": ("connect + subscribe rate, JWT verified (/s)", None, "connects_per_s", ">= 1.5x", lambda r: r >= 1.5),
    "S4-cpu": ("server CPU per connect + subscribe (µs; lower is better)", None, "server_cpu_us_per_connect",
               "(context)", lambda r: True),
}
#: Publications per FCALL livegate_publish_batch in the batched S3 rows.
BATCH = 32
KINDS = os.environ.get("BENCH_KINDS", "baseline,livegate-redis,livegate-memory").split(",")


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    lost: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


def fmt(v: float) -> str:
    if v != v:
        return "n/a"
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


async def attempt(fn: Any, server: Server, kind: str, quick: bool) -> tuple[dict[str, Any], Server]:
    """Run a scenario; if setting up its connections fails (this machine is shared and
    noisy), say so and try once more on a fresh server."""
    try:
        return await fn(server, quick), server
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        print(f"  ! {kind}: {type(exc).__name__}: {str(exc)[:160]} — retrying once on a fresh server", flush=True)
        server.stop()
        await asyncio.sleep(1)
        server = start_server(kind)
        try:
            return await fn(server, quick), server
        except BaseException:
            server.stop()
            raise


async def run(args: argparse.Namespace) -> int:
    only = set(args.only.split(",")) if args.only else None
    table: dict[tuple[str, str], Cell] = {}
    started = time.time()
    ceiling1 = await loadgen_ceiling(1)
    ceiling16 = await loadgen_ceiling(16)
    ceiling16p = await loadgen_ceiling(16, protobuf=True)
    print(f"load generator ceiling: {ceiling1:,.0f} msgs/s at 1 message per frame, "
          f"{ceiling16:,.0f} msgs/s at 16 per frame, {ceiling16p:,.0f} msgs/s at 16 Protobuf replies per frame",
          flush=True)
    groups = [("S1", ["S1"]), ("S2", ["S2@10", "S2@50"]), ("S3", ["S3"]), ("S4", ["S4-rss"])]
    for _, names in groups:
        names = [n for n in names if only is None or n.split("@")[0].split("-")[0] in only or n in only]
        if not names:
            continue
        for kind in KINDS:
            if kind == "livegate-memory" and names[0][:2] in ("S3", "S4"):
                continue  # the memory engine is for comparison on one channel (S1, S2); keeps make bench < 10 min
            for run_no in range(args.runs):
                server = start_server(kind)
                try:
                    for name in names:
                        fn = SCENARIOS[name][1]
                        result, server = await attempt(fn, server, kind, args.quick)
                        if name == "S4-rss":
                            for key, metric in (("S4-rss", "rss_kib_per_conn"), ("S4-rate", "connects_per_s"),
                                                ("S4-cpu", "server_cpu_us_per_connect")):
                                cell = table.setdefault((key, kind), Cell())
                                cell.values.append(result[metric])
                                cell.lost += result["lost"] if key == "S4-rss" else 0
                        else:
                            cell = table.setdefault((name, kind), Cell())
                            cell.values.append(result[SCENARIOS[name][2]])
                            cell.lost += result["lost"]
                            if result.get("cpu_us_per_msg"):
                                cell.extra.setdefault("cpu_us", []).append(result["cpu_us_per_msg"])
                            if result.get("redis_us_per_publish"):
                                cell.extra.setdefault("redis_us", []).append(result["redis_us_per_publish"])
                        print(f"  {name:<7} {kind:<16} run {run_no + 1}: "
                              + ", ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in result.items()),
                              flush=True)
                finally:
                    server.stop()
    extras = [("S1", "livegate-redis-protobuf", lambda s, q: s1(s, q, codecs="protobuf")),
              ("S1", "livegate-redis-mixed", lambda s, q: s1(s, q, codecs="mixed")),
              ("S1", "livegate-redis-http_stream", lambda s, q: s1(s, q, codecs="http_stream")),
              ("S1", "livegate-redis-2w", s1), ("S1", "livegate-redis-history", lambda s, q: s1(s, q, "benchh")),
              ("S3", "livegate-redis-history", lambda s, q: s3(s, q, "benchh")),
              ("S3", "livegate-redis-batch", lambda s, q: s3(s, q, batch=BATCH)),
              ("S3", "livegate-redis-history-batch", lambda s, q: s3(s, q, "benchh", batch=BATCH))]
    for name, label, fn in extras:
        if only is not None and name not in only:
            continue
        for run_no in range(args.runs):
            kind = "livegate-redis-2w" if label.endswith("2w") else "livegate-redis"
            server = start_server(kind)
            try:
                result, server = await attempt(fn, server, kind, args.quick)
            finally:
                server.stop()
            cell = table.setdefault((name, label), Cell())
            cell.values.append(result["msgs_per_s"])
            cell.lost += result["lost"]
            cell.extra.setdefault("cpu_us", []).append(result["cpu_us_per_msg"])
            if result.get("redis_us_per_publish"):
                cell.extra.setdefault("redis_us", []).append(result["redis_us_per_publish"])
            print(f"  {name:<7} {label} run {run_no + 1}: msgs/s={fmt(result['msgs_per_s'])} "
                  f"cpu_us/msg={fmt(result['cpu_us_per_msg'])} lost={result['lost']}", flush=True)
    report = render(table, (ceiling1, ceiling16, ceiling16p), args, time.time() - started)
    print()
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}.md").write_text(report)
    (RESULTS / "latest.md").write_text(report)
    (RESULTS / f"{stamp}.json").write_text(orjson.dumps(
        {f"{k[0]}|{k[1]}": {"values": c.values, "lost": c.lost, **c.extra} for k, c in table.items()},
        option=orjson.OPT_INDENT_2).decode())
    return 0


def render(table: dict[tuple[str, str], Cell], ceilings: tuple[float, float, float], args: argparse.Namespace,
           took: float) -> str:
    ceiling1, ceiling16, ceiling16p = ceilings
    import hiredis
    import websockets

    import livegate
    lines = [
        "# livegate benchmark",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; server pinned to CPU 0; "
        "load generator, publisher and the benchmark's own redis-server on CPU 1",
        f"- versions: livegate {livegate.__version__}, Python {platform.python_version()}, websockets "
        f"{websockets.__version__}, hiredis {hiredis.__version__}, redis-server {redis_version()}",
        f"- settings: runs={args.runs}{' (quick)' if args.quick else ''}, 100-byte JSON publications, "
        "closed loop windows: S1 32 publications, S3 2,000 messages; took "
        f"{took:.0f} s",
        f"- load generator ceiling: {ceiling1:,.0f} msgs/s (1 message per frame), {ceiling16:,.0f} msgs/s "
        f"(16 per frame), {ceiling16p:,.0f} msgs/s (16 Protobuf replies per frame)",
        "",
        "| scenario | baseline (raw websockets) | livegate, redis engine | ratio | livegate, memory engine | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (title, _, _, target, ok) in SCENARIOS.items():
        base = table.get((name, "baseline"))
        if base is None:
            continue

        def cell(kind: str, name: str = name, base: Cell = base) -> tuple[str, str, float]:
            c = table.get((name, kind))
            if c is None or not c.values:
                return "n/a", "n/a", float("nan")
            ratio = c.median() / base.median() if base.median() else float("nan")
            return (f"{fmt(c.median())} ({fmt(min(c.values))}–{fmt(max(c.values))})", f"{ratio:.2f}x", ratio)

        redis_v, redis_r, ratio = cell("livegate-redis")
        mem_v, mem_r, _ = cell("livegate-memory")
        met = "—" if target == "(context)" else ("yes" if ratio == ratio and ok(ratio) else "no")
        lines.append(f"| {title} | {fmt(base.median())} ({fmt(min(base.values))}–{fmt(max(base.values))}) | "
                     f"{redis_v} | {redis_r} | {mem_v} | {mem_r} | {target} | {met} |")
    lost = sum(c.lost for c in table.values())
    lines.append("")
    lines.append(f"Lost messages: {lost} in every scenario and run." if lost == 0 else
                 f"LOST MESSAGES: {lost} — " + ", ".join(f"{k[0]}/{k[1]}: {c.lost}" for k, c in table.items() if c.lost))
    cpu = {k[1]: statistics.median(c.extra["cpu_us"]) for k, c in table.items() if k[0] == "S1" and c.extra.get("cpu_us")}
    for name, title in (("S1", "S1 fan-out"), ("S3", "S3 many channels")):
        hist, base = table.get((name, "livegate-redis-history")), table.get((name, "baseline"))
        if hist is not None and base is not None:
            lines.append(f"{title} with history and recovery on (namespace with history_size 100, force_recovery): "
                         f"{fmt(hist.median())} msgs/s ({fmt(min(hist.values))}–{fmt(max(hist.values))}) = "
                         f"{hist.median() / base.median():.2f}x of the baseline, which keeps no history.")
    s3_rows = [(label, table.get(("S3", kind))) for label, kind in (
        ("baseline (PUBLISH)", "baseline"), ("FCALL livegate_publish, no history", "livegate-redis"),
        ("FCALL livegate_publish, history + recovery", "livegate-redis-history"),
        (f"FCALL livegate_publish_batch of {BATCH}, no history", "livegate-redis-batch"),
        (f"FCALL livegate_publish_batch of {BATCH}, history + recovery", "livegate-redis-history-batch"))]
    s3_base = table.get(("S3", "baseline"))
    if s3_base is not None and any(c is not None for _, c in s3_rows[1:]):
        lines += ["", "S3 by publishing door (5,000 connections, one channel each; Redis CPU: its main thread's CPU time over the window, from INFO cpu):",
                  "", "| publisher | delivered msgs/s | × baseline | server CPU µs per message | Redis CPU µs per publication |",
                  "|---|---|---|---|---|"]
        for label, c in s3_rows:
            if c is None or not c.values:
                continue
            cpu_us = statistics.median(c.extra["cpu_us"]) if c.extra.get("cpu_us") else float("nan")
            redis_us = statistics.median(c.extra["redis_us"]) if c.extra.get("redis_us") else float("nan")
            lines.append(f"| {label} | {fmt(c.median())} ({fmt(min(c.values))}–{fmt(max(c.values))}) | "
                         f"{c.median() / s3_base.median():.2f}x | {cpu_us:.2f} | {redis_us:.2f} |")
    codec_rows = [(label, table.get(("S1", kind))) for label, kind in (
        ("JSON only", "livegate-redis"), ("Protobuf only", "livegate-redis-protobuf"),
        ("mixed, half and half", "livegate-redis-mixed"),
        ("JSON over HTTP-streaming", "livegate-redis-http_stream"))]
    if all(c is not None for _, c in codec_rows[1:]):
        lines += ["", "S1 by subscriber codec and transport (livegate, redis engine; the same 100-byte JSON "
                  "publications; WebSocket unless said):", "",
                  "| subscribers | delivered msgs/s | server CPU µs per message |", "|---|---|---|"]
        for label, c in codec_rows:
            if c is not None and c.values:
                cpu_us = statistics.median(c.extra["cpu_us"]) if c.extra.get("cpu_us") else float("nan")
                lines.append(f"| {label} | {fmt(c.median())} ({fmt(min(c.values))}–{fmt(max(c.values))}) | "
                             f"{cpu_us:.2f} |")
    two = table.get(("S1", "livegate-redis-2w"))
    if two is not None and ("S1", "livegate-redis") in table:
        one = table[("S1", "livegate-redis")]
        lines.append("")
        lines.append(f"S1 with `http_server.workers = 2` (unpinned, sharing both cores with the load generator): "
                     f"{fmt(two.median())} msgs/s = {two.median() / one.median():.2f}x of one pinned worker.")
    if cpu:
        lines.append("Server CPU per delivered message in S1 (µs): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items())) + ".")
    return "\n".join(lines) + "\n"


def redis_version() -> str:
    """The redis-server binary's version; "unknown" without one on PATH (then $REDIS_URL is used)."""
    binary = shutil.which("redis-server")
    if binary is None:
        return "unknown (no redis-server on PATH; $REDIS_URL used)"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()
    return next((w[2:] for w in out if w.startswith("v=")), "unknown")


def start_redis(cpu: str = "1") -> subprocess.Popen[bytes] | None:
    """A Redis of the benchmark's own, pinned to ``cpu`` (the load generator's CPU in the
    2-core layout), so that the server under test has CPU 0 to itself. Falls back to
    $REDIS_URL without redis-server."""
    global REDIS_URL
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen(_pinned([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--loglevel", "warning"], cpu),
                            stdout=subprocess.DEVNULL)
    _wait_port(port)
    REDIS_URL = f"redis://127.0.0.1:{port}/0"
    return proc


# -- the many-core layout ------------------------------------------------------------------


@dataclass
class Layout:
    """Which CPUs do what in the many-core layout: Redis on one, the server's workers on the
    next ``max(workers)``, the load generator processes (and this coordinating process, on
    the first of them) on the rest. With too few CPUs (this 2-core machine) the roles share
    CPUs: the mechanics run, the figures do not scale."""

    redis: int
    server: list[int]
    load: list[int]

    @classmethod
    def plan(cls, workers: int, load_procs: int | None) -> Layout:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        redis = cpus[0]
        rest = cpus[1:] or cpus
        server = rest[:workers] if len(rest) > workers else rest[:max(1, len(rest) - 1)] or rest
        load = [c for c in rest if c not in server] or [rest[-1]]
        if load_procs:
            load = (load * load_procs)[:load_procs]
        return cls(redis, server, load)

    def describe(self) -> str:
        return (f"Redis on CPU {self.redis}; server workers on CPUs {','.join(map(str, self.server))}; "
                f"{len(self.load)} load generator processes on CPUs {','.join(map(str, self.load))}")


async def many_core_ceiling(layout: Layout) -> float:
    """The load generator's ceiling with the layout's processes: trivial servers (one per
    server CPU) write 16 messages per frame as fast as the connections take them."""
    servers, ports = [], []
    for cpu in layout.server:
        port = free_port()
        servers.append(subprocess.Popen(  # noqa: ASYNC220 - started before anything is measured
            _pinned([sys.executable, "-m", "bench.trivial", str(port), "16"], str(cpu)), cwd=ROOT))
        ports.append(port)
    try:
        for port in ports:
            _wait_port(port)
        procs = await LoadProcs.start(layout.load, ports, "/", 200 * len(layout.load), go=True)
        try:
            await asyncio.sleep(3.0)
        finally:
            await procs.close()
        return procs.rate(skip=0.5)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait()


async def run_many_core(args: argparse.Namespace, layout: Layout) -> int:
    workers = [int(w) for w in args.workers.split(",")]
    started = time.time()
    print(f"many-core layout: {layout.describe()}", flush=True)
    ceiling = await many_core_ceiling(layout)
    print(f"load generator ceiling: {ceiling:,.0f} msgs/s ({len(layout.load)} processes, 16 messages per frame)",
          flush=True)
    scenarios = {"S1": lambda srv, q: s1(srv, q, load_cpus=layout.load),
                 "S3": lambda srv, q: s3(srv, q, load_cpus=layout.load)}
    table: dict[tuple[str, str], Cell] = {}
    kinds = [("baseline", 1)] + [(f"livegate-redis x{n}", n) for n in workers]
    for name, fn in scenarios.items():
        for label, n in kinds:
            for run_no in range(args.runs):
                kind = "baseline" if label == "baseline" else "livegate-redis"
                server = start_server(kind, workers=n, cpus=",".join(map(str, layout.server[:n])))
                try:
                    await asyncio.sleep(0.5 if n == 1 else 1.0)
                    result = await fn(server, args.quick)
                finally:
                    server.stop()
                cell = table.setdefault((name, label), Cell())
                cell.values.append(result["msgs_per_s"])
                cell.lost += result["lost"]
                if result.get("cpu_us_per_msg"):
                    cell.extra.setdefault("cpu_us", []).append(result["cpu_us_per_msg"])
                print(f"  {name} {label:<20} run {run_no + 1}: msgs/s={fmt(result['msgs_per_s'])} "
                      f"cpu_us/msg={fmt(result['cpu_us_per_msg'] or float('nan'))} lost={result['lost']}", flush=True)
    lines = ["# livegate benchmark, many-core layout", "",
             f"- machine: {platform.machine()}, {os.cpu_count()} CPUs; {layout.describe()}",
             f"- redis-server {redis_version()}; runs={args.runs}{' (quick)' if args.quick else ''}; took "
             f"{time.time() - started:.0f} s",
             f"- load generator ceiling: {ceiling:,.0f} msgs/s ({len(layout.load)} processes, 16 messages per frame)",
             "", "| scenario | server | delivered msgs/s | × baseline | × one worker | server CPU µs per message |",
             "|---|---|---|---|---|---|"]
    for name in scenarios:
        base = table[(name, "baseline")].median()
        one = table[(name, f"livegate-redis x{workers[0]}")].median() / workers[0]
        for label, n in kinds:
            c = table[(name, label)]
            cpu_us = statistics.median(c.extra["cpu_us"]) if c.extra.get("cpu_us") else float("nan")
            scale = "—" if label == "baseline" else f"{c.median() / one:.2f}x (target >= {0.8 * n:.1f}x)"
            lines.append(f"| {name} | {label} | {fmt(c.median())} ({fmt(min(c.values))}–{fmt(max(c.values))}) | "
                         f"{c.median() / base:.2f}x | {scale} | {cpu_us:.2f} |")
    lost = sum(c.lost for c in table.values())
    lines += ["", "Lost messages: 0 in every scenario and run." if lost == 0 else f"LOST MESSAGES: {lost}"]
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"many-core-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(report)
    (RESULTS / "latest-many-core.md").write_text(report)
    return 0 if lost == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="comma-separated: S1,S2,S3,S4")
    parser.add_argument("--quick", action="store_true", help="shorter measurements, S4 with 3,000 connections")
    parser.add_argument("--layout", choices=["two-core", "many-core"], default="two-core",
                        help="two-core (default): server on CPU 0, everything else on CPU 1; many-core: Redis, "
                             "server workers and several load generator processes on CPUs of their own (S1, S3)")
    parser.add_argument("--workers", default="1,2,4", help="many-core: the http_server.workers values to run")
    parser.add_argument("--load-procs", type=int, default=None,
                        help="many-core: load generator processes (default: one per CPU left)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop
    if args.layout == "many-core":
        layout = Layout.plan(max(int(w) for w in args.workers.split(",")), args.load_procs)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {layout.load[0]})
        redis_proc = start_redis(str(layout.redis))
        try:
            return uvloop.run(run_many_core(args, layout))
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    redis_proc = start_redis()
    try:
        return uvloop.run(run(args))
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()


if __name__ == "__main__":
    sys.exit(main())
