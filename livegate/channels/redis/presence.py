"""The redis engine's PresenceManager: a hash of entries and a zset of expiry times per
channel, read and written by the Redis functions so that expired entries never show."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from livegate.channels.broker import PresenceStats
from livegate.channels.redis.shard import UNAVAILABLE, Shard
from livegate.errors import BrokerError, BrokerUnavailable
from livegate.protocol.types import ClientInfo

__all__ = ["RedisPresence"]


class RedisPresence:
    def __init__(self, prefix: str, shard_for: Callable[[str], Shard]) -> None:
        self.prefix = prefix
        self._shard_for = shard_for

    async def _fcall(self, name: str, channel: str, *args: Any) -> Any:
        shard = self._shard_for(channel)
        shard.check()
        try:
            return await shard.client.fcall(name, 1, channel, self.prefix, *args)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis: {exc}") from None
        except RedisError as exc:
            raise BrokerError(f"redis: {exc}") from None

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        await self._fcall("livegate_presence_add", channel, info.client, info.to_json(), f"{ttl:g}")

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
