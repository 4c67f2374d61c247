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
from typing import TYPE_CHECKING, Any, Self, TypeVar

from livegate.errors import BrokerUnavailable, ClientError
from livegate.publisher.common import (
    FUNCTION,
    STREAM_MAX_LENGTH,
    BroadcastResult,
    ChannelOutcome,
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
    import redis

__all__ = ["SyncPublisher", "SyncRedisPublisher", "SyncStreamPublisher", "SyncHttpPublisher"]


T = TypeVar("T")


def _redis_client(url: str, timeout: float) -> redis.Redis:
    client: redis.Redis = redis_client(url, timeout, aio=False)
    return client


def _drive(client: redis.Redis, steps: Steps[T]) -> T:
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
                with client.pipeline(transaction=step.transaction) as pipe:
                    for call in step.calls:
                        getattr(pipe, call.name)(*call.args, **call.kwargs)
                    reply = pipe.execute(raise_on_error=False)
            else:
                reply = getattr(client, step.name)(*step.args, **step.kwargs)
        except Exception as exc:
            failure = exc


class SyncPublisher(ABC):
    """``Publisher`` for blocking code: ``SyncPublisher.redis``, ``.stream`` and ``.http``
    make the three doors; ``publish``, ``broadcast``, ``wait`` and ``close`` behave and raise
    as ``Publisher``'s do. Use it as ``with`` or call ``close()``."""

    @staticmethod
    def redis(address: str | Sequence[str], *, prefix: str = "livegate", timeout: float = 5.0) -> SyncRedisPublisher:
        """See ``Publisher.redis``."""
        return SyncRedisPublisher(address, prefix=prefix, timeout=timeout)

    @staticmethod
    def stream(address: str | Sequence[str], *, prefix: str = "livegate", timeout: float = 5.0,
               max_length: int = STREAM_MAX_LENGTH) -> SyncStreamPublisher:
        """See ``Publisher.stream``."""
        return SyncStreamPublisher(address, prefix=prefix, timeout=timeout, max_length=max_length)

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
    """``FCALL livegate_publish`` on the Redis server that holds the channel; a broadcast is
    one ``FCALL livegate_publish_batch`` per server, one server after the other (see
    ``RedisPublisher``)."""

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
        """See ``Publisher.broadcast``: every server is tried, then the outcome."""
        names = need_channels(channels)
        raw = encode_data(data, binary=binary)
        options = fcall_options(self.prefix, idempotency_key, tags)
        groups = group_by_shard(names, len(self._clients))
        outcomes: dict[int, list[ChannelOutcome]] = {}
        failure: Exception | None = None
        for shard, indexes in groups.items():
            try:
                outcomes[shard] = _drive(self._clients[shard], shard_broadcast([names[i] for i in indexes], raw, options))
            except Exception as exc:  # not expected (shard_broadcast answers per channel): after the others
                failure = failure or exc
        if failure is not None:
            raise failure
        return merge_shards(len(names), groups, outcomes)

    def close(self) -> None:
        for client in self._clients:
            client.close()


class SyncStreamPublisher(SyncPublisher):
    """``XADD {prefix}.api.stream``: see ``StreamPublisher`` (the result is the entry id;
    ``wait`` tells how it went)."""

    def __init__(self, address: str | Sequence[str], *, prefix: str = "livegate", timeout: float = 5.0,
                 max_length: int = STREAM_MAX_LENGTH) -> None:
        self.stream_key = f"{prefix}.api.stream"
        self.max_length = max_length
        self.dead_key = f"{prefix}.api.dead"
        self._client = _redis_client(first_address(address), timeout)

    def _add(self, method: str, body: bytes) -> PublishResult:
        return _drive(self._client, stream_add(self.stream_key, method, body))

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
        watch = EntryWatch(self.stream_key, self.dead_key, result.entry_id, self.max_length, result.stream_added)
        deadline = time.monotonic() + timeout
        for delay in poll_delays():
            if _drive(self._client, watch.poll()):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.stream_key} entry {result.entry_id} not executed within {timeout:g}s")
            time.sleep(min(delay, remaining))

    def close(self) -> None:
        self._client.close()


class SyncHttpPublisher(SyncPublisher):
    """``POST {url}/publish`` and ``{url}/broadcast`` with ``urllib.request`` (a connection
    per call)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        self.url = http_url(url)
        self.timeout = timeout
        self._headers = http_headers(api_key)
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
