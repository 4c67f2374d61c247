"""Publishing into livegate channels from a Python backend, async or blocking.

    from livegate.publisher import Publisher, ErrUnknownChannel, PublisherUnavailable

    async with Publisher.redis("redis://127.0.0.1:6379/0", prefix="livegate") as pub:
        result = await pub.publish("chat:lobby", {"text": "hi"}, idempotency_key="msg-42")
        print(result.offset, result.epoch)

    with SyncPublisher.http("http://127.0.0.1:8001/api", api_key="...") as pub:
        pub.publish("chat:lobby", {"text": "hi"})

Three doors, the same methods and errors (see ``Publisher``):

* ``redis``: ``FCALL livegate_publish`` straight into the servers' Redis (no gateway hop, and
  no PostgreSQL archive: only what the servers publish themselves is archived);
* ``stream``: an entry on the Redis API stream, run later by one server (the result is the
  entry id; ``wait(result)`` waits for it and raises its error);
* ``http``: the server HTTP API.

Errors are livegate's own ``ClientError`` subclasses, re-exported here (``ErrUnknownChannel``
102, ``ErrBadRequest`` 107, ...); ``PublisherUnavailable`` when a door cannot be reached
(``OutcomeUnknown``, one of them, when ``wait`` cannot tell whether a stream entry ran).
``shard_index(channel, len(addresses))`` says which of ``engine.redis.address`` holds a channel.
Importing this package loads neither the server nor redis-py nor aiohttp: each door imports
what it uses when it is made (aiohttp only for the async HTTP door).
"""

from __future__ import annotations

from livegate.errors import ClientError
from livegate.protocol.codes import (
    ErrBadRequest,
    ErrInternal,
    ErrMethodNotFound,
    ErrNotAvailable,
    ErrPermissionDenied,
    ErrTooManyRequests,
    ErrUnauthorized,
    ErrUnknownChannel,
)
from livegate.publisher.aio import HttpPublisher, Publisher, RedisPublisher, StreamPublisher
from livegate.publisher.common import (
    BroadcastResult,
    OutcomeUnknown,
    PublisherUnavailable,
    PublishResult,
    api_body,
    encode_data,
)
from livegate.publisher.sync import SyncHttpPublisher, SyncPublisher, SyncRedisPublisher, SyncStreamPublisher
from livegate.sharding import shard_index

__all__ = [
    "Publisher", "RedisPublisher", "StreamPublisher", "HttpPublisher",
    "SyncPublisher", "SyncRedisPublisher", "SyncStreamPublisher", "SyncHttpPublisher",
    "PublishResult", "BroadcastResult", "PublisherUnavailable", "OutcomeUnknown", "api_body", "encode_data",
    "shard_index",
    "ClientError", "ErrBadRequest", "ErrInternal", "ErrMethodNotFound", "ErrNotAvailable", "ErrPermissionDenied",
    "ErrTooManyRequests", "ErrUnauthorized", "ErrUnknownChannel",
]
