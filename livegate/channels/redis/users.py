"""The redis engine's UserConnections: a sorted set per user of its connections on every node
(client id -> expiry time), read and written by the Redis functions (livegate.lua) so that
counting and adding are one atomic step and expired entries never count.

A user's set lives on the shard that the user id hashes to (``shard_for("#" + user)``), the
same on every node; its key is tagged with the user id (Redis Cluster compatible).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from livegate.channels.redis.shard import Shard

__all__ = ["RedisUserConnections", "REFRESH_CHUNK"]

#: Client ids per refresh call (a Lua call takes a few thousand arguments at most).
REFRESH_CHUNK = 500


class RedisUserConnections:
    def __init__(self, prefix: str, shard_for: Callable[[str], Shard]) -> None:
        self.prefix = prefix
        self._shard_for = shard_for

    async def _fcall(self, name: str, user: str, *args: Any) -> Any:
        # "#": a user's entries are placed apart from a channel of the same name
        return await self._shard_for("#" + user).fcall(name, user, self.prefix, *args)

    async def add_user_connection(self, user: str, client_id: str, limit: int, ttl: float) -> bool:
        added, _count = await self._fcall("livegate_user_connect", user, client_id, str(limit), f"{ttl:g}")
        return bool(added)

    async def refresh_user_connections(self, user: str, client_ids: Sequence[str], ttl: float) -> list[str]:
        missing: list[str] = []
        for start in range(0, len(client_ids), REFRESH_CHUNK):
            chunk = client_ids[start:start + REFRESH_CHUNK]
            missing.extend(raw.decode() for raw in await self._fcall("livegate_user_refresh", user, f"{ttl:g}", *chunk))
        return missing

    async def remove_user_connection(self, user: str, client_id: str) -> None:
        await self._fcall("livegate_user_disconnect", user, client_id)

    async def user_connection_count(self, user: str) -> int:
        return int(await self._fcall("livegate_user_connections", user))
