"""Edge cases of the Redis backend doors against a real Redis."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis
from conftest import REDIS_URL, unique_prefix


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
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
