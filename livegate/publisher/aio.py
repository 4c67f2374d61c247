"""The asyncio publisher: ``Publisher.redis``, ``Publisher.stream`` and ``Publisher.http``.

redis-py and aiohttp are imported when a door that needs them is made, not before.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from livegate.errors import BrokerUnavailable, ClientError
from livegate.publisher.common import (
    FUNCTION,
    STREAM_MAX_LENGTH,
    BroadcastResult,
    EntryWatch,
    Pipelined,
    PublisherUnavailable,
    PublishResult,
    Steps,
    api_body,
    broadcast_results,
    encode_data,
    fcall_options,
    fcall_result,
    first_address,
    group_by_shard,
    http_error,
    http_headers,
    http_result,
    http_url,
    merge_shards,
    need_channels,
    poll_delays,
    redis_client,
    redis_failure,
    shard_broadcast,
    shard_index,
    stream_add,
)

if TYPE_CHECKING:
    import aiohttp
    import redis.asyncio as aioredis

__all__ = ["Publisher", "RedisPublisher", "StreamPublisher", "HttpPublisher"]

T = TypeVar("T")


def _redis_client(url: str, timeout: float) -> aioredis.Redis:
    client: aioredis.Redis = redis_client(url, timeout, aio=True)
    return client


async def _drive(client: aioredis.Redis, steps: Steps[T]) -> T:
    """Run the Redis conversation ``steps`` (see livegate.publisher.common) on ``client``."""
    reply: Any = None
    failure: Exception | None = None
    while True:
        try:
            step = steps.send(reply) if failure is None else steps.throw(failure)
        except StopIteration as done:
            return done.value
        except (ClientError, BrokerUnavailable):
            raise
        except Exception as exc:
            raise redis_failure(exc) from None
        reply, failure = None, None
        try:
            if isinstance(step, Pipelined):
                async with client.pipeline(transaction=step.transaction) as pipe:
                    for call in step.calls:
                        getattr(pipe, call.name)(*call.args, **call.kwargs)
                    reply = await pipe.execute(raise_on_error=False)
            else:
                reply = await getattr(client, step.name)(*step.args, **step.kwargs)
        except Exception as exc:
            failure = exc


class Publisher(ABC):
    """Publishes into livegate channels from an asyncio backend, through one of three doors:

    * ``Publisher.redis(address)``: ``FCALL livegate_publish`` on the Redis the servers use;
      no gateway hop; returns the offset and epoch. Publications that come in this way are
      not archived to PostgreSQL (the servers archive what they publish themselves).
    * ``Publisher.stream(address)``: an entry on the Redis API stream, run later by one of
      the servers (at-least-once); returns the entry id, see ``wait``.
    * ``Publisher.http(url, api_key=...)``: the server HTTP API; returns the offset and epoch.

    Every door raises the same errors: the server's ``ClientError`` subclasses
    (``ErrUnknownChannel`` 102, ``ErrBadRequest`` 107, ``ErrNotAvailable`` 108, ...) and
    ``PublisherUnavailable`` when the door cannot be reached. Nothing is retried behind the
    caller's back. Use it as ``async with`` or call ``close()``.
    """

    @staticmethod
    def redis(address: str | Sequence[str], *, prefix: str = "livegate", timeout: float = 5.0) -> RedisPublisher:
        """The Redis function door. ``address``: ``engine.redis.address`` (one URL, or all of
        them, in the same order, when channels are sharded over several servers);
        ``prefix``: ``engine.redis.prefix``. Plain Redis servers, as livegate's engine uses
        them, not a Redis Cluster (a broadcast's batch names channels of different slots)."""
        return RedisPublisher(address, prefix=prefix, timeout=timeout)

    @staticmethod
    def stream(address: str | Sequence[str], *, prefix: str = "livegate", timeout: float = 5.0,
               max_length: int = STREAM_MAX_LENGTH) -> StreamPublisher:
        """The Redis API stream door. ``address``: ``engine.redis.address``, or its first URL
        (the stream lives on the first server); ``max_length``:
        ``engine.redis.api_stream_max_length`` (or the smallest ``MAXLEN`` your backends
        ``XADD`` with, if smaller), which ``wait`` needs to tell an entry that ran from one
        cut unrun."""
        return StreamPublisher(address, prefix=prefix, timeout=timeout, max_length=max_length)

    @staticmethod
    def http(url: str, *, api_key: str | None = None, timeout: float = 10.0) -> HttpPublisher:
        """The HTTP API door. ``url``: the API's prefix, e.g. ``http://127.0.0.1:8001/api``
        (ValueError for one that is not an http(s) URL); ``api_key``: ``http_api.key`` (None
        for a server with ``http_api.insecure``)."""
        return HttpPublisher(url, api_key=api_key, timeout=timeout)

    @abstractmethod
    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                      tags: Mapping[str, str] | None = None, binary: bool = False) -> PublishResult:
        """Publish ``data`` into ``channel``.

        ``data``: any JSON-serializable value, or ``bytes`` of JSON text (sent byte for byte);
        with ``binary=True``, any bytes (for a namespace with ``publication_data_format =
        "binary"``). ``idempotency_key``: a publish repeated with the same key within 5
        minutes publishes nothing and returns the first one's position (keys are shared by
        every door). ``tags``: strings delivered with the publication.

        Raises:
            ErrUnknownChannel: the channel's namespace is not configured.
            ErrBadRequest: data not JSON (or not an object in a ``json_object`` namespace),
                over ``channel.max_publication_size``, bad tags, a bad channel name.
            ClientError: any other error the server answered, with its code.
            PublisherUnavailable: the door cannot be reached or timed out.
        """

    @abstractmethod
    async def broadcast(self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None,
                        tags: Mapping[str, str] | None = None, binary: bool = False) -> BroadcastResult:
        """Publish the same data into several channels: one result or error per channel, in
        the order given (an error for one channel does not stop the others). Raises as
        ``publish`` for what concerns all of them. With channels on several Redis servers,
        every server is tried before a ``PublisherUnavailable`` is raised for one that could
        not be reached: channels on the others may have been published, so retry with the
        same ``idempotency_key``."""

    async def wait(self, result: PublishResult, timeout: float = 10.0) -> None:
        """Wait until a publication has been executed, raising its error if it failed. Only the
        stream door needs it (see ``StreamPublisher.wait``): the other doors' results are
        final, and this returns at once."""
        return None

    @abstractmethod
    async def close(self) -> None:
        """Release connections. The publisher is not used after."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class RedisPublisher(Publisher):
    """``FCALL livegate_publish`` on the Redis server that holds the channel.

    A broadcast is one ``FCALL livegate_publish_batch`` per server, all servers at once, and
    still answers per channel: a batch is all or nothing, so when Redis refuses one (naming
    publication i), channel i gets that error and the server's other channels are sent again,
    one ``FCALL livegate_publish`` each in one pipeline, each with its own outcome; nothing of
    a refused batch was written, so nothing is published twice (see
    ``livegate.publisher.common.shard_broadcast``). Channels of several slots go in one call:
    plain Redis servers, as livegate's engine uses, not a Redis Cluster.
    """

    def __init__(self, address: str | Sequence[str], *, prefix: str = "livegate", timeout: float = 5.0) -> None:
        addresses = [address] if isinstance(address, str) else list(address)
        if not addresses:
            raise ValueError("at least one Redis address is needed")
        self.prefix = prefix
        self._clients = [_redis_client(url, timeout) for url in addresses]

    def _client_for(self, channel: str) -> aioredis.Redis:
        return self._clients[shard_index(channel, len(self._clients))]

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                      tags: Mapping[str, str] | None = None, binary: bool = False) -> PublishResult:
        raw = encode_data(data, binary=binary)
        options = fcall_options(self.prefix, idempotency_key, tags)
        try:
            reply = await self._client_for(channel).fcall(FUNCTION, 1, channel, raw, options)
        except Exception as exc:
            raise redis_failure(exc) from None
        return fcall_result(reply)

    async def broadcast(self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None,
                        tags: Mapping[str, str] | None = None, binary: bool = False) -> BroadcastResult:
        names = need_channels(channels)
        raw = encode_data(data, binary=binary)
        options = fcall_options(self.prefix, idempotency_key, tags)
        groups = group_by_shard(names, len(self._clients))
        shards = list(groups)
        # Every server to the end, whatever the others do; then the outcome.
        done = await asyncio.gather(*(
            _drive(self._clients[shard], shard_broadcast([names[i] for i in groups[shard]], raw, options))
            for shard in shards), return_exceptions=True)
        outcomes = {}
        for shard, item in zip(shards, done, strict=True):
            if isinstance(item, BaseException):
                raise item
            outcomes[shard] = item
        return merge_shards(len(names), groups, outcomes)

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()


class StreamPublisher(Publisher):
    """``XADD {prefix}.api.stream * method <m> payload <HTTP API body>``.

    The command runs later, once, on whichever livegate instance reads the entry first. The
    result of ``publish`` is the entry id only (offset 0, epoch ``""``); ``wait(result)``
    tells whether the command succeeded, raising the error a failed one was dead-lettered
    with (``{prefix}.api.dead``). Entries can run more than once (an instance that dies
    before acknowledging): an ``idempotency_key`` makes that harmless.
    """

    def __init__(self, address: str | Sequence[str], *, prefix: str = "livegate", timeout: float = 5.0,
                 max_length: int = STREAM_MAX_LENGTH) -> None:
        self.stream_key = f"{prefix}.api.stream"
        self.max_length = max_length
        self.dead_key = f"{prefix}.api.dead"
        self._client = _redis_client(first_address(address), timeout)

    async def _add(self, method: str, body: bytes) -> PublishResult:
        return await _drive(self._client, stream_add(self.stream_key, method, body))

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                      tags: Mapping[str, str] | None = None, binary: bool = False) -> PublishResult:
        body = api_body("publish", channel, data, binary=binary, idempotency_key=idempotency_key, tags=tags)
        return await self._add("publish", body)

    async def broadcast(self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None,
                        tags: Mapping[str, str] | None = None, binary: bool = False) -> BroadcastResult:
        """One entry for all channels: every channel's result is that entry. ``wait`` reports
        the broadcast failing as a whole (no channels, bad data); what it did per channel is
        not reported back."""
        names = need_channels(channels)
        body = api_body("broadcast", names, data, binary=binary, idempotency_key=idempotency_key, tags=tags)
        result = await self._add("broadcast", body)
        return [result] * len(names)

    async def wait(self, result: PublishResult, timeout: float = 10.0) -> None:
        """Poll until an instance has executed the entry: returns once that is known (see
        ``livegate.publisher.common.EntryWatch`` for how), raises when it failed or cannot be
        known. Call it soon after publishing: entries that ran are trimmed from the stream
        within seconds, and one ``wait`` never saw in the stream cannot be told, once gone,
        from one cut unrun.

        Raises:
            ClientError: the entry was dead-lettered with this error (e.g. ErrUnknownChannel).
            OutcomeUnknown: the entry is no longer in the stream, was not dead-lettered, and
                may have been cut unrun (the stream over ``max_length`` entries, or ``wait``
                called too late to tell); publish again with the same ``idempotency_key``.
            TimeoutError: not executed within ``timeout`` seconds (is a livegate instance
                running on this Redis and prefix?).
            PublisherUnavailable: Redis cannot be reached.
        """
        if not result.entry_id:
            return
        watch = EntryWatch(self.stream_key, self.dead_key, result.entry_id, self.max_length, result.stream_added)
        try:
            async with asyncio.timeout(timeout):
                for delay in poll_delays():
                    if await _drive(self._client, watch.poll()):
                        return
                    await asyncio.sleep(delay)
        except TimeoutError:
            raise TimeoutError(f"{self.stream_key} entry {result.entry_id} not executed within {timeout:g}s") from None

    async def close(self) -> None:
        await self._client.aclose()


class HttpPublisher(Publisher):
    """``POST {url}/publish`` and ``{url}/broadcast`` with ``X-API-Key``, over one aiohttp
    session (keep-alive), made on first use."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.url = http_url(url)
        self.timeout = timeout
        self._headers = http_headers(api_key)
        self._session: aiohttp.ClientSession | None = None

    async def _post(self, method: str, body: bytes) -> bytes:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        url = f"{self.url}/{method}"
        try:
            async with self._session.post(url, data=body, headers=self._headers) as response:
                status, answer = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PublisherUnavailable(f"{url}: {exc or type(exc).__name__}") from None
        if status != 200:
            raise http_error(status, answer, url)
        return answer

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                      tags: Mapping[str, str] | None = None, binary: bool = False) -> PublishResult:
        body = api_body("publish", channel, data, binary=binary, idempotency_key=idempotency_key, tags=tags)
        return http_result(await self._post("publish", body))

    async def broadcast(self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None,
                        tags: Mapping[str, str] | None = None, binary: bool = False) -> BroadcastResult:
        names = need_channels(channels)
        body = api_body("broadcast", names, data, binary=binary, idempotency_key=idempotency_key, tags=tags)
        return broadcast_results(await self._post("broadcast", body), len(names))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
