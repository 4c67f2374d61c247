"""Engines under the conformance suite (test_broker.py): every engine passes the same tests.

Adding an engine is one line: append its name to ``ENGINES``. ``make_engine`` builds any
engine other than "memory" the way the server does (``build_node`` from a config with
``engine.type = name``, a unique key prefix and ``REDIS_URL``), so there is nothing else to
write here once ``build_node`` knows the engine. An engine that needs a server which is not
reachable fails; it never skips (STYLE.md habit 3).

Time: the memory engine runs on a ``FakeClock`` that the tests advance, so TTL tests do not
sleep; any other engine runs on ``RealClock`` (``advance`` sleeps), which is why the suite
uses TTLs of a fraction of a second.

This directory is a package (``__init__.py``) on purpose: pytest imports a conftest.py that
is not in a package under the module name ``conftest``, which would shadow tests/conftest.py
for every test module doing ``from conftest import ...``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from livegate.channels.broker import Broker, PresenceManager
from livegate.channels.memory import MemoryBroker, MemoryPresence
from livegate.protocol.types import ClientInfo, Publication

#: The engines the suite runs against.
ENGINES = ["memory", "redis"]


class FakeClock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t

    async def advance(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


class RealClock:
    def now(self) -> float:
        return time.time()

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


Clock = FakeClock | RealClock


@asynccontextmanager
async def make_engine(
    name: str, prefix: str, *, clock: Callable[[], float] | None = None,
) -> AsyncIterator[tuple[Broker, PresenceManager]]:
    """A fresh (broker, presence) pair of engine ``name``; closed on exit. Not started."""
    if name == "memory":
        now = clock or time.time
        broker: Broker = MemoryBroker(clock=now)
        presence: PresenceManager = MemoryPresence(clock=now)
    else:
        from conftest import REDIS_URL, make_config  # tests/conftest.py

        from livegate.server.lifecycle import build_node

        node = build_node(make_config({"engine": {"type": name, "redis": {"address": [REDIS_URL], "prefix": prefix}}}))
        broker, presence = node.broker, node.presence
    try:
        yield broker, presence
    finally:
        await broker.close()
        if presence is not broker:  # one object may serve both (the redis engine does)
            await presence.close()


@dataclass
class Events:
    """A BrokerEventHandler that records what the broker delivers."""

    pubs: list[tuple[str, Publication]] = field(default_factory=list)
    batches: list[list[tuple[str, Publication]]] = field(default_factory=list)
    joins: list[tuple[str, ClientInfo]] = field(default_factory=list)
    leaves: list[tuple[str, ClientInfo]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def handle_publications(self, batch: list[tuple[str, Publication]]) -> None:
        self.batches.append(list(batch))
        self.pubs.extend(batch)
        self.changed.set()

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.joins.append((channel, info))
        self.changed.set()

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))
        self.changed.set()

    def of(self, channel: str) -> list[Publication]:
        return [p for c, p in self.pubs if c == channel]

    async def wait_for(self, condition: Callable[[], bool], within: float = 3.0) -> None:
        """Until ``condition()`` holds (engines may deliver asynchronously)."""
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    async def settle(self, seconds: float = 0.05) -> None:
        """Give an asynchronous engine time to deliver anything (still) in flight."""
        await asyncio.sleep(seconds)


@dataclass
class Engine:
    name: str
    broker: Broker
    presence: PresenceManager
    events: Events
    clock: Clock


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def clock(engine_name: str) -> Clock:
    return FakeClock() if engine_name == "memory" else RealClock()


@pytest.fixture
async def engine(engine_name: str, clock: Clock) -> AsyncIterator[Engine]:
    from conftest import unique_prefix  # tests/conftest.py

    async with make_engine(engine_name, unique_prefix(), clock=clock.now) as (broker, presence):
        events = Events()
        await broker.start(events)
        yield Engine(engine_name, broker, presence, events, clock)
