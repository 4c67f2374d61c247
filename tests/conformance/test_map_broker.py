"""The Broker's map channel contract (livegate/channels/broker.py, "map channels"), run against
every engine in conftest.ENGINES: entries, state pages, the stream of changes (read with
``history``), delivery, key modes, compare-and-set, idempotency, ephemeral maps and expiry.

Data is JSON here (the node checks data before it reaches the engine; the redis engine checks it
again, the memory engine does not, so refusing bad data is not part of this contract).
"""

from __future__ import annotations

import uuid

import pytest
from conftest import scaled  # tests/conftest.py (this directory's conftest is conformance.conftest)

from livegate.channels.broker import HistoryOptions, MapSettings, MapWriteOptions
from livegate.protocol.types import ClientInfo, Publication, StreamPosition

STREAM = MapSettings(stream_size=1000, stream_ttl=60)
EPHEMERAL = MapSettings()


def chan(tag: str = "map") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def opts(settings: MapSettings = STREAM, **kw) -> MapWriteOptions:
    return MapWriteOptions(settings=settings, **kw)


def info_of(pub: Publication) -> ClientInfo | None:
    """The publication's info as a ClientInfo (engines may keep it as its wire JSON)."""
    if isinstance(pub.info, bytes):
        return ClientInfo.from_json(pub.info)
    return pub.info


async def put(engine, channel: str, key: str, data: bytes, o: MapWriteOptions | None = None):
    return await engine.broker.map_publish(channel, key, data, o or opts())


async def state(engine, channel: str, settings: MapSettings = STREAM, **kw):
    return await engine.broker.map_state(channel, settings, **kw)


async def stream(engine, channel: str, since: StreamPosition | None = None) -> list[Publication]:
    return (await engine.broker.history(channel, HistoryOptions(limit=-1, since=since))).publications


async def through_marker(engine, channel: str, settings: MapSettings = STREAM) -> str:
    """Write a marker entry and wait until it is delivered: whatever the engine delivers on
    ``channel`` for what was written before is in ``engine.events`` by then."""
    key = f"marker-{uuid.uuid4().hex[:8]}"
    await put(engine, channel, key, b'"marker"', opts(settings))
    await engine.events.wait_for(lambda: any(p.key == key for p in engine.events.of(channel)))
    return key


# -- entries and state -------------------------------------------------------------------


async def test_publish_then_state(engine):
    ch = chan()
    first = await put(engine, ch, "a", b'{"v":1}')
    second = await put(engine, ch, "b", b'{"v":2}')
    assert not first.suppressed and first.reason == "" and first.current is None
    assert first.position.offset == 1 and first.position.epoch
    assert second.position == StreamPosition(2, first.position.epoch)
    res = await state(engine, ch)
    assert res.position == second.position and res.cursor == ""
    assert sorted((p.key, p.data, p.offset, p.removed) for p in res.entries) == [
        ("a", b'{"v":1}', 1, False), ("b", b'{"v":2}', 2, False)]
    assert await engine.broker.map_stats(ch) == 2


async def test_a_write_replaces_the_entry(engine):
    ch = chan()
    await put(engine, ch, "a", b"1")
    again = await put(engine, ch, "a", b"2")
    assert again.position.offset == 2
    [entry] = (await state(engine, ch)).entries
    assert (entry.key, entry.data, entry.offset) == ("a", b"2", 2)
    assert await engine.broker.map_stats(ch) == 1


async def test_state_pages_with_a_cursor(engine):
    ch = chan()
    keys = [f"k{i:03d}" for i in range(250)]
    for i, key in enumerate(keys):
        await put(engine, ch, key, b"%d" % i)
    seen: list[str] = []
    cursor, pages = "", 0
    positions = set()
    while True:
        res = await state(engine, ch, cursor=cursor, limit=100)
        pages += 1
        assert len(res.entries) <= 100
        seen.extend(p.key for p in res.entries)
        positions.add(res.position)
        for p in res.entries:
            assert p.data == b"%d" % keys.index(p.key)
        cursor = res.cursor
        if not cursor:
            break
        assert pages < 10
    assert pages == 3
    assert sorted(seen) == keys and len(seen) == len(set(seen))  # every key exactly once
    assert positions == {StreamPosition(250, res.position.epoch)}
    everything = await state(engine, ch, limit=0)
    assert sorted(p.key for p in everything.entries) == keys and everything.cursor == ""
    assert await engine.broker.map_stats(ch) == 250


async def test_state_of_an_exact_last_page_ends_with_an_empty_cursor(engine):
    ch = chan()
    for key in ("a", "b", "c", "d"):
        await put(engine, ch, key, b"1")
    first = await state(engine, ch, limit=2)
    assert len(first.entries) == 2 and first.cursor
    last = await state(engine, ch, limit=2, cursor=first.cursor)
    assert len(last.entries) == 2 and last.cursor == ""
    assert sorted(p.key for p in first.entries + last.entries) == ["a", "b", "c", "d"]


async def test_state_of_one_key(engine):
    ch = chan()
    await put(engine, ch, "a", b'"A"')
    pos = (await put(engine, ch, "b", b'"B"')).position
    res = await state(engine, ch, key="b")
    assert [(p.key, p.data, p.offset) for p in res.entries] == [("b", b'"B"', 2)]
    assert res.position == pos and res.cursor == ""
    missing = await state(engine, ch, key="nope")
    assert missing.entries == [] and missing.position == pos


async def test_state_of_an_unknown_channel_creates_the_position(engine):
    ch = chan()
    first = await state(engine, ch)
    assert first.entries == [] and first.cursor == "" and first.position.offset == 0 and first.position.epoch
    assert (await state(engine, ch)).position == first.position
    assert await engine.broker.map_stats(ch) == 0
    # A subscriber that read (0, epoch) before the first write can follow the stream.
    assert (await put(engine, ch, "a", b"1")).position == StreamPosition(1, first.position.epoch)


async def test_maps_are_per_channel(engine):
    a, b = chan("a"), chan("b")
    await put(engine, a, "k", b'"a"')
    assert (await put(engine, b, "k", b'"b"')).position.offset == 1
    assert [p.data for p in (await state(engine, a)).entries] == [b'"a"']
    assert [p.data for p in (await state(engine, b)).entries] == [b'"b"']


async def test_entry_fields_round_trip(engine):
    ch = chan()
    info = ClientInfo("alice", "c1", conn_info=b'{"name":"A"}', chan_info=b'"vip"')
    data = '{"text":"héllo ✓","n":[1,2]}'.encode()
    await put(engine, ch, "k", data, opts(info=info, tags={"t": "1"}))
    [entry] = (await state(engine, ch)).entries
    assert (entry.key, entry.data, entry.offset, entry.tags, entry.removed) == ("k", data, 1, {"t": "1"}, False)
    assert info_of(entry) == info and entry.time > 0
    [change] = await stream(engine, ch)
    assert (change.key, change.data, change.tags) == ("k", data, {"t": "1"}) and info_of(change) == info


async def test_binary_data(engine):
    ch = chan()
    data = b"\x00\xff\r\nnot json"
    await put(engine, ch, "k", data, opts(data_format="binary"))
    [entry] = (await state(engine, ch)).entries
    assert entry.data == data
    assert [p.data for p in await stream(engine, ch)] == [data]


# -- the stream of changes ---------------------------------------------------------------


async def test_changes_are_read_back_with_history(engine):
    ch = chan()
    await put(engine, ch, "a", b"1")
    await put(engine, ch, "b", b"2")
    await put(engine, ch, "a", b"3")
    removal = await engine.broker.map_remove(ch, "b", opts())
    assert removal.position.offset == 4 and not removal.suppressed
    epoch = removal.position.epoch
    changes = await stream(engine, ch, StreamPosition(0, epoch))
    assert [(p.offset, p.key, p.data, p.removed) for p in changes] == [
        (1, "a", b"1", False), (2, "b", b"2", False), (3, "a", b"3", False), (4, "b", b"", True)]
    assert [p.offset for p in await stream(engine, ch, StreamPosition(2, epoch))] == [3, 4]
    res = await engine.broker.history(ch, HistoryOptions(limit=0))
    assert res.position == removal.position


async def test_stream_size_trims_the_stream_not_the_entries(engine):
    ch = chan()
    small = MapSettings(stream_size=3, stream_ttl=60)
    for i in range(6):
        await put(engine, ch, f"k{i}", b"%d" % i, opts(small))
    assert [p.offset for p in await stream(engine, ch)] == [4, 5, 6]
    assert await engine.broker.map_stats(ch) == 6


async def test_removal(engine):
    ch = chan()
    await put(engine, ch, "a", b"1", opts(tags={"color": "red"}))
    await put(engine, ch, "b", b"2", opts(tags={"color": "blue"}))
    who = ClientInfo("bob", "c2")
    removed = await engine.broker.map_remove(ch, "a", opts(info=who))
    assert removed.position.offset == 3 and not removed.suppressed
    assert [p.key for p in (await state(engine, ch)).entries] == ["b"]
    assert (await state(engine, ch, key="a")).entries == []
    assert await engine.broker.map_stats(ch) == 1
    # The removal publication: no data, the removed entry's tags unless the removal brings its own.
    await engine.broker.map_remove(ch, "b", opts(tags={"why": "gone"}))
    changes = await stream(engine, ch)
    assert [(p.key, p.removed, p.data, p.tags) for p in changes[2:]] == [
        ("a", True, b"", {"color": "red"}), ("b", True, b"", {"why": "gone"})]
    assert info_of(changes[2]) == who
    assert await engine.broker.map_stats(ch) == 0


async def test_removing_a_missing_key_changes_nothing(engine):
    ch = chan()
    pos = (await put(engine, ch, "a", b"1")).position
    res = await engine.broker.map_remove(ch, "nope", opts())
    assert res.suppressed and res.reason == "key_not_found" and res.position == pos
    assert [p.offset for p in await stream(engine, ch)] == [1]


async def test_map_publications_are_delivered(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    await put(engine, ch, "a", b'{"x":1}', opts(tags={"t": "v"}))
    await engine.broker.map_remove(ch, "a", opts())
    await engine.events.wait_for(lambda: len(engine.events.of(ch)) == 2)
    assert [(p.offset, p.key, p.data, p.removed, p.tags) for p in engine.events.of(ch)] == [
        (1, "a", b'{"x":1}', False, {"t": "v"}), (2, "a", b"", True, {"t": "v"})]


# -- key modes, compare-and-set, idempotency ---------------------------------------------


async def test_key_mode_if_new(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    first = await put(engine, ch, "a", b"1", opts(key_mode="if_new"))
    assert not first.suppressed and first.position.offset == 1
    again = await put(engine, ch, "a", b"2", opts(key_mode="if_new"))
    assert again.suppressed and again.reason == "key_exists" and again.position == first.position
    assert [p.data for p in (await state(engine, ch)).entries] == [b"1"]
    assert [p.offset for p in await stream(engine, ch)] == [1]
    marker = await through_marker(engine, ch)
    assert [p.key for p in engine.events.of(ch)] == ["a", marker]


async def test_key_mode_if_exists(engine):
    ch = chan()
    missing = await put(engine, ch, "a", b"1", opts(key_mode="if_exists"))
    assert missing.suppressed and missing.reason == "key_not_found" and missing.position.offset == 0
    assert (await state(engine, ch)).entries == []
    await put(engine, ch, "a", b"1")
    updated = await put(engine, ch, "a", b"2", opts(key_mode="if_exists"))
    assert not updated.suppressed and updated.position.offset == 2
    assert [p.data for p in (await state(engine, ch)).entries] == [b"2"]


async def test_compare_and_set(engine):
    ch = chan()
    created = await put(engine, ch, "a", b"1", opts(expected=StreamPosition(0, (await state(engine, ch)).position.epoch)))
    assert not created.suppressed and created.position.offset == 1
    epoch = created.position.epoch
    await put(engine, ch, "b", b'"other"')
    ok = await put(engine, ch, "a", b"2", opts(expected=StreamPosition(1, epoch)))
    assert not ok.suppressed and ok.position == StreamPosition(3, epoch)
    stale = await put(engine, ch, "a", b"3", opts(expected=StreamPosition(1, epoch)))
    assert stale.suppressed and stale.reason == "position_mismatch" and stale.position == ok.position
    assert stale.current is not None and (stale.current.key, stale.current.data, stale.current.offset) == ("a", b"2", 3)
    other_epoch = await put(engine, ch, "a", b"3", opts(expected=StreamPosition(3, "other")))
    assert other_epoch.suppressed and other_epoch.reason == "position_mismatch"
    exists = await put(engine, ch, "a", b"3", opts(expected=StreamPosition(0, epoch)))
    assert exists.reason == "position_mismatch" and exists.current is not None and exists.current.offset == 3
    absent = await put(engine, ch, "z", b"3", opts(expected=StreamPosition(5, epoch)))
    assert absent.reason == "position_mismatch" and absent.current is None
    assert [p.data for p in (await state(engine, ch, key="a")).entries] == [b"2"]
    assert [p.offset for p in await stream(engine, ch)] == [1, 2, 3]


async def test_compare_and_set_removal(engine):
    ch = chan()
    pos = (await put(engine, ch, "a", b"1")).position
    stale = await engine.broker.map_remove(ch, "a", opts(expected=StreamPosition(7, pos.epoch)))
    assert stale.reason == "position_mismatch" and stale.current is not None and stale.current.data == b"1"
    ok = await engine.broker.map_remove(ch, "a", opts(expected=pos))
    assert not ok.suppressed and ok.position.offset == 2
    assert await engine.broker.map_stats(ch) == 0


async def test_idempotency_key(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    first = await put(engine, ch, "a", b"1", opts(idempotency_key="k1"))
    again = await put(engine, ch, "a", b"2", opts(idempotency_key="k1"))
    assert not first.suppressed
    assert again.suppressed and again.reason == "idempotency" and again.position == first.position
    other = await put(engine, ch, "a", b"3", opts(idempotency_key="k2"))
    assert other.position.offset == 2 and not other.suppressed
    assert [p.data for p in await stream(engine, ch)] == [b"1", b"3"]
    removal = await engine.broker.map_remove(ch, "a", opts(idempotency_key="r"))
    assert (await engine.broker.map_remove(ch, "a", opts(idempotency_key="r"))).reason == "idempotency"
    assert removal.position.offset == 3
    marker = await through_marker(engine, ch)
    assert [(p.key, p.data) for p in engine.events.of(ch)] == [("a", b"1"), ("a", b"3"), ("a", b""), (marker, b'"marker"')]


# -- ephemeral maps (no stream) ----------------------------------------------------------


async def test_ephemeral_map_has_no_offsets_and_no_stream(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    first = await put(engine, ch, "a", b"1", opts(EPHEMERAL))
    second = await put(engine, ch, "b", b"2", opts(EPHEMERAL))
    assert first.position.offset == 0 and first.position.epoch and second.position == first.position
    res = await state(engine, ch, EPHEMERAL)
    assert sorted((p.key, p.data, p.offset) for p in res.entries) == [("a", b"1", 0), ("b", b"2", 0)]
    assert res.position == first.position
    removed = await engine.broker.map_remove(ch, "a", opts(EPHEMERAL))
    assert removed.position.offset == 0 and not removed.suppressed
    assert await stream(engine, ch) == []
    await engine.events.wait_for(lambda: len(engine.events.of(ch)) == 3)
    assert [(p.offset, p.key, p.removed) for p in engine.events.of(ch)] == [(0, "a", False), (0, "b", False),
                                                                            (0, "a", True)]
    assert await engine.broker.map_stats(ch) == 1


# -- expiry ------------------------------------------------------------------------------


async def test_key_ttl_expiry_removes_with_a_publication(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    short = MapSettings(stream_size=100, stream_ttl=60, key_ttl=scaled(0.3))
    await put(engine, ch, "a", b"1", opts(short, tags={"t": "a"}))
    await put(engine, ch, "b", b"2")                      # no key_ttl: stays
    assert await engine.broker.map_stats(ch) == 2
    await engine.clock.advance(scaled(0.5))
    # Past its key_ttl an entry is gone from state and stats at once, removal publication or not.
    assert [p.key for p in (await state(engine, ch)).entries] == ["b"]
    assert (await state(engine, ch, key="a")).entries == []
    assert await engine.broker.map_stats(ch) == 1
    removed = await engine.broker.map_expire()
    assert removed <= 1                                   # the engine's own sweep may have been first
    await engine.events.wait_for(lambda: any(p.removed for p in engine.events.of(ch)))
    assert await engine.broker.map_expire() == 0
    changes = await stream(engine, ch)
    assert [(p.offset, p.key, p.removed, p.tags) for p in changes] == [
        (1, "a", False, {"t": "a"}), (2, "b", False, None), (3, "a", True, {"t": "a"})]
    assert [(p.offset, p.key, p.removed) for p in engine.events.of(ch)] == [(1, "a", False), (2, "b", False),
                                                                            (3, "a", True)]
    assert await engine.broker.map_stats(ch) == 1
    assert (await state(engine, ch)).position.offset == 3


async def test_engine_expires_entries_on_its_own(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    await put(engine, ch, "a", b"1", opts(MapSettings(key_ttl=scaled(0.2))))
    await engine.clock.advance(scaled(0.3))
    await engine.events.wait_for(lambda: any(p.removed for p in engine.events.of(ch)), within=4.0)
    assert [(p.key, p.removed, p.offset) for p in engine.events.of(ch)] == [("a", False, 0), ("a", True, 0)]
    assert await engine.broker.map_stats(ch) == 0


async def test_a_write_renews_the_key_ttl(engine):
    ch = chan()
    short = MapSettings(stream_size=100, stream_ttl=60, key_ttl=scaled(0.4))
    await put(engine, ch, "a", b"1", opts(short))
    await engine.clock.advance(scaled(0.25))
    await put(engine, ch, "a", b"2", opts(short))
    await engine.clock.advance(scaled(0.25))              # 0.5 s after the first write, 0.25 s after the last
    assert [p.data for p in (await state(engine, ch)).entries] == [b"2"]
    # Written again without a key_ttl: the entry no longer expires.
    await put(engine, ch, "a", b"3")
    await engine.clock.advance(scaled(0.5))
    await engine.broker.map_expire()
    assert [p.data for p in (await state(engine, ch)).entries] == [b"3"]


async def test_refresh_ttl_on_suppress(engine):
    ch = chan()
    short = MapSettings(stream_size=100, stream_ttl=60, key_ttl=scaled(0.4))
    await put(engine, ch, "a", b"1", opts(short))
    await put(engine, ch, "b", b"1", opts(short))
    await engine.clock.advance(scaled(0.25))
    kept = await put(engine, ch, "a", b"2", opts(short, key_mode="if_new", refresh_ttl_on_suppress=True))
    assert kept.reason == "key_exists"
    plain = await put(engine, ch, "b", b"2", opts(short, key_mode="if_new"))
    assert plain.reason == "key_exists"
    await engine.clock.advance(scaled(0.25))
    assert [(p.key, p.data) for p in (await state(engine, ch)).entries] == [("a", b"1")]


async def test_meta_ttl_expiry_gives_a_new_epoch(engine):
    ch = chan()
    short = MapSettings(stream_size=100, stream_ttl=60, meta_ttl=scaled(0.6))
    old = (await put(engine, ch, "a", b"1", opts(short))).position
    await engine.clock.advance(scaled(0.9))
    assert await engine.broker.map_stats(ch) == 0  # before any read started the map over
    res = await state(engine, ch, short)
    assert res.entries == [] and res.position.offset == 0 and res.position.epoch != old.epoch
    assert await engine.broker.map_stats(ch) == 0
    assert await stream(engine, ch) == []
    new = (await put(engine, ch, "b", b"2", opts(short))).position
    assert new == StreamPosition(1, res.position.epoch)


async def test_writes_renew_the_meta_ttl(engine):
    ch = chan()
    short = MapSettings(stream_size=100, stream_ttl=60, meta_ttl=scaled(0.6))
    first = (await put(engine, ch, "a", b"1", opts(short))).position
    await engine.clock.advance(scaled(0.4))
    await put(engine, ch, "b", b"2", opts(short))
    await engine.clock.advance(scaled(0.4))               # 0.8 s after the first write, 0.4 s after the last
    res = await state(engine, ch, short)
    assert res.position == StreamPosition(2, first.epoch)
    assert sorted(p.key for p in res.entries) == ["a", "b"]


async def test_map_clear(engine):
    ch = chan()
    old = (await put(engine, ch, "a", b"1")).position
    await put(engine, ch, "b", b"2")
    await engine.broker.map_clear(ch)
    assert await engine.broker.map_stats(ch) == 0
    res = await state(engine, ch)
    assert res.entries == [] and res.position.offset == 0 and res.position.epoch != old.epoch
    assert await stream(engine, ch) == []
    assert (await put(engine, ch, "c", b"3")).position == StreamPosition(1, res.position.epoch)
    await engine.broker.map_clear(chan())                 # an unknown channel: nothing to do


@pytest.mark.parametrize("limit", [1, 3])
async def test_state_pages_skip_expired_entries(engine, limit):
    ch = chan()
    short = MapSettings(stream_size=100, stream_ttl=60, key_ttl=scaled(0.3))
    for key in ("a", "b", "c", "d", "e", "f"):
        await put(engine, ch, key, b"1", opts(short if key in ("b", "c", "e") else STREAM))
    await engine.clock.advance(scaled(0.5))
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        res = await state(engine, ch, cursor=cursor, limit=limit)
        assert 0 < len(res.entries) <= limit
        seen.extend(p.key for p in res.entries)
        cursor = res.cursor
        if not cursor:
            break
    assert sorted(seen) == ["a", "d", "f"] and len(seen) == 3
