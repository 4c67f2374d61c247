"""The redis engine's inter-node envelope: both versions decoded by one function, newer
versions refused rather than misread, and delivery that hands every message over once even
when a callback fails."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from conftest import make_config
from legacy import old_reader

from livegate.channels.redis import RedisEngine
from livegate.channels.redis.envelope import ENVELOPE_VERSION, EnvelopeError, decode_envelope, encode_presence_event
from livegate.protocol.types import ClientInfo, Publication

INFO = ClientInfo("alice", "c1", conn_info=b'{"n":1}')


def v1_pub(offset: int, data: bytes = b'{"a":1}', info: bytes = b"", tags: bytes = b"", ms: int = 1000) -> bytes:
    return msgpack.packb(["p", offset, "ep", data, info, tags, ms])


def v2_pub(offset: int, data: bytes = b'{"a":1}', info: bytes = b"", tags: bytes = b"", ms: int = 1000,
           *extra: Any) -> bytes:
    return msgpack.packb([2, "p", offset, "ep", data, info, tags, ms, *extra])


@pytest.mark.parametrize("raw", [v1_pub(3, info=INFO.to_json(), tags=b'{"k":"v"}'),
                                 v2_pub(3, b'{"a":1}', INFO.to_json(), b'{"k":"v"}')])
def test_publication_of_both_versions(raw):
    kind, pub = decode_envelope(raw)
    assert kind == "p"
    assert pub == Publication(b'{"a":1}', 3, INFO.to_json(), {"k": "v"}, 1000)


def test_fields_appended_by_a_later_revision_are_ignored():
    kind, pub = decode_envelope(v2_pub(5, b"1", b"", b"", 7, "future", [1, 2]))
    assert (kind, pub.offset, pub.data, pub.time) == ("p", 5, b"1", 7)
    _, info = decode_envelope(msgpack.packb([2, "j", INFO.to_json(), "future"]))
    assert info == INFO


@pytest.mark.parametrize("version", [1, 2])
def test_join_and_leave_of_both_versions(version):
    for kind in ("j", "l"):
        raw = encode_presence_event(kind, INFO, version)
        assert decode_envelope(raw) == (kind, INFO)
        if version == 1:
            assert old_reader(raw) == (kind, INFO)  # what an instance of the previous release reads


def test_version_one_is_what_the_previous_release_reads():
    assert old_reader(v1_pub(3)) == ("p", decode_envelope(v1_pub(3))[1])


@pytest.mark.parametrize("raw", [
    msgpack.packb([ENVELOPE_VERSION + 1, "p", 1, "e", b"1", b"", b"", 1]),  # newer than this build
    msgpack.packb([0, "p"]),
    msgpack.packb([2]),
    msgpack.packb([2, "x", b"1"]),
    msgpack.packb(["p", 1, "e", b"1", b"", b""]),                      # v1 with a field missing
    msgpack.packb(["p", 1, "e", b"1", b"", b"", 1, "extra"]),          # v1 has exactly seven
    msgpack.packb(["p", "1", "e", b"1", b"", b"", 1]),                  # offset not an int
    msgpack.packb(["j", 5]),
    msgpack.packb(["j", b"not json"]),
    msgpack.packb({"p": 1}),
    msgpack.packb([]),
    b"\xc1",
    b"",
    b"not msgpack at all",
])
def test_unreadable_envelopes_are_refused(raw):
    with pytest.raises(EnvelopeError):
        decode_envelope(raw)


@dataclass
class Recorder:
    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail_first_publications: bool = False

    def handle_publications(self, batch: list[tuple[str, Publication]]) -> None:
        self.calls.append(("pubs", [(c, p.offset) for c, p in batch]))
        if self.fail_first_publications:
            self.fail_first_publications = False
            raise RuntimeError("hub bug")

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.calls.append(("join", channel))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.calls.append(("leave", channel))

    def handle_gap(self, channels: list[str]) -> None:
        self.calls.append(("gap", channels))

    def handle_node_message(self, data: bytes) -> None:
        self.calls.append(("node", data))


def engine(events: Recorder) -> RedisEngine:
    # Built, never started: deliver() only decodes and reports.
    return RedisEngine(make_config({"engine": {"type": "redis", "redis": {"prefix": "t"}}}), events)


def test_deliver_reports_each_message_once_even_when_a_callback_fails():
    events = Recorder(fail_first_publications=True)
    eng = engine(events)
    eng.deliver([
        (b"t.client.a", v1_pub(1)),
        (b"t.client.a", v2_pub(2)),
        (b"t.client.a", encode_presence_event("j", INFO, 2)),
        (b"t.client.b", b"garbage"),
        (b"t.node", b"hello"),
        (b"t.client.a", v2_pub(3)),
        (b"other.channel", v1_pub(9)),
    ])
    assert events.calls == [
        ("pubs", [("a", 1), ("a", 2)]),  # raised: logged, and not handed over a second time
        ("join", "a"),
        ("node", b"hello"),
        ("pubs", [("a", 3)]),
    ]
    assert eng.undecodable == 1


def test_gap_reports_channel_names():
    events = Recorder()
    engine(events).report_gap([b"t.client.x", b"t.node", b"t.client.y:z"])
    assert events.calls == [("gap", ["x", "y:z"])]


async def test_envelope_version_to_write_is_bounded():
    eng = engine(Recorder())
    assert eng.broker.write_version == 1
    eng.use_envelope_version(99)  # no shard is connected: nothing to write to Redis
    assert eng.broker.write_version == ENVELOPE_VERSION
    eng.use_envelope_version(0)
    assert eng.broker.write_version == 1
