"""Edge cases of the Redis backend doors against a real Redis."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import REDIS_URL, delete_prefix, unique_prefix


async def test_fcall_into_a_namespace_with_long_ttls(start_server):
    prefix = unique_prefix()
    running = await start_server({
        "engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}},
        "channel": {"namespaces": [{"name": "long", "history_size": 10, "history_ttl": "300h",
                                    "history_meta_ttl": "8760h", "allow_subscribe_for_client": True}]},
    })
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        opts = orjson.dumps({"prefix": prefix})
        assert (await client.fcall("livegate_publish", 1, "long:x", b'{\n "pretty": 1\n}', opts))[0] == 1
        history = await running.node.broker.history("long:x", __import__("livegate.channels.broker", fromlist=["x"])
                                                    .HistoryOptions(limit=10))
        assert [p.data for p in history.publications] == [b'{ "pretty": 1}']  # one line, as clients need
        for bad, why in [(b"not json", "data must be JSON"), (b"", "data is empty")]:
            try:
                await client.fcall("livegate_publish", 1, "long:x", bad, opts)
                raise AssertionError("accepted bad data")
            except Exception as exc:  # redis ResponseError
                assert why in str(exc)
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


async def test_fcall_follows_the_namespace_data_format(start_server, redis_client):
    prefix = unique_prefix()
    running = await start_server({"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}}})
    from livegate.channels.broker import HistoryOptions

    async def fcall(channel: str, data: bytes) -> Any:
        return await redis_client.fcall("livegate_publish", 1, channel, data, orjson.dumps({"prefix": prefix}))

    try:
        raw = b"\x00\xff\n{binary"
        assert (await fcall("bin:f", raw))[0] == 1
        assert (await fcall("bin:f", b""))[0] == 2  # empty data is data in a binary namespace
        history = await running.node.broker.history("bin:f", HistoryOptions(limit=10))
        assert [p.data for p in history.publications] == [raw, b""]  # byte for byte, newline included
        assert (await fcall("obj:f", b' {"a": 1}'))[0] == 0  # no history in "obj"
        for channel, bad, why in [("obj:f", b"[1]", "must be a JSON object"), ("obj:f", b"{", "must be JSON"),
                                  ("chat:f", raw, "must be JSON"), ("chat:f", b"", "data is empty")]:
            with pytest.raises(aioredis.ResponseError, match=why):
                await fcall(channel, bad)
    finally:
        await delete_prefix(redis_client, prefix)


async def test_history_and_position_outlive_every_publish_with_expiries_renewed_at_the_half(start_server,
                                                                                           redis_client):
    """Expiries are set 1.5 TTL ahead and renewed only once a publish is past the half: after
    any publish the history lives >= history_ttl and the position >= history_meta_ttl, and a
    history read never shortens the position's expiry."""
    prefix = unique_prefix()
    running = await start_server({
        "engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}},
        "channel": {"namespaces": [{"name": "ex", "history_size": 10, "history_ttl": "4s", "history_meta_ttl": "8s",
                                    "allow_subscribe_for_client": True, "allow_history_for_client": True}]},
    })
    from livegate.channels.broker import HistoryOptions
    meta, hist = f"{prefix}.meta.{{ex:x}}", f"{prefix}.history.{{ex:x}}"
    opts = orjson.dumps({"prefix": prefix})
    try:
        await redis_client.fcall("livegate_publish", 1, "ex:x", b"1", opts)
        assert 5900 < await redis_client.pttl(hist) <= 6000 and 11900 < await redis_client.pttl(meta) <= 12000
        renewed_until = int(await redis_client.hget(meta, "x"))
        for _ in range(3):  # within the first half: nothing renewed, every publish still covered
            await running.node.publish("ex:x", b"2")
            assert await redis_client.pttl(hist) >= 4000 and await redis_client.pttl(meta) >= 8000
        assert int(await redis_client.hget(meta, "x")) == renewed_until
        await running.node.broker.history("ex:x", HistoryOptions(limit=10))  # a read: GT, never shorter
        assert await redis_client.pttl(meta) > 11000
        await redis_client.hset(meta, "x", 0)  # as if past the half: the next publish renews both
        await redis_client.pexpire(hist, 100)
        await redis_client.fcall("livegate_publish", 1, "ex:x", b"3", opts)
        assert await redis_client.pttl(hist) > 5000 and int(await redis_client.hget(meta, "x")) > renewed_until
        history = await running.node.broker.history("ex:x", HistoryOptions(limit=10))
        assert [p.data for p in history.publications] == [b"1", b"2", b"2", b"2", b"3"]
    finally:
        await delete_prefix(redis_client, prefix)


async def test_publish_batch_writes_every_publication_in_order_or_none(start_server, redis_client, peer_factory):
    """FCALL livegate_publish_batch: one call, many publications (one config read, one time):
    the same result per publication as livegate_publish, and all or nothing."""
    prefix = unique_prefix()
    running = await start_server({
        "engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}},
        "channel": {"namespaces": [{"name": "bh", "history_size": 10, "history_ttl": "1m",
                                    "allow_subscribe_for_client": True}]},
    })
    from livegate.channels.broker import HistoryOptions

    async def batch(items: list[tuple[str, bytes, str]], options: dict | None = None) -> Any:
        args: list[Any] = []
        for _, data, item in items:
            args += [data, item, ""]
        return await redis_client.fcall("livegate_publish_batch", len(items), *[ch for ch, _, _ in items],
                                        orjson.dumps({"prefix": prefix, **(options or {})}), *args)

    peer = await peer_factory(running.url)
    await peer.connect("alice")
    assert "error" not in await peer.call("subscribe", {"channel": "bh:a"})

    async def next_pub() -> dict:
        while True:
            msg = await peer.recv()
            if msg.get("push", {}).get("channel") == "bh:a" and "pub" in msg["push"]:
                return msg["push"]["pub"]

    try:
        idem = orjson.dumps({"idempotency_key": "k1"}).decode()
        got = await batch([("bh:a", b'{"n":1}', ""), ("bh:b", b'{"n":2}', ""), ("bh:a", b'{"n":3}', idem),
                           ("bh:a", b'{"n":4}', idem), ("plain", b'{"n":5}', "")])
        epoch_a = got[0][1]
        assert got == [[1, epoch_a], [1, got[1][1]], [2, epoch_a], [2, epoch_a, 1], [0, b""]]
        assert [(await next_pub())["data"] for _ in range(2)] == [{"n": 1}, {"n": 3}]
        history = await running.node.broker.history("bh:a", HistoryOptions(limit=10))
        assert [p.data for p in history.publications] == [b'{"n":1}', b'{"n":3}']
        # One bad publication: nothing of the call is written, and the error names it.
        bad = [("bh:a", b'{"n":6}', ""), ("bh:a", b"{broken", ""), ("bh:b", b'{"n":7}', "")]
        with pytest.raises(aioredis.ResponseError, match="livegate_publish_batch: publication 2: data must be JSON"):
            await batch(bad)
        for items, why in [
            ([("nope:x", b"1", "")], 'publication 1: unknown channel namespace "nope"'),
            ([("bh:a", b"1", '{"prefix":"other"}')], 'option "prefix" is for the whole call'),
            ([("bh:a", b"1", "[1]")], "publication 1: options must be a JSON object"),
            ([("bh:a", b"1", '{"tags":{"a":1}}')], "tags must be an object of strings"),
        ]:
            with pytest.raises(aioredis.ResponseError, match=why):
                await batch(items)
        with pytest.raises(aioredis.ResponseError, match="expected options and then data"):
            await redis_client.fcall("livegate_publish_batch", 2, "bh:a", "bh:b", orjson.dumps({"prefix": prefix}),
                                     b"1", "", "")
        history = await running.node.broker.history("bh:a", HistoryOptions(limit=10))
        assert history.position.offset == 2 and len(history.publications) == 2
        # Tags per publication reach the subscriber.
        await batch([("bh:a", b'{"n":8}', '{"tags":{"kind":"t"}}')])
        pub = await next_pub()
        assert pub["data"] == {"n": 8} and pub.get("tags") == {"kind": "t"}
    finally:
        await delete_prefix(redis_client, prefix)


async def test_publish_checks_idempotency_options_before_writing(start_server, redis_client):
    """A bad idempotent_ttl or idempotency_key fails the call before anything is written (a
    SET failing after the XADD and PUBLISH would report an error for a publication that went
    out); a null key is no key; Redis's own errors come back as Redis gave them."""
    prefix = unique_prefix()
    running = await start_server({
        "engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}},
        "channel": {"namespaces": [{"name": "ih", "history_size": 10, "history_ttl": "1m",
                                    "allow_subscribe_for_client": True}]},
    })
    from livegate.channels.broker import HistoryOptions
    opts = {"prefix": prefix}
    try:
        for bad in ({"idempotency_key": "k", "idempotent_ttl": 0}, {"idempotency_key": "k", "idempotent_ttl": 1e300},
                    {"idempotency_key": "k", "idempotent_ttl": "soon"}, {"idempotency_key": ["k"]}):
            with pytest.raises(aioredis.ResponseError, match="idempotent_ttl must be|idempotency_key must be"):
                await redis_client.fcall("livegate_publish", 1, "ih:a", b"1", orjson.dumps({**opts, **bad}))
            with pytest.raises(aioredis.ResponseError, match="publication 2: idempoten"):
                await redis_client.fcall("livegate_publish_batch", 2, "ih:a", "ih:b", orjson.dumps(opts),
                                         b"1", "", "", b"2", orjson.dumps(bad), "")
        for channel in ("ih:a", "ih:b"):
            history = await running.node.broker.history(channel, HistoryOptions(limit=10))
            assert history.publications == []  # nothing of the refused calls was written
        null_key = orjson.dumps({**opts, "idempotency_key": None})
        assert (await redis_client.fcall("livegate_publish", 1, "ih:n", b"1", null_key))[0] == 1
        assert (await redis_client.fcall("livegate_publish", 1, "ih:n", b"2", null_key))[0] == 2  # not suppressed
        with pytest.raises(aioredis.ResponseError, match="belongs in the item options"):
            await redis_client.fcall("livegate_publish_batch", 1, "ih:a", orjson.dumps({**opts, "idempotency_key": "x"}),
                                     b"1", "", "")
        await redis_client.set(f"{prefix}.meta.{{ih:w}}", "not a hash")
        with pytest.raises(aioredis.ResponseError) as err:
            await redis_client.fcall("livegate_publish", 1, "ih:w", b"1", orjson.dumps(opts))
        assert str(err.value).startswith("WRONGTYPE")  # not "ERR WRONGTYPE ..." with a Lua line number
    finally:
        await delete_prefix(redis_client, prefix)


async def test_fcall_finds_no_namespace_in_a_user_channel_whose_user_holds_the_boundary(start_server, redis_client):
    """The Redis function resolves namespaces as the server does: "#org:42" has none."""
    prefix = unique_prefix()
    await start_server({"engine": {"type": "redis", "redis": {"address": [REDIS_URL], "prefix": prefix}}})
    try:
        assert await redis_client.fcall("livegate_publish", 1, "#org:42", b"1", orjson.dumps({"prefix": prefix})) \
            == [0, b""]
        with pytest.raises(aioredis.ResponseError, match='unknown channel namespace "nope"'):
            await redis_client.fcall("livegate_publish", 1, "nope:#x", b"1", orjson.dumps({"prefix": prefix}))
    finally:
        await delete_prefix(redis_client, prefix)
