"""The Broker and PresenceManager contracts (livegate/channels/broker.py), run against every
engine in conftest.ENGINES. Semantics of history: protocol.md 2.1 (history) and 5.1.

Publication data is JSON (what clients receive embedded as-is), so every payload here is.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from conftest import scaled  # tests/conftest.py (this directory's conftest is conformance.conftest)

from livegate.channels.broker import HistoryOptions, PresenceStats, PublishOptions
from livegate.protocol.json_codec import JSON
from livegate.protocol.types import ClientInfo, Publication, StreamPosition

HIST = PublishOptions(history_size=10, history_ttl=60)
NO_HIST = PublishOptions()


def chan(tag: str = "ch") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}"


async def publish_n(engine, channel: str, n: int, opts: PublishOptions = HIST, start: int = 1) -> list[StreamPosition]:
    return [(await engine.broker.publish(channel, b'{"n":%d}' % i, opts)).position for i in range(start, start + n)]


async def history(engine, channel: str, **kw):
    return await engine.broker.history(channel, HistoryOptions(**kw))


def offs(result) -> list[int]:
    return [p.offset for p in result.publications]


async def through_marker(engine, channel: str, opts: PublishOptions = NO_HIST) -> bytes:
    """Publish a marker on ``channel`` and wait until it is delivered: whatever the engine
    delivers on ``channel`` for what was published before is in ``engine.events`` by then."""
    marker = b'"marker-%s"' % uuid.uuid4().hex[:8].encode()
    await engine.broker.publish(channel, marker, opts)
    await engine.events.wait_for(lambda: any(p.data == marker for p in engine.events.of(channel)))
    return marker


def wire(pub: Publication) -> dict:
    """A publication as a client sees it (``info`` may come back as a ClientInfo or as its wire JSON)."""
    return orjson.loads(JSON.encode_publication("c", pub))["push"]["pub"]


# -- offsets and epochs ------------------------------------------------------------------


async def test_offsets_increase_by_one_and_epoch_is_stable(engine):
    ch = chan()
    positions = await publish_n(engine, ch, 5)
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions}) == 1
    assert positions[0].epoch != ""


async def test_offsets_are_per_channel(engine):
    a, b = chan("a"), chan("b")
    await publish_n(engine, a, 3)
    assert [p.offset for p in await publish_n(engine, b, 2)] == [1, 2]
    assert (await history(engine, a)).position.offset == 3


async def test_concurrent_publishes_get_distinct_consecutive_offsets(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    results = await asyncio.gather(*(engine.broker.publish(ch, b"%d" % i, HIST) for i in range(30)))
    assert sorted(r.position.offset for r in results) == list(range(1, 31))
    await engine.events.wait_for(lambda: len(engine.events.of(ch)) == 30)
    assert [p.offset for p in engine.events.of(ch)] == list(range(1, 31))


async def test_empty_stream_has_a_position_that_publish_keeps(engine):
    ch = chan()
    first = await history(engine, ch)
    assert first.publications == [] and first.position.offset == 0 and first.position.epoch
    assert (await history(engine, ch)).position == first.position
    pos = (await engine.broker.publish(ch, b"1", HIST)).position
    # A subscriber that saw (0, epoch) before the first publication can recover it.
    assert pos == StreamPosition(1, first.position.epoch)


async def test_no_history_channel_gives_offset_zero(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    result = await engine.broker.publish(ch, b'"x"', NO_HIST)
    assert result.position.offset == 0
    assert result.suppressed is False
    await engine.events.wait_for(lambda: engine.events.of(ch))
    assert engine.events.of(ch)[0].offset == 0
    assert engine.events.of(ch)[0].data == b'"x"'
    assert (await history(engine, ch, limit=-1)).publications == []


@pytest.mark.parametrize("opts", [PublishOptions(history_size=5), PublishOptions(history_ttl=5)])
async def test_history_needs_both_size_and_ttl(engine, opts):
    ch = chan()
    assert (await engine.broker.publish(ch, b"1", opts)).position.offset == 0
    assert (await history(engine, ch, limit=-1)).publications == []


# -- trimming ----------------------------------------------------------------------------


async def test_history_size_trimming(engine):
    ch = chan()
    opts = PublishOptions(history_size=3, history_ttl=60)
    positions = await publish_n(engine, ch, 7, opts)
    res = await history(engine, ch, limit=-1)
    assert offs(res) == [5, 6, 7]
    assert [p.data for p in res.publications] == [b'{"n":5}', b'{"n":6}', b'{"n":7}']
    assert res.position == positions[-1]


async def test_history_ttl_trimming(engine):
    ch = chan()
    opts = PublishOptions(history_size=10, history_ttl=scaled(0.4))
    await publish_n(engine, ch, 2, opts)
    await engine.clock.advance(scaled(0.25))
    last = (await publish_n(engine, ch, 1, opts, start=3))[0]
    await engine.clock.advance(scaled(0.25))           # first two are 0.5 s old, the third 0.25 s
    res = await history(engine, ch, limit=-1)
    assert offs(res) == [3]
    assert res.position == last                         # trimming never moves the position
    await engine.clock.advance(scaled(0.25))
    res = await history(engine, ch, limit=-1)
    assert res.publications == [] and res.position == last
    assert (await engine.broker.publish(ch, b"4", opts)).position == StreamPosition(4, last.epoch)


# -- history selection (protocol.md 2.1) -------------------------------------------------


async def test_history_limit_zero_is_position_only(engine):
    ch = chan()
    positions = await publish_n(engine, ch, 3)
    res = await history(engine, ch, limit=0)
    assert res.publications == [] and res.position == positions[-1]


async def test_history_oldest_first_up_to_limit(engine):
    ch = chan()
    await publish_n(engine, ch, 5)
    assert offs(await history(engine, ch, limit=2)) == [1, 2]
    assert offs(await history(engine, ch, limit=5)) == [1, 2, 3, 4, 5]
    assert offs(await history(engine, ch, limit=50)) == [1, 2, 3, 4, 5]
    assert offs(await history(engine, ch, limit=-1)) == [1, 2, 3, 4, 5]


async def test_history_reverse_newest_first(engine):
    ch = chan()
    await publish_n(engine, ch, 5)
    assert offs(await history(engine, ch, limit=2, reverse=True)) == [5, 4]
    assert offs(await history(engine, ch, limit=-1, reverse=True)) == [5, 4, 3, 2, 1]


async def test_history_since(engine):
    ch = chan()
    epoch = (await publish_n(engine, ch, 5))[0].epoch
    since = StreamPosition(2, epoch)
    assert offs(await history(engine, ch, limit=-1, since=since)) == [3, 4, 5]
    assert offs(await history(engine, ch, limit=2, since=since)) == [3, 4]
    assert offs(await history(engine, ch, limit=-1, since=StreamPosition(0, epoch))) == [1, 2, 3, 4, 5]
    assert offs(await history(engine, ch, limit=-1, since=StreamPosition(5, epoch))) == []
    assert offs(await history(engine, ch, limit=-1, since=StreamPosition(9, epoch))) == []
    assert (await history(engine, ch, limit=0, since=since)).publications == []


async def test_history_since_reverse(engine):
    ch = chan()
    epoch = (await publish_n(engine, ch, 5))[0].epoch
    assert offs(await history(engine, ch, limit=-1, since=StreamPosition(4, epoch), reverse=True)) == [3, 2, 1]
    assert offs(await history(engine, ch, limit=2, since=StreamPosition(4, epoch), reverse=True)) == [3, 2]
    assert offs(await history(engine, ch, limit=-1, since=StreamPosition(1, epoch), reverse=True)) == []


async def test_history_since_after_trimming(engine):
    ch = chan()
    opts = PublishOptions(history_size=3, history_ttl=60)
    epoch = (await publish_n(engine, ch, 6, opts))[0].epoch
    # Offsets 1-3 are gone: what is after offset 1 starts at 4 (the caller sees the gap).
    assert offs(await history(engine, ch, limit=-1, since=StreamPosition(1, epoch))) == [4, 5, 6]


async def test_history_since_ignores_the_epoch(engine):
    ch = chan()
    await publish_n(engine, ch, 3)
    # The epoch of `since` is the caller's to check.
    assert offs(await history(engine, ch, limit=-1, since=StreamPosition(1, "other"))) == [2, 3]


async def test_publication_fields_round_trip(engine):
    ch = chan()
    info = ClientInfo("alice", "c1", conn_info=b'{"name":"A"}', chan_info=b'"vip"')
    data = '{"text":"héllo ✓","n":[1,2]}'.encode()
    await engine.broker.subscribe(ch)
    pos = (await engine.broker.publish(ch, data, PublishOptions(history_size=5, history_ttl=60, info=info,
                                                               tags={"k": "v"}))).position
    expected = {"data": {"text": "héllo ✓", "n": [1, 2]}, "offset": 1, "tags": {"k": "v"},
                "info": {"user": "alice", "client": "c1", "conn_info": {"name": "A"}, "chan_info": "vip"}}
    [stored] = (await history(engine, ch, limit=-1)).publications
    assert stored.data == data and stored.offset == pos.offset == 1
    assert wire(stored) == expected
    await engine.events.wait_for(lambda: engine.events.of(ch))
    [delivered] = engine.events.of(ch)
    assert delivered.data == data
    assert wire(delivered) == expected


async def test_publication_without_info(engine):
    ch = chan()
    await engine.broker.publish(ch, b"1", HIST)
    [stored] = (await history(engine, ch, limit=-1)).publications
    assert stored.info is None and not stored.tags


# -- idempotency -------------------------------------------------------------------------


async def test_idempotency_key_suppresses_repeats(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    opts = PublishOptions(history_size=10, history_ttl=60, idempotency_key="k1")
    first = await engine.broker.publish(ch, b"1", opts)
    again = await engine.broker.publish(ch, b'"1-retry"', opts)
    assert first.suppressed is False
    assert again.suppressed is True and again.position == first.position
    other = await engine.broker.publish(ch, b"2", PublishOptions(history_size=10, history_ttl=60, idempotency_key="k2"))
    assert other.position.offset == 2 and not other.suppressed
    assert [p.data for p in (await history(engine, ch, limit=-1)).publications] == [b"1", b"2"]
    marker = await through_marker(engine, ch, HIST)
    assert [p.data for p in engine.events.of(ch)] == [b"1", b"2", marker]


async def test_idempotency_key_is_per_channel(engine):
    a, b = chan("a"), chan("b")
    opts = PublishOptions(history_size=10, history_ttl=60, idempotency_key="same")
    await engine.broker.publish(a, b"1", opts)
    assert (await engine.broker.publish(b, b"1", opts)).suppressed is False


async def test_idempotency_key_expires(engine):
    ch = chan()
    opts = PublishOptions(history_size=10, history_ttl=60, idempotency_key="k", idempotent_result_ttl=scaled(0.3))
    await engine.broker.publish(ch, b"1", opts)
    await engine.clock.advance(scaled(0.5))
    later = await engine.broker.publish(ch, b"1", opts)
    assert later.suppressed is False and later.position.offset == 2


async def test_idempotency_without_history(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    opts = PublishOptions(idempotency_key="k")
    assert (await engine.broker.publish(ch, b"1", opts)).suppressed is False
    assert (await engine.broker.publish(ch, b"1", opts)).suppressed is True
    marker = await through_marker(engine, ch)
    assert [p.data for p in engine.events.of(ch)] == [b"1", marker]


# -- remove_history and meta TTL ---------------------------------------------------------


async def test_remove_history(engine):
    ch = chan()
    before = (await publish_n(engine, ch, 3))[-1]
    await engine.broker.remove_history(ch)
    res = await history(engine, ch, limit=-1)
    assert res.publications == []
    after = (await engine.broker.publish(ch, b"4", HIST)).position
    # A position is never reused: either the stream goes on, or it is a new epoch.
    assert after.epoch != before.epoch or after.offset > before.offset
    assert offs(await history(engine, ch, limit=-1)) == [after.offset]


async def test_remove_history_of_unknown_channel(engine):
    await engine.broker.remove_history(chan())


async def test_meta_ttl_expiry_gives_a_new_epoch(engine):
    ch = chan()
    opts = PublishOptions(history_size=10, history_ttl=scaled(0.3), history_meta_ttl=scaled(0.6))
    old = (await publish_n(engine, ch, 2, opts))[-1]
    await engine.clock.advance(scaled(0.9))
    res = await history(engine, ch, limit=-1)
    assert res.publications == []
    assert res.position.epoch != old.epoch and res.position.offset == 0
    new = (await engine.broker.publish(ch, b"3", opts)).position
    assert new == StreamPosition(1, res.position.epoch)


async def test_publishing_refreshes_the_meta_ttl(engine):
    ch = chan()
    opts = PublishOptions(history_size=10, history_ttl=scaled(5), history_meta_ttl=scaled(0.6))
    first = (await engine.broker.publish(ch, b"1", opts)).position
    await engine.clock.advance(scaled(0.4))
    await engine.broker.publish(ch, b"2", opts)
    await engine.clock.advance(scaled(0.4))            # 0.8 s after the first publish, 0.4 s after the last
    res = await history(engine, ch, limit=-1)
    assert res.position == StreamPosition(2, first.epoch)
    assert offs(res) == [1, 2]


async def test_history_with_meta_ttl_refreshes_the_position(engine):
    ch = chan()
    first = (await engine.broker.publish(ch, b"1", PublishOptions(history_size=10, history_ttl=scaled(5),
                                                                 history_meta_ttl=scaled(0.6)))).position
    await engine.clock.advance(scaled(0.4))
    assert (await history(engine, ch, meta_ttl=scaled(0.6))).position == first
    await engine.clock.advance(scaled(0.4))
    assert (await history(engine, ch)).position == first


async def test_no_meta_ttl_keeps_the_position(engine):
    ch = chan()
    first = (await engine.broker.publish(ch, b"1", PublishOptions(history_size=10, history_ttl=scaled(0.2)))).position
    await engine.clock.advance(scaled(0.5))
    res = await history(engine, ch, limit=-1)
    assert res.publications == [] and res.position == first


# -- delivery ----------------------------------------------------------------------------


async def test_publications_delivered_in_order(engine):
    a, b = chan("a"), chan("b")
    await engine.broker.subscribe(a)
    await engine.broker.subscribe(b)
    for i in range(1, 11):
        await engine.broker.publish(a, b'"a%d"' % i, HIST)
        await engine.broker.publish(b, b'"b%d"' % i, NO_HIST)
    await engine.events.wait_for(lambda: len(engine.events.of(a)) == 10 and len(engine.events.of(b)) == 10)
    assert [(p.offset, p.data) for p in engine.events.of(a)] == [(i, b'"a%d"' % i) for i in range(1, 11)]
    assert [p.data for p in engine.events.of(b)] == [b'"b%d"' % i for i in range(1, 11)]
    assert all(isinstance(batch, list) and batch for batch in engine.events.batches)


async def test_delivered_offset_matches_the_publish_result(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    positions = await publish_n(engine, ch, 3)
    await engine.events.wait_for(lambda: len(engine.events.of(ch)) == 3)
    assert [p.offset for p in engine.events.of(ch)] == [p.offset for p in positions]


async def test_join_and_leave_delivered(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    alice = ClientInfo("alice", "c1", conn_info=b'{"a":1}')
    bob = ClientInfo("bob", "c2", chan_info=b"[2]")
    await engine.broker.publish_join(ch, alice)
    await engine.broker.publish_join(ch, bob)
    await engine.broker.publish_leave(ch, alice)
    await engine.events.wait_for(lambda: len(engine.events.joins) == 2 and len(engine.events.leaves) == 1)
    assert engine.events.joins == [(ch, alice), (ch, bob)]
    assert engine.events.leaves == [(ch, alice)]
    assert engine.events.pubs == []


async def test_subscribe_and_unsubscribe_are_idempotent(engine):
    ch = chan()
    await engine.broker.subscribe(ch)
    await engine.broker.subscribe(ch)
    await engine.broker.unsubscribe(ch)
    await engine.broker.unsubscribe(ch)
    await engine.broker.unsubscribe(chan())


# -- presence ----------------------------------------------------------------------------


async def test_presence_add_and_remove(engine):
    ch = chan()
    alice = ClientInfo("alice", "c1", conn_info=b'{"n":"A"}')
    bob = ClientInfo("bob", "c2", chan_info=b'"vip"')
    await engine.presence.add_presence(ch, alice, 60)
    await engine.presence.add_presence(ch, bob, 60)
    assert await engine.presence.presence(ch) == {"c1": alice, "c2": bob}
    await engine.presence.remove_presence(ch, "c1", "alice")
    assert await engine.presence.presence(ch) == {"c2": bob}
    await engine.presence.remove_presence(ch, "c2", "bob")
    assert await engine.presence.presence(ch) == {}
    assert await engine.presence.presence_stats(ch) == PresenceStats(0, 0)


async def test_presence_of_unknown_channel(engine):
    assert await engine.presence.presence(chan()) == {}
    assert await engine.presence.presence_stats(chan()) == PresenceStats(0, 0)
    await engine.presence.remove_presence(chan(), "nobody", "")


async def test_presence_refresh_replaces_the_entry(engine):
    ch = chan()
    await engine.presence.add_presence(ch, ClientInfo("alice", "c1"), 60)
    newer = ClientInfo("alice", "c1", chan_info=b"1")
    await engine.presence.add_presence(ch, newer, 60)
    assert await engine.presence.presence(ch) == {"c1": newer}
    assert await engine.presence.presence_stats(ch) == PresenceStats(1, 1)


async def test_presence_expiry_and_refresh(engine):
    ch = chan()
    await engine.presence.add_presence(ch, ClientInfo("alice", "c1"), scaled(0.4))
    await engine.presence.add_presence(ch, ClientInfo("bob", "c2"), scaled(0.4))
    await engine.clock.advance(scaled(0.25))
    await engine.presence.add_presence(ch, ClientInfo("bob", "c2"), scaled(0.4))   # bob refreshes
    await engine.clock.advance(scaled(0.25))
    assert set(await engine.presence.presence(ch)) == {"c2"}
    assert await engine.presence.presence_stats(ch) == PresenceStats(1, 1)
    await engine.clock.advance(scaled(0.25))
    assert await engine.presence.presence(ch) == {}
    assert await engine.presence.presence_stats(ch) == PresenceStats(0, 0)


async def test_presence_added_many_at_once_across_channels(engine):
    """add_presence_many spreads over the engine's servers (both shards on redis-sharded)."""
    channels = [chan(f"m{i}") for i in range(40)]
    entries = [(ch, ClientInfo(f"u{i}", f"c{i}")) for i, ch in enumerate(channels)]
    entries.append((channels[0], ClientInfo("u0", "c0", chan_info=b"2")))  # a refresh of the first one
    assert await engine.presence.add_presence_many(entries, 60) == 0
    assert await engine.presence.presence(channels[0]) == {"c0": ClientInfo("u0", "c0", chan_info=b"2")}
    for i, ch in enumerate(channels[1:], start=1):
        assert set(await engine.presence.presence(ch)) == {f"c{i}"}
    assert await engine.presence.add_presence_many([], 60) == 0


async def test_presence_stats_count_distinct_users(engine):
    ch = chan()
    for info in (ClientInfo("alice", "c1"), ClientInfo("alice", "c2"), ClientInfo("bob", "c3"),
                 ClientInfo("", "c4"), ClientInfo("", "c5")):
        await engine.presence.add_presence(ch, info, 60)
    # Anonymous connections count as one user.
    assert await engine.presence.presence_stats(ch) == PresenceStats(num_clients=5, num_users=3)


async def test_presence_is_per_channel(engine):
    a, b = chan("a"), chan("b")
    await engine.presence.add_presence(a, ClientInfo("alice", "c1"), 60)
    await engine.presence.add_presence(b, ClientInfo("bob", "c2"), 60)
    assert set(await engine.presence.presence(a)) == {"c1"}
    await engine.presence.remove_presence(a, "c2", "bob")   # not in a: no effect there
    assert set(await engine.presence.presence(a)) == {"c1"}
    assert set(await engine.presence.presence(b)) == {"c2"}


async def test_a_position_nobody_published_in_lives_only_unpublished_ttl(engine):
    """Subscribing to channels nobody publishes in must not leave keys for history_meta_ttl."""
    ch = chan("quiet")
    first = (await history(engine, ch, meta_ttl=60, unpublished_ttl=scaled(0.3))).position
    await engine.clock.advance(scaled(0.5))
    again = (await history(engine, ch, meta_ttl=60, unpublished_ttl=scaled(0.3))).position
    assert again.epoch != first.epoch and again.offset == 0  # it expired and was made anew
    busy = chan("busy")
    pos = (await engine.broker.publish(busy, b"1", PublishOptions(history_size=10, history_ttl=60,
                                                                   history_meta_ttl=60))).position
    await history(engine, busy, meta_ttl=60, unpublished_ttl=scaled(0.3))
    await engine.clock.advance(scaled(0.5))
    assert (await history(engine, busy, meta_ttl=60, unpublished_ttl=scaled(0.3))).position == pos
