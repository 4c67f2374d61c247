"""The redis engine's PresenceManager: a hash of entries and a zset of expiry times per
channel, read and written by the Redis functions so that expired entries never show."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.exceptions import RedisError

from livegate.channels.broker import PresenceStats
from livegate.channels.redis.shard import UNAVAILABLE, Shard
from livegate.protocol.types import ClientInfo

__all__ = ["RedisPresence"]


class RedisPresence:
    def __init__(self, prefix: str, shard_for: Callable[[str], Shard]) -> None:
        self.prefix = prefix
        self._shard_for = shard_for

    async def _fcall(self, name: str, channel: str, *args: Any) -> Any:
        return await self._shard_for(channel).fcall(name, channel, self.prefix, *args)

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        await self._fcall("livegate_presence_add", channel, info.client, info.to_json(), f"{ttl:g}")

    async def add_presence_many(self, entries: Sequence[tuple[str, ClientInfo]], ttl: float) -> int:
        """One pipelined round trip per shard (not a transaction: an entry that fails fails alone)."""
        by_shard: dict[int, tuple[Shard, list[tuple[str, ClientInfo]]]] = {}
        for channel, info in entries:
            shard = self._shard_for(channel)
            by_shard.setdefault(shard.index, (shard, []))[1].append((channel, info))
        failed = 0
        for shard, items in by_shard.values():
            if not shard.healthy:
                failed += len(items)
                continue
            try:
                async with shard.client.pipeline(transaction=False) as pipe:
                    for channel, info in items:
                        pipe.fcall("livegate_presence_add", 1, channel, self.prefix, info.client, info.to_json(),
                                   f"{ttl:g}")
                    results = await pipe.execute(raise_on_error=False)
            except (*UNAVAILABLE, RedisError):
                failed += len(items)
                continue
            failed += sum(isinstance(r, Exception) for r in results)
        return failed

    async def remove_presence(self, channel: str, client_id: str, user: str) -> None:
        await self._fcall("livegate_presence_remove", channel, client_id)

    async def _entries(self, channel: str) -> dict[bytes, bytes]:
        flat = await self._fcall("livegate_presence", channel)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return {cid.decode(): ClientInfo.from_json(raw) for cid, raw in (await self._entries(channel)).items()}

    async def presence_stats(self, channel: str) -> PresenceStats:
        entries = await self._entries(channel)
        users = {orjson.loads(raw).get("user", "") for raw in entries.values()}
        return PresenceStats(len(entries), len(users))
