"""The blocking publisher, for backends without an event loop (Django, Flask, scripts, Celery
tasks): the same doors, methods and errors as ``Publisher``, on redis-py's blocking client and
``urllib.request``. Every method is safe to call from several threads at once.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
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
    import redis

__all__ = ["SyncPublisher", "SyncRedisPublisher", "SyncStreamPublisher", "SyncHttpPublisher"]


def _redis_client(url: str, timeout: float) -> redis.Redis:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No silent retries (see aio._redis_client).
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))


class SyncPublisher(ABC):
    """``Publisher`` for blocking code: ``SyncPublisher.redis``, ``.stream`` and ``.http``
    make the three doors; ``publish``, ``broadcast``, ``wait`` and ``close`` behave and raise
    as ``Publisher``'s do. Use it as ``with`` or call ``close()``."""

    @staticmethod
    def redis(address: str | Sequence[str], *, prefix: str = "livegate", timeout: float = 5.0) -> SyncRedisPublisher:
        """See ``Publisher.redis``."""
        return SyncRedisPublisher(address, prefix=prefix, timeout=timeout)

    @staticmethod
    def stream(address: str, *, prefix: str = "livegate", timeout: float = 5.0) -> SyncStreamPublisher:
        """See ``Publisher.stream``."""
        return SyncStreamPublisher(address, prefix=prefix, timeout=timeout)

    @staticmethod
    def http(url: str, *, api_key: str | None = None, timeout: float = 10.0) -> SyncHttpPublisher:
        """See ``Publisher.http``."""
        return SyncHttpPublisher(url, api_key=api_key, timeout=timeout)

    @abstractmethod
    def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                tags: Mapping[str, str] | None = None, binary: bool = False) -> PublishResult:
        """See ``Publisher.publish``."""

    @abstractmethod
    def broadcast(self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None,
                  tags: Mapping[str, str] | None = None, binary: bool = False) -> BroadcastResult:
        """See ``Publisher.broadcast``."""

    def wait(self, result: PublishResult, timeout: float = 10.0) -> None:
        """See ``Publisher.wait``: returns at once but for the stream door."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SyncRedisPublisher(SyncPublisher):
    """``FCALL livegate_publish`` on the Redis server that holds the channel."""

    def __init__(self, address: str | Sequence[str], *, prefix: str = "livegate", timeout: float = 5.0) -> None:
        addresses = [address] if isinstance(address, str) else list(address)
        if not addresses:
            raise ValueError("at least one Redis address is needed")
        self.prefix = prefix
        self._clients = [_redis_client(url, timeout) for url in addresses]

    def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                tags: Mapping[str, str] | None = None, binary: bool = False) -> PublishResult:
        raw = encode_data(data, binary=binary)
        options = fcall_options(self.prefix, idempotency_key, tags)
        client = self._clients[shard_index(channel, len(self._clients))]
        try:
            reply = client.fcall(FUNCTION, 1, channel, raw, options)
        except Exception as exc:
            raise redis_failure(exc) from None
        return fcall_result(reply)

    def broadcast(self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None,
                  tags: Mapping[str, str] | None = None, binary: bool = False) -> BroadcastResult:
        names = need_channels(channels)
        raw = encode_data(data, binary=binary)
        options = fcall_options(self.prefix, idempotency_key, tags)
        by_shard: dict[int, list[int]] = {}
        for i, channel in enumerate(names):
            by_shard.setdefault(shard_index(channel, len(self._clients)), []).append(i)
        out: list[PublishResult | ClientError | None] = [None] * len(names)
        for shard, indexes in by_shard.items():
            try:
                with self._clients[shard].pipeline(transaction=False) as pipe:
                    for i in indexes:
                        pipe.fcall(FUNCTION, 1, names[i], raw, options)
                    replies = pipe.execute(raise_on_error=False)
            except Exception as exc:
                raise redis_failure(exc) from None
            for i, reply in zip(indexes, replies, strict=True):
                if not isinstance(reply, Exception):
                    out[i] = fcall_result(reply)
                    continue
                error = redis_failure(reply)
                if isinstance(error, PublisherUnavailable):
                    raise error
                out[i] = error
        return [item for item in out if item is not None]

    def close(self) -> None:
        for client in self._clients:
            client.close()


class SyncStreamPublisher(SyncPublisher):
    """``XADD {prefix}.api.stream``: see ``StreamPublisher`` (the result is the entry id;
    ``wait`` tells how it went)."""

    def __init__(self, address: str, *, prefix: str = "livegate", timeout: float = 5.0) -> None:
        self.stream_key = f"{prefix}.api.stream"
        self.dead_key = f"{prefix}.api.dead"
        self._client = _redis_client(address, timeout)

    def _add(self, method: str, body: bytes) -> PublishResult:
        try:
            entry_id = self._client.xadd(self.stream_key, {"method": method, "payload": body})
        except Exception as exc:
            raise redis_failure(exc) from None
        return PublishResult(0, "", entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))

    def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                tags: Mapping[str, str] | None = None, binary: bool = False) -> PublishResult:
        body = api_body("publish", channel, data, binary=binary, idempotency_key=idempotency_key, tags=tags)
        return self._add("publish", body)

    def broadcast(self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None,
                  tags: Mapping[str, str] | None = None, binary: bool = False) -> BroadcastResult:
        """See ``StreamPublisher.broadcast``."""
        names = need_channels(channels)
        body = api_body("broadcast", names, data, binary=binary, idempotency_key=idempotency_key, tags=tags)
        result = self._add("broadcast", body)
        return [result] * len(names)

    def wait(self, result: PublishResult, timeout: float = 10.0) -> None:
        """See ``StreamPublisher.wait``."""
        if not result.entry_id:
            return
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not self._executed(result.entry_id):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.stream_key} entry {result.entry_id} not executed within {timeout:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _executed(self, entry_id: str) -> bool:
        from redis.exceptions import ResponseError

        client = self._client
        try:
            try:
                groups = client.xinfo_groups(self.stream_key)
            except ResponseError as exc:
                if "no such key" in str(exc):
                    return False
                raise
            if not delivered(groups, entry_id):
                return False
            if client.xpending_range(self.stream_key, STREAM_GROUP, min=entry_id, max=entry_id, count=1):
                return False
            start: str | None = dead_letter_scan_start(entry_id)
            while start is not None:
                start = dead_letter_page(client.xrange(self.dead_key, min=start, max="+", count=DEAD_PAGE), entry_id)
            return True
        except ClientError:
            raise
        except Exception as exc:
            raise redis_failure(exc) from None

    def close(self) -> None:
        self._client.close()


class SyncHttpPublisher(SyncPublisher):
    """``POST {url}/publish`` and ``{url}/broadcast`` with ``urllib.request`` (a connection
    per call)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["X-API-Key"] = api_key
        # No proxies from the environment (as aiohttp): the API port is for backends nearby.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _post(self, method: str, body: bytes) -> bytes:
        url = f"{self.url}/{method}"
        request = urllib.request.Request(url, data=body, headers=self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status, answer = int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:  # a status other than 2xx: its body says why
            status, answer = exc.code, b""
            try:
                answer = exc.read()
            except (http.client.HTTPException, OSError):
                pass
            finally:
                exc.close()
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise PublisherUnavailable(f"{url}: {reason or type(exc).__name__}") from None
        if status != 200:
            raise http_error(status, answer, url)
        return answer

    def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                tags: Mapping[str, str] | None = None, binary: bool = False) -> PublishResult:
        body = api_body("publish", channel, data, binary=binary, idempotency_key=idempotency_key, tags=tags)
        return http_result(self._post("publish", body))

    def broadcast(self, channels: Sequence[str], data: Any, *, idempotency_key: str | None = None,
                  tags: Mapping[str, str] | None = None, binary: bool = False) -> BroadcastResult:
        names = need_channels(channels)
        body = api_body("broadcast", names, data, binary=binary, idempotency_key=idempotency_key, tags=tags)
        return broadcast_results(self._post("broadcast", body), len(names))

    def close(self) -> None:
        pass
