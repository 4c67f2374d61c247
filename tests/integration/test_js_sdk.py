"""The real centrifuge-js SDK (5.8.0, tests/js) against a real livegate server.

Each test starts a server in this event loop (``start_server``), runs one Node script from
tests/js as a subprocess and asserts on what the SDK reported: the scripts print one JSON
line per observation (``{"ev": ..., "who": ...}``, see tests/js/common.mjs). When the server
side has to act in the middle of a scenario, the script prints a marker, the test acts, and
tells the script to go on with a JSON line on its stdin.

The subprocess is driven with asyncio only: the server runs in this loop and must keep
serving while the test waits for Node.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET, Running, token

import livegate
from livegate.auth import make_hmac_token
from livegate.channels.broker import HistoryOptions
from livegate.protocol import codes

JS_DIR = Path(__file__).resolve().parents[1] / "js"
NODE = shutil.which("node") or "/usr/bin/node"


class NodeScript:
    """One running scenario script: its JSON-line events, its stdin, its exit."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._eof = False
        self._stderr = asyncio.get_running_loop().create_task(self._read_stderr())

    @classmethod
    async def start(cls, script: str, **params: Any) -> NodeScript:
        assert (JS_DIR / "node_modules" / "centrifuge").is_dir(), "run `make js` first"
        proc = await asyncio.create_subprocess_exec(
            NODE, str(JS_DIR / script), json.dumps(params), cwd=str(JS_DIR),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(script, proc)

    async def _read_stderr(self) -> bytes:
        assert self.proc.stderr is not None
        return await self.proc.stderr.read()

    def _describe(self) -> str:
        err = self._stderr.result().decode(errors="replace") if self._stderr.done() else ""
        lines = "\n".join(json.dumps(e) for e in self.events)
        return f"{self.name} events:\n{lines}\nstderr:\n{err}"

    async def _read_event(self, deadline: float) -> bool:
        """Read one more event line; False at EOF."""
        assert self.proc.stdout is not None
        if self._eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
        if not line:
            self._eof = True
            return False
        try:
            event = json.loads(line)
        except ValueError:
            event = {"ev": "noise", "line": line.decode(errors="replace")}
        self.events.append(event)
        if event.get("ev") == "fatal":
            await self._settle()
            raise AssertionError(f"{self.name} failed: {event.get('error')}\n{self._describe()}")
        return True

    async def _settle(self) -> None:
        try:
            await asyncio.wait_for(self.proc.wait(), 3)
        except TimeoutError:
            self.kill()
        try:
            await asyncio.wait_for(asyncio.shield(self._stderr), 3)
        except TimeoutError:
            pass

    async def wait_for(self, ev: str, timeout: float = 6.0, **match: Any) -> dict[str, Any]:
        """The next not yet consumed event ``ev`` whose fields equal ``match``."""
        deadline = time.monotonic() + timeout
        i = 0
        while True:
            while i < len(self.events):
                event = self.events[i]
                if i not in self._consumed and event.get("ev") == ev and all(event.get(k) == v for k, v in match.items()):
                    self._consumed.add(i)
                    return event
                i += 1
            try:
                more = await self._read_event(deadline)
            except TimeoutError:
                raise AssertionError(f"no {ev} {match} within {timeout}s\n{self._describe()}") from None
            if not more:
                await self._settle()
                raise AssertionError(f"{self.name} ended before {ev} {match}\n{self._describe()}")

    async def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def finish(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait for the script to end successfully; returns all its events."""
        deadline = time.monotonic() + timeout
        try:
            while await self._read_event(deadline):
                pass
        except TimeoutError:
            self.kill()
            await self._settle()
            raise AssertionError(f"{self.name} still running after {timeout}s\n{self._describe()}") from None
        await self._settle()
        assert self.proc.returncode == 0, f"{self.name} exited with {self.proc.returncode}\n{self._describe()}"
        assert self.events and self.events[-1]["ev"] == "done", self._describe()
        return self.events

    def of(self, ev: str, **match: Any) -> list[dict[str, Any]]:
        """All events ``ev`` (consumed or not) whose fields equal ``match``, in order."""
        return [e for e in self.events if e.get("ev") == ev and all(e.get(k) == v for k, v in match.items())]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def js() -> AsyncIterator[Callable[..., Awaitable[NodeScript]]]:
    """Start tests/js/<script> with JSON params; leftover processes are killed at teardown."""
    started: list[NodeScript] = []

    async def run(script: str, **params: Any) -> NodeScript:
        s = await NodeScript.start(script, **params)
        started.append(s)
        return s

    yield run
    for s in started:
        s.kill()
        if s.proc.returncode is None:
            await s.proc.wait()


def only(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(events) == 1, events
    return events[0]


async def stream_top(running: Running, channel: str) -> tuple[int, str]:
    res = await running.node.broker.history(channel, HistoryOptions(limit=0))
    return res.position.offset, res.position.epoch


# -- 1. connect, subscribe, publish, own publication ----------------------------------------


async def test_connect_subscribe_publish_receives_own_publication(start_server, js):
    running = await start_server()
    script = await js("pubsub.mjs", url=running.url, token=token("alice", info={"name": "Alice"}),
                      channel="chat:room", data={"text": "hello", "n": 1})
    events = await script.finish()

    connected = only(script.of("connected", who="a"))
    assert connected["transport"] == "websocket"
    assert isinstance(connected["client"], str) and connected["client"]

    subscribed = only(script.of("subscribed", channel="chat:room"))
    offset, epoch = await stream_top(running, "chat:room")
    assert offset == 1
    assert subscribed["recoverable"] is True
    assert subscribed["positioned"] is True
    assert subscribed["streamPosition"] == {"offset": 0, "epoch": epoch}
    assert epoch != ""
    assert subscribed["wasRecovering"] is False and subscribed["recovered"] is False
    assert subscribed["hasRecoveredPublications"] is False

    assert only(script.of("publish_result"))["result"] == {}
    own = only(script.of("own_publication"))
    assert own["data"] == {"text": "hello", "n": 1}
    assert own["offset"] == 1
    assert own["info"] == {"user": "alice", "client": connected["client"], "connInfo": {"name": "Alice"}}
    assert own["tags"] is None
    # Exactly one publication event: the SDK saw its own publication once.
    assert len(script.of("publication")) == 1

    assert only(script.of("locked_publish")) == {"ev": "locked_publish", "ok": False,
                                                 "error": {"code": 103, "message": "permission denied"}}
    # The client ends only because it asked to: one connecting (code 0), one disconnected (code 0).
    assert [e["code"] for e in script.of("connecting")] == [0]
    assert [(e["code"], e["reason"]) for e in script.of("disconnected")] == [(0, "disconnect called")]
    assert not script.of("error") and not script.of("sub_error")
    assert events[-1]["ev"] == "done"
