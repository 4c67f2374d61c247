"""Engines under the conformance suite (test_broker.py): every engine passes the same tests.

Adding an engine is one line: append its name to ``ENGINES``. ``open_engine`` builds any
engine other than "memory" the way the server does (``livegate.node.make_engine`` from a
config with ``engine.type = name``, a unique key prefix and the test Redis servers), so there
is nothing else to write here once ``make_engine`` knows the engine. "redis-sharded" is the
redis engine over two Redis servers (the second one started by ``make test``; channels are
spread by jump hash). An engine that needs a server which is not reachable fails; it never
skips (STYLE.md habit 3).

Time: the memory engine runs on a ``FakeClock`` that the tests advance, so TTL tests do not
sleep; any other engine runs on ``RealClock`` (``advance`` sleeps), which is why the suite
uses TTLs of a fraction of a second, and why they and the advances are ``scaled``
(LIVEGATE_TEST_TIME_SCALE, tests/conftest.py).

That an engine did *not* deliver something is checked with a marker: a publication made
afterwards on the same channel (delivery is ordered per channel); once it arrived, anything
unwanted would have arrived before it.

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

from livegate.channels.broker import Broker, Engine, PresenceManager
from livegate.channels.memory import MemoryEngine
from livegate.protocol.types import ClientInfo, Publication

#: The engines the suite runs against.
ENGINES = ["memory", "redis", "redis-sharded"]


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


@dataclass
class Events:
    """EngineEvents that record what the engine reports."""

    pubs: list[tuple[str, Publication]] = field(default_factory=list)
    batches: list[list[tuple[str, Publication]]] = field(default_factory=list)
    joins: list[tuple[str, ClientInfo]] = field(default_factory=list)
    leaves: list[tuple[str, ClientInfo]] = field(default_factory=list)
    gaps: list[list[str]] = field(default_factory=list)
    node_messages: list[bytes] = field(default_factory=list)
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

    def handle_gap(self, channels: list[str]) -> None:
        self.gaps.append(list(channels))
        self.changed.set()

    def handle_node_message(self, data: bytes) -> None:
        self.node_messages.append(data)
        self.changed.set()

    def of(self, channel: str) -> list[Publication]:
        return [p for c, p in self.pubs if c == channel]

    async def wait_for(self, condition: Callable[[], bool], within: float = 3.0) -> None:
        """Until ``condition()`` holds (engines may deliver asynchronously); ``within`` is in
        test seconds (scaled)."""
        from conftest import scaled  # tests/conftest.py

        async with asyncio.timeout(scaled(within)):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def open_engine(name: str, prefix: str, events: Events, *,
                      clock: Callable[[], float] | None = None) -> AsyncIterator[Engine]:
    """A fresh, started engine ``name`` reporting to ``events``; closed on exit."""
    if name == "memory":
        engine: Engine = MemoryEngine(events, clock=clock or time.time)
    else:
        from conftest import REDIS_URL, REDIS_URL_2, make_config  # tests/conftest.py

        from livegate.node import make_engine

        addresses = [REDIS_URL]
        if name == "redis-sharded":
            assert REDIS_URL_2, "REDIS_URL_2 is not set: `make test` (scripts/services.sh) starts a second Redis"
            addresses.append(REDIS_URL_2)
        engine = make_engine(make_config({"engine": {"type": "redis", "redis": {"address": addresses, "prefix": prefix}}}),
                             events)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


@dataclass
class Subject:
    """An engine under test, with what it reported and its clock."""

    name: str
    engine: Engine
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
async def engine(engine_name: str, clock: Clock) -> AsyncIterator[Subject]:
    from conftest import unique_prefix  # tests/conftest.py

    events = Events()
    async with open_engine(engine_name, unique_prefix(), events, clock=clock.now) as opened:
        yield Subject(engine_name, opened, opened.broker, opened.presence, events, clock)
