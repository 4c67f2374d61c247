"""Real `livegate serve` processes for multi-instance tests, and a tiny TCP load balancer."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import BASE_CONFIG, merge, scaled

#: LIVEGATE_* variables that are settings of the test run rather than of the config under
#: test: a subprocess keeps them (the time scale of every wait, the event loop of every server).
RUN_VARIABLES = frozenset({"LIVEGATE_TEST_TIME_SCALE", "LIVEGATE_LOOP"})


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a ``livegate`` subprocess that must see only the config a test gives
    it: this process's, without any LIVEGATE_* variable (config keys, LIVEGATE_CONFIG,
    LIVEGATE_WORKER, ...) but RUN_VARIABLES, with PYTHONUNBUFFERED=1, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEGATE_") or k in RUN_VARIABLES}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(data: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """Enough TOML for test configs: tables, arrays of tables, scalars, lists of scalars."""
    scalars = [(k, v) for k, v in data.items() if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))]
    out = []
    if path and scalars:
        out.append(f"[{'.'.join(path)}]")
    out += [f"{k} = {_toml_value(v)}" for k, v in scalars]
    for k, v in data.items():
        if isinstance(v, dict):
            out.append(to_toml(v, (*path, k)))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                out.append(f"[[{'.'.join((*path, k))}]]")
                out += [f"{ik} = {_toml_value(iv)}" for ik, iv in item.items()]
    return "\n".join(out) + "\n"


@dataclass
class Instance:
    proc: asyncio.subprocess.Process
    port: int
    api_port: int
    config_path: Path
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal the process and wait for its exit code (``timeout`` in test seconds, scaled)."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), scaled(timeout))


async def wait_http(port: int, path: str = "/health", timeout: float = 10.0, expect: int = 200) -> None:
    """Until GET ``path`` answers ``expect`` (``timeout`` in test seconds, scaled)."""
    async with asyncio.timeout(scaled(timeout)):
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                line = await reader.readline()
                writer.close()
                if line.split()[1:2] == [str(expect).encode()]:
                    return
            except (OSError, IndexError):
                pass
            await asyncio.sleep(0.05)


async def kill_instances(instances: list[Instance]) -> None:
    """Kill the ``livegate serve`` processes still running (a fixture's teardown)."""
    for inst in instances:
        if inst.proc.returncode is None:
            inst.proc.kill()
            await inst.proc.wait()


async def start_instance(tmp_path: Path, override: dict[str, Any], name: str = "a",
                         port: int | None = None, api_port: int | None = None) -> Instance:
    port = port or free_port()
    api_port = api_port or free_port()
    config = merge(BASE_CONFIG, merge({"http_server": {"port": port}, "http_api": {"port": api_port},
                                       "log": {"level": "info", "format": "json"}}, override))
    config_path = tmp_path / f"{name}-{port}.toml"
    config_path.write_text(to_toml(config))
    log_path = tmp_path / f"{name}-{port}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livegate.cli", "serve", "--config", str(config_path),
        stdout=log_file, stderr=log_file, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log_file.close()
    instance = Instance(proc, port, api_port, config_path, log_path)
    try:
        await wait_http(api_port, "/ready", timeout=15)
    except TimeoutError:
        if proc.returncode is None:
            proc.kill()
        raise AssertionError(f"instance {name} did not become ready:\n{instance.log()}") from None
    return instance


async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy ``src`` to ``dst`` until either side ends; then ``dst`` is cut off."""
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        dst.transport.abort()


class Balancer:
    """Forwards each TCP connection to the first backend that accepts it. ``cut()`` stops
    listening and drops every open connection (the backend becomes unreachable); ``start()``
    again listens on the same port."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def forward(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            await pipe(src, dst)
            self.writers.discard(dst)

        await asyncio.gather(forward(reader, up_writer), forward(up_reader, writer))

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        await self.cut()
