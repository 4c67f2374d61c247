"""Helpers for driving the server with the real centrifuge-python SDK."""

from __future__ import annotations

import asyncio
from typing import Any

from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler
from conftest import scaled


class Events:
    """Records every event an SDK object emits, and lets a test wait for one."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self._changed = asyncio.Event()

    def add(self, name: str, ctx: Any) -> None:
        self.log.append((name, ctx))
        self._changed.set()

    def of(self, name: str) -> list[Any]:
        return [ctx for n, ctx in self.log if n == name]

    async def wait(self, name: str, count: int = 1, timeout: float = 5.0) -> list[Any]:
        """Until ``count`` events ``name`` came; ``timeout`` is in test seconds (scaled)."""
        async with asyncio.timeout(scaled(timeout)):
            while len(self.of(name)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(name)


def _recorder(base: type, names: list[str]) -> type:
    def make(name: str):  # noqa: ANN202
        async def method(self, ctx):  # noqa: ANN001, ANN202
            self.events.add(name, ctx)
        return method

    attrs = {f"on_{n}": make(n) for n in names}
    attrs["__init__"] = lambda self, events: setattr(self, "events", events)
    return type(f"Recording{base.__name__}", (base,), attrs)


RecordingClientHandler = _recorder(ClientEventHandler, [
    "connecting", "connected", "disconnected", "error", "subscribed", "subscribing", "unsubscribed",
    "publication", "join", "leave"])
RecordingSubHandler = _recorder(SubscriptionEventHandler, [
    "subscribing", "subscribed", "unsubscribed", "publication", "join", "leave", "error"])


def sdk_client(url: str, token: str = "", **kwargs: Any) -> tuple[Client, Events]:
    events = Events()
    # The SDK's own request timeout and its wait for server pings, scaled like the tests' waits.
    kwargs.setdefault("timeout", scaled(5.0))
    kwargs.setdefault("max_server_ping_delay", scaled(10.0))
    client = Client(url, events=RecordingClientHandler(events), token=token, **kwargs)
    return client, events


def sdk_subscription(client: Client, channel: str, **kwargs: Any):  # noqa: ANN201
    events = Events()
    sub = client.new_subscription(channel, events=RecordingSubHandler(events), **kwargs)
    return sub, events
