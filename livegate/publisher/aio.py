"""The asyncio publisher: ``Publisher.redis``, ``Publisher.stream`` and ``Publisher.http``.

redis-py and aiohttp are imported when a door that needs them is made, not before.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from livegate.errors import ClientError
from livegate.publisher.common import (
    DEAD_PAGE,
    FUNCTION,
    STREAM_GROUP,
    BroadcastResult,
    PublisherUnavailable,
    PublishResult,
    api_body,
    broadcast_results,
    dead_letter_page,
    dead_letter_scan_start,
    delivered,
    encode_data,
    fcall_options,
    fcall_result,
    http_error,
    http_result,
    need_channels,
    redis_failure,
    shard_index,
)

if TYPE_CHECKING:
    import aiohttp
    import redis.asyncio as aioredis

__all__ = ["Publisher", "RedisPublisher", "StreamPublisher", "HttpPublisher"]

def _redis_client(url: str, timeout: float) -> aioredis.Redis:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # No silent retries: a publish retried after a lost reply could publish twice. Callers
    # retry themselves, with an idempotency key.
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                   retry=Retry(NoBackoff(), 0))


class Publisher(ABC):
    """Publishes into livegate channels from an asyncio backend, through one of three doors:

    * ``Publisher.redis(address)``: ``FCALL livegate_publish`` on the Redis the servers use;
      no gateway hop; returns the offset and epoch.
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
        ``prefix``: ``engine.redis.prefix``."""
        return RedisPublisher(address, prefix=prefix, timeout=timeout)

    @staticmethod
    def stream(address: str, *, prefix: str = "livegate", timeout: float = 5.0) -> StreamPublisher:
        """The Redis API stream door. ``address``: the first of ``engine.redis.address``."""
        return StreamPublisher(address, prefix=prefix, timeout=timeout)

    @staticmethod
    def http(url: str, *, api_key: str | None = None, timeout: float = 10.0) -> HttpPublisher:
        """The HTTP API door. ``url``: the API's prefix, e.g. ``http://127.0.0.1:8001/api``;
        ``api_key``: ``http_api.key`` (None for a server with ``http_api.insecure``)."""
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
        ``publish`` for what concerns all of them."""

    async def wait(self, result: PublishResult, timeout: float = 10.0) -> None:
        """Wait until a publication has been executed, raising its error if it failed. Only the
        stream door needs it: the other doors' results are final, and this returns at once."""
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
    """``FCALL livegate_publish`` on the Redis server that holds the channel."""

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
        by_shard: dict[int, list[int]] = {}
        for i, channel in enumerate(names):
            by_shard.setdefault(shard_index(channel, len(self._clients)), []).append(i)
        results: list[PublishResult | ClientError | PublisherUnavailable | None] = [None] * len(names)

        async def on_shard(shard: int, indexes: list[int]) -> None:
            # One pipeline per server: one round trip for all of its channels.
            try:
                async with self._clients[shard].pipeline(transaction=False) as pipe:
                    for i in indexes:
                        pipe.fcall(FUNCTION, 1, names[i], raw, options)
                    replies = await pipe.execute(raise_on_error=False)
            except Exception as exc:
                raise redis_failure(exc) from None
            for i, reply in zip(indexes, replies, strict=True):
                results[i] = redis_failure(reply) if isinstance(reply, Exception) else fcall_result(reply)

        await asyncio.gather(*(on_shard(shard, indexes) for shard, indexes in by_shard.items()))
        out: BroadcastResult = []
        for item in results:
            if isinstance(item, PublisherUnavailable):
                raise item
            assert item is not None
            out.append(item)
        return out

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

    def __init__(self, address: str, *, prefix: str = "livegate", timeout: float = 5.0) -> None:
        self.stream_key = f"{prefix}.api.stream"
        self.dead_key = f"{prefix}.api.dead"
        self._client = _redis_client(address, timeout)

    async def _add(self, method: str, body: bytes) -> PublishResult:
        try:
            entry_id = await self._client.xadd(self.stream_key, {"method": method, "payload": body})
        except Exception as exc:
            raise redis_failure(exc) from None
        return PublishResult(0, "", entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))

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
        """Poll until an instance has executed the entry (acknowledged it).

        Raises:
            ClientError: the entry was dead-lettered with this error (e.g. ErrUnknownChannel).
            TimeoutError: not executed within ``timeout`` seconds (is a livegate instance
                running on this Redis and prefix?).
            PublisherUnavailable: Redis cannot be reached.
        """
        if not result.entry_id:
            return
        delay = 0.005
        try:
            async with asyncio.timeout(timeout):
                while not await self._executed(result.entry_id):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.2)
        except TimeoutError:
            raise TimeoutError(f"{self.stream_key} entry {result.entry_id} not executed within {timeout:g}s") from None

    async def _executed(self, entry_id: str) -> bool:
        from redis.exceptions import ResponseError

        client = self._client
        try:
            # Read by the group, then no longer pending: acknowledged, executed or dead-lettered
            # (in this order: an entry is pending from its delivery to its acknowledgement).
            try:
                groups = await client.xinfo_groups(self.stream_key)
            except ResponseError as exc:
                if "no such key" in str(exc):
                    return False
                raise
            if not delivered(groups, entry_id):
                return False
            if await client.xpending_range(self.stream_key, STREAM_GROUP, min=entry_id, max=entry_id, count=1):
                return False
            start: str | None = dead_letter_scan_start(entry_id)
            while start is not None:
                start = dead_letter_page(await client.xrange(self.dead_key, min=start, max="+", count=DEAD_PAGE), entry_id)
            return True
        except ClientError:
            raise
        except Exception as exc:
            raise redis_failure(exc) from None

    async def close(self) -> None:
        await self._client.aclose()


class HttpPublisher(Publisher):
    """``POST {url}/publish`` and ``{url}/broadcast`` with ``X-API-Key``, over one aiohttp
    session (keep-alive), made on first use."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["X-API-Key"] = api_key
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
