"""What livegate's Redis engine and the backends that publish into it must agree on: which of
``engine.redis.address`` holds a channel, and the names they call there. No dependencies, so
``livegate.publisher`` can use it without loading the engine.

    from livegate.sharding import shard_index

    addresses = ["redis://10.0.0.1:6379/0", "redis://10.0.0.2:6379/0"]  # engine.redis.address, in order
    server = addresses[shard_index("chat:lobby", len(addresses))]
"""

from __future__ import annotations

import hashlib

__all__ = ["jump_hash", "channel_key", "shard_index", "PUBLISH_FUNCTION", "PUBLISH_BATCH_FUNCTION", "API_STREAM_GROUP"]

#: The Redis function that publishes one publication (livegate/channels/redis/livegate.lua).
PUBLISH_FUNCTION = "livegate_publish"
#: The Redis function that publishes several in one call, all or nothing.
PUBLISH_BATCH_FUNCTION = "livegate_publish_batch"
#: The consumer group every livegate instance reads ``{prefix}.api.stream`` with.
API_STREAM_GROUP = "livegate"


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash (Lamping & Veach): adding a bucket moves only 1/n of the keys.
    ``key``: an unsigned 64-bit integer; returns a bucket in ``range(buckets)``."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def channel_key(channel: str) -> int:
    """The 64-bit key a channel name is hashed with: its BLAKE2b-64, big-endian."""
    return int.from_bytes(hashlib.blake2b(channel.encode(), digest_size=8).digest(), "big")


def shard_index(channel: str, shards: int) -> int:
    """Which of ``shards`` Redis servers (``engine.redis.address``, in order) holds
    ``channel``: its history, position, presence and pub/sub, and so where ``FCALL
    livegate_publish`` for it must go. Always 0 for one server."""
    if shards <= 1:
        return 0
    return jump_hash(channel_key(channel), shards)
