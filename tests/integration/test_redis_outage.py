"""A real Redis server stopped and restarted under load: clients stay connected, publishes
fail fast, /ready flips, and afterwards every acknowledged publication reaches the client."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import pytest
from cent import AsyncClient, PublishRequest
from cent.exceptions import CentApiResponseError
from centrifuge import ClientState
from conftest import REDIS_URL, scaled, token, unique_prefix
from procs import free_port, start_instance, wait_http
from sdk import sdk_client, sdk_subscription


async def start_redis(tmp_path, port):
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed for the outage test (make test installs it)"
    proc = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
        "--appendonly", "yes", "--appendfsync", "always", "--logfile", str(tmp_path / "redis.log"))
    try:
        async with asyncio.timeout(scaled(5)):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    return proc
                except OSError:
                    await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError("redis-server did not start") from None


async def test_redis_restart_loses_nothing_a_client_cannot_recover(tmp_path):
    port = free_port()
    redis_proc = await start_redis(tmp_path, port)
    override = {"engine": {"type": "redis", "redis": {"address": [f"redis://127.0.0.1:{port}/0"],
                                                      "prefix": unique_prefix()}}}
    inst = await start_instance(tmp_path, override)
    client, cev = sdk_client(inst.url, token("alice"))
    sub, events = sdk_subscription(client, "chat:outage")
    api = AsyncClient(inst.api_url, "test-api-key", timeout=scaled(3))
    acknowledged: list[int] = []
    failed = 0
    try:
        await client.connect()
        await sub.subscribe()
        await events.wait("subscribed")

        async def publish(n: int) -> None:
            nonlocal failed
            try:
                await api.publish(PublishRequest(channel="chat:outage", data={"n": n}))
                acknowledged.append(n)
            except CentApiResponseError as err:
                assert err.code == 100, err  # temporary internal error, fast
                failed += 1

        n = 0
        for _ in range(20):
            await publish(n)
            n += 1
        redis_proc.send_signal(signal.SIGKILL)
        await redis_proc.wait()
        await wait_http(inst.api_port, "/ready", expect=503, timeout=10)
        loop = asyncio.get_running_loop()
        for _ in range(10):
            started = loop.time()
            await publish(n)
            n += 1
            assert loop.time() - started < scaled(1.0)  # fails fast
        assert failed >= 10
        assert client.state == ClientState.CONNECTED  # clients stay connected meanwhile
        redis_proc = await start_redis(tmp_path, port)
        await wait_http(inst.api_port, "/ready", expect=200, timeout=15)
        for _ in range(20):
            await publish(n)
            n += 1
        async with asyncio.timeout(scaled(15)):
            while sorted({p.pub.data["n"] for p in events.of("publication")}) != acknowledged:
                await asyncio.sleep(0.1)
        # Nothing twice: a duplicate would come before a publication made after them all.
        await api.publish(PublishRequest(channel="chat:outage", data={"n": "marker"}))
        await events.wait("publication", len(acknowledged) + 1)
        got = [p.pub.data["n"] for p in events.of("publication")]
        assert got == [*acknowledged, "marker"]  # in order, nothing lost, nothing twice
        assert len(acknowledged) == 40
    finally:
        await client.disconnect()
        await api.close()
        await inst.stop(signal.SIGKILL)
        if redis_proc.returncode is None:
            redis_proc.kill()
            await redis_proc.wait()


@pytest.mark.parametrize("workers", [2])
async def test_workers_share_the_port(tmp_path, workers):
    override = {"engine": {"type": "redis", "redis": {"address": [REDIS_URL],
                                                      "prefix": unique_prefix()}},
                "http_server": {"workers": workers}}
    inst = await start_instance(tmp_path, override)
    from cent import InfoRequest
    api = AsyncClient(inst.api_url, "test-api-key")
    clients = []
    try:
        async with asyncio.timeout(scaled(15)):  # every worker is up and has announced itself
            while len((await api.info(InfoRequest())).nodes) < workers:
                await asyncio.sleep(0.2)
        for i in range(12):
            c, _ = sdk_client(inst.url, token(f"u{i}"))
            await c.connect()
            clients.append(c)
        async with asyncio.timeout(scaled(15)):
            while True:
                info = await api.info(InfoRequest())
                if len(info.nodes) == workers and sum(n.num_clients for n in info.nodes) == 12:
                    break
                await asyncio.sleep(0.2)
        assert all(n.num_clients > 0 for n in info.nodes)  # the kernel spread the connections
    finally:
        for c in clients:
            await c.disconnect()
        await api.close()
    assert await inst.stop(signal.SIGTERM) == 0


async def test_workers_do_not_outlive_a_killed_supervisor(tmp_path):
    override = {"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": unique_prefix()}},
                "http_server": {"workers": 2}}
    inst = await start_instance(tmp_path, override)
    workers = _children(inst.proc.pid)
    assert len(workers) == 2
    await inst.stop(signal.SIGKILL)  # the supervisor dies without forwarding anything
    async with asyncio.timeout(scaled(10)):
        while any(_state(pid) not in ("gone", "Z") for pid in workers):
            await asyncio.sleep(0.1)


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").glob("[0-9]*") if _parent_of(p) == pid]


def _parent_of(proc_dir: Path) -> int:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
