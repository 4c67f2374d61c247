"""livegate.cluster: node heartbeats and the envelope version negotiated from them."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from livegate.channels.hub import Hub
from livegate.channels.names import ChannelRules
from livegate.cluster import CONTROL_VERSION, NODE_TTL, Cluster
from livegate.metrics import NodeMetrics


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeNodes:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def publish_node(self, data: bytes) -> None:
        self.sent.append(msgpack.unpackb(data))


class FakeEngine:
    envelope_version = 2

    def __init__(self) -> None:
        self.nodes = FakeNodes()
        self.used: list[int] = []
        self.healthy = True

    def use_envelope_version(self, version: int) -> None:
        self.used.append(version)


class Me:
    uid, name, version, started_at = "me", "node-me", "0.1.0", 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cluster(clock):
    from conftest import make_config

    c = Cluster(Me(), FakeEngine(), Hub(NodeMetrics()), ChannelRules(make_config().channel), clock=clock)  # type: ignore[arg-type]
    c._listening_since = clock()
    return c


def beat(cluster: Cluster, uid: str, envelope: int | None) -> None:
    info = {"uid": uid, "name": uid, "version": "x"}
    if envelope is not None:
        info["envelope"] = envelope
    cluster.handle(msgpack.packb({"t": "info", "info": info, "v": CONTROL_VERSION, "from": uid}))


def test_version_one_until_a_full_heartbeat_window_was_heard(cluster, clock):
    beat(cluster, "new", 2)
    assert cluster.negotiate() == 1  # an old node may not have beaten yet
    clock.t += NODE_TTL
    beat(cluster, "new", 2)
    assert cluster.negotiate() == 2
    assert cluster.engine.used[-1] == 2


def test_a_node_that_announces_no_version_reads_only_version_one(cluster, clock):
    clock.t += NODE_TTL
    beat(cluster, "old", None)
    beat(cluster, "new", 2)
    assert cluster.negotiate() == 1
    # The old node is replaced (it stops beating): the cluster moves up once it has expired.
    clock.t += NODE_TTL / 2
    beat(cluster, "new", 2)
    assert cluster.negotiate() == 1
    clock.t += NODE_TTL / 2 + 0.1
    beat(cluster, "new", 2)
    assert cluster.negotiate() == 2


def test_never_above_what_this_node_reads(cluster, clock):
    clock.t += NODE_TTL
    beat(cluster, "future", 7)
    assert cluster.negotiate() == 2


def test_own_echo_and_foreign_control_versions_are_ignored(cluster, clock):
    clock.t += NODE_TTL
    cluster.handle(msgpack.packb({"t": "info", "info": {"name": "me"}, "v": CONTROL_VERSION, "from": "me"}))
    cluster.handle(msgpack.packb({"t": "info", "info": {"name": "x"}, "v": CONTROL_VERSION + 1, "from": "x"}))
    cluster.handle(b"\xc1 garbage")
    assert cluster.nodes == {}
    assert [info["uid"] for info in cluster.cluster_info()] == ["me"]


def test_cluster_info_hides_the_envelope_field(cluster, clock):
    beat(cluster, "b", 2)
    infos = cluster.cluster_info()
    assert [i["uid"] for i in infos] == ["me", "b"] and "envelope" not in infos[1]


async def test_heartbeat_announces_the_version_this_node_reads(cluster):
    await cluster.start()
    for _ in range(10):
        if cluster.engine.nodes.sent:
            break
        await asyncio.sleep(0)
    await cluster.stop()
    (sent,) = cluster.engine.nodes.sent
    assert sent["info"]["envelope"] == 2 and sent["from"] == "me" and sent["v"] == CONTROL_VERSION


def test_a_node_that_reads_less_lowers_the_version_at_once(cluster, clock):
    clock.t += NODE_TTL
    beat(cluster, "new", 2)
    assert cluster.negotiate() == 2
    beat(cluster, "old", None)  # an old instance starts (or comes back) after the upgrade
    assert cluster.envelope_version == 1 and cluster.engine.used[-1] == 1  # before the next heartbeat


def test_an_engine_outage_restarts_the_listening_window(cluster, clock):
    clock.t += NODE_TTL
    beat(cluster, "new", 2)
    assert cluster.negotiate() == 2
    cluster.engine.healthy = False  # heartbeats are lost meanwhile: nodes that are gone may not be
    clock.t += NODE_TTL * 2
    assert cluster.negotiate() == 1
    cluster.engine.healthy = True
    clock.t += NODE_TTL / 2
    beat(cluster, "new", 2)
    assert cluster.negotiate() == 1  # not a full window since the engine came back
    clock.t += NODE_TTL / 2
    beat(cluster, "new", 2)
    assert cluster.negotiate() == 2


@pytest.mark.parametrize("info", [{"uid": "x", "envelope": [1, 2]}, {"uid": "x", "envelope": "2"},
                                  {"uid": "x", "envelope": -5}, ["not", "a", "dict"], None])
async def test_malformed_heartbeats_never_stop_this_node(cluster, clock, info):
    clock.t += NODE_TTL
    cluster.handle(msgpack.packb({"t": "info", "info": info, "v": CONTROL_VERSION, "from": "x"}))
    assert cluster.negotiate() == 1 if isinstance(info, dict) else cluster.negotiate() == 2
    await cluster.start()
    for _ in range(10):
        if cluster.engine.nodes.sent:
            break
        await asyncio.sleep(0)
    assert cluster._heartbeat is not None and not cluster._heartbeat.done()
    await cluster.stop()
    assert cluster.engine.nodes.sent  # the heartbeat went out
