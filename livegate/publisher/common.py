"""What the async and sync publishers share: results, errors, encodings, routing, the reading
of each door's replies, and the Redis conversations of ``broadcast`` and ``wait``. No I/O here.

Errors are the server's own classes (``livegate.protocol.codes``): a door that answers with
error code 102 raises ``ErrUnknownChannel`` whichever door it was, and any other code the
matching ``ClientError`` subclass (a plain ``ClientError`` for a code livegate does not
define). A door that cannot be reached raises ``PublisherUnavailable``; an answer that makes
no sense (a server of another version, a proxy in the way) ``ErrInternal``.

The Redis conversations are generators of ``RedisCall`` and ``Pipelined`` steps: each door
runs the steps on its own client (blocking or asyncio) and sends back the reply, or throws in
the exception, of each; what the generator returns is the outcome.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from livegate.errors import BrokerUnavailable, ClientError
from livegate.protocol import codes
from livegate.protocol.jsontext import JsonTextError, dumps, is_json, loads
from livegate.sharding import API_STREAM_GROUP, PUBLISH_BATCH_FUNCTION, PUBLISH_FUNCTION, shard_index

__all__ = [
    "PublishResult", "PublisherUnavailable", "OutcomeUnknown", "BroadcastResult", "ChannelOutcome", "need_channels", "error_for_code",
    "unexpected", "encode_data", "api_body", "redis_client", "first_address", "RedisCall", "Pipelined", "Steps",
    "fcall_options", "fcall_result", "fcall_error", "redis_failure", "shard_index", "group_by_shard",
    "shard_broadcast", "merge_shards", "http_url", "http_headers", "http_error", "http_result", "broadcast_results",
    "entry_result", "stream_add", "entry_id_key", "dead_letter_error", "delivered", "dead_letter_scan_start", "dead_letter_page",
    "EntryWatch", "poll_delays", "DEAD_PAGE", "STREAM_GROUP", "STREAM_MAX_LENGTH", "FUNCTION", "BATCH_FUNCTION",
]

#: The Redis function a publish calls (livegate/channels/redis/livegate.lua).
FUNCTION = PUBLISH_FUNCTION
#: The one a broadcast calls, once per Redis server.
BATCH_FUNCTION = PUBLISH_BATCH_FUNCTION
#: The consumer group every livegate instance reads ``{prefix}.api.stream`` with.
STREAM_GROUP = API_STREAM_GROUP

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a publication landed in its channel's stream.

    ``offset`` and ``epoch`` are 0 and ``""`` when the namespace keeps no history. Through the
    Redis API stream the command runs later, on whichever instance reads it first: offset and
    epoch are not known then (0, ``""``) and ``entry_id`` is the stream entry's id (``wait``
    waits until an instance executed it and raises its error if it failed); ``stream_added``
    is at most how many entries the stream had had, this one included, when it was added (a
    lower bound of its ``entries-added``; None when not known), which ``wait`` uses to tell an
    entry that ran and was trimmed from one cut unrun.
    """

    offset: int
    epoch: str
    entry_id: str = ""
    stream_added: int | None = field(default=None, compare=False)


class PublisherUnavailable(BrokerUnavailable):
    """The door cannot be reached right now (Redis or the HTTP API is down, unreachable, or
    timed out). A publish that timed out may or may not have happened: retry it with the same
    ``idempotency_key`` to publish it exactly once."""

    temporary = True


class OutcomeUnknown(PublisherUnavailable):
    """``wait`` cannot tell whether a Redis API stream entry ran: it is no longer in the
    stream, was acknowledged and was not dead-lettered, which is what an entry that ran and
    was trimmed afterwards looks like, and also one cut unrun because the stream was over
    ``engine.redis.api_stream_max_length``. Publish again with the same ``idempotency_key``
    (nothing is published twice if it did run)."""


_BY_CODE: dict[int, type[ClientError]] = {
    cls.code: cls for cls in (
        codes.ErrInternal, codes.ErrUnauthorized, codes.ErrUnknownChannel, codes.ErrPermissionDenied,
        codes.ErrMethodNotFound, codes.ErrAlreadySubscribed, codes.ErrLimitExceeded, codes.ErrBadRequest,
        codes.ErrNotAvailable, codes.ErrTokenExpired, codes.ErrExpired, codes.ErrTooManyRequests,
        codes.ErrUnrecoverablePosition, codes.ErrConflict,
    )
}


def error_for_code(code: int, message: str) -> ClientError:
    """The ``ClientError`` subclass of a server error code, carrying the server's message."""
    cls = _BY_CODE.get(code)
    return cls(message=message) if cls is not None else ClientError(code, message)


def unexpected(source: str, answer: Any) -> codes.ErrInternal:
    """The error of an answer that makes no sense (not temporary: asking again gets the same)."""
    shown = repr(answer)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    return codes.ErrInternal(message=f"internal server error: unexpected answer from {source}: {shown}",
                             temporary=False)


# -- encoding --------------------------------------------------------------------------------

_BYTES = (bytes, bytearray, memoryview)


def encode_data(data: Any, *, binary: bool = False) -> bytes:
    """Publication data as bytes: ``bytes`` are taken as they are (JSON text, or any bytes
    with ``binary=True``), anything else is encoded as JSON (a ``str`` is a JSON string).

    Raises:
        ErrBadRequest: ``data`` cannot be encoded as JSON, or bytes are not JSON text.
        TypeError: ``binary=True`` with something that is not bytes.
    """
    if binary:
        if not isinstance(data, _BYTES):
            raise TypeError(f"binary=True needs bytes, not {type(data).__name__}")
        return bytes(data)
    if isinstance(data, _BYTES):
        raw = bytes(data)
        # Checked before it leaves: in a request body, bytes that are not one JSON value would
        # change the body around them; and every door answers alike.
        if not is_json(raw):
            raise codes.ErrBadRequest(message="bad request: data must be JSON text (binary=True for other bytes)")
        return raw
    try:
        return dumps(data)
    except JsonTextError as exc:
        raise codes.ErrBadRequest(message=f"bad request: data is not JSON-serializable: {exc}") from None


def _json(value: Any) -> bytes:
    try:
        return dumps(value)
    except JsonTextError as exc:
        raise codes.ErrBadRequest(message=f"bad request: {exc}") from None


def api_body(method: str, target: str | Sequence[str], data: Any, *, binary: bool = False,
             idempotency_key: str | None = None, tags: Mapping[str, str] | None = None) -> bytes:
    """The server API body of ``publish`` (``target`` a channel) or ``broadcast`` (a list of
    channels). ``data`` is encoded as ``encode_data`` does and spliced in as it is; with
    ``binary`` it goes as ``b64data``. The HTTP API, the Redis API stream and the PostgreSQL
    outbox all take this body. The HTTP API and the stream deliver JSON data byte for byte as
    written here; the outbox keeps the JSON value, not its text (its ``payload`` column is
    ``jsonb``: key order, whitespace and duplicate keys are not kept).

    Raises:
        ErrBadRequest: as ``encode_data``.
    """
    if method not in ("publish", "broadcast"):
        raise ValueError(f"api_body builds publish and broadcast bodies, not {method!r}")
    if (method == "publish") != isinstance(target, str):
        raise TypeError("publish takes one channel, broadcast a list of channels")
    raw = encode_data(data, binary=binary)
    key = b"channel" if method == "publish" else b"channels"
    parts = [b'{"', key, b'":', _json(target if isinstance(target, str) else list(target))]
    if binary:
        parts += [b',"b64data":"', base64.b64encode(raw), b'"']
    else:
        parts += [b',"data":', raw]
    if idempotency_key:
        parts += [b',"idempotency_key":', _json(idempotency_key)]
    if tags:
        parts += [b',"tags":', _json(dict(tags))]
    parts.append(b"}")
    return b"".join(parts)


BroadcastResult = list[PublishResult | ClientError]


def need_channels(channels: Sequence[str]) -> list[str]:
    """The channels of a broadcast: a list, not empty."""
    if isinstance(channels, str):
        raise TypeError("broadcast takes a list of channels")
    if not channels:
        raise codes.ErrBadRequest(message="bad request: channels is required")
    return list(channels)


# -- Redis, both doors -----------------------------------------------------------------------


def redis_client(url: str, timeout: float, *, aio: bool) -> Any:
    """A redis-py client (``redis.asyncio`` with ``aio``) that never retries on its own: a
    publish retried after a lost reply could publish twice. Callers retry themselves, with
    an idempotency key."""
    from redis.backoff import NoBackoff

    if aio:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry as AsyncRetry

        return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                       retry=AsyncRetry(NoBackoff(), 0))
    import redis
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0))


def first_address(address: str | Sequence[str]) -> str:
    """The Redis URL of the stream door: ``address`` itself, or the first of a list (the
    API stream lives on the first server of ``engine.redis.address``)."""
    if isinstance(address, str):
        return address
    addresses = list(address)
    if not addresses:
        raise ValueError("at least one Redis address is needed")
    return addresses[0]


@dataclass(frozen=True, slots=True)
class RedisCall:
    """One command: the door runs ``client.<name>(*args, **kwargs)`` and sends back the reply
    (or throws in the exception)."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pipelined:
    """Commands in one pipeline (one round trip; in ``MULTI``/``EXEC`` with ``transaction``).
    The door sends back one reply or exception per command, in order, or throws in what
    failed the whole pipeline."""

    calls: tuple[RedisCall, ...]
    transaction: bool = False


Steps = Generator[RedisCall | Pipelined, Any, T]


# -- the Redis function door -----------------------------------------------------------------


def fcall_options(prefix: str, idempotency_key: str | None, tags: Mapping[str, str] | None) -> bytes:
    options: dict[str, Any] = {"prefix": prefix}
    if idempotency_key:
        options["idempotency_key"] = idempotency_key
    if tags:
        options["tags"] = dict(tags)
    return _json(options)


def fcall_result(reply: Any) -> PublishResult:
    """``[offset, epoch]`` (``[offset, epoch, 1]`` when an earlier publish with the same
    idempotency key won: the same position, nothing published again).

    Raises:
        ErrInternal: the reply is something else.
    """
    if isinstance(reply, list | tuple) and len(reply) >= 2:
        offset, epoch = reply[0], reply[1]
        if isinstance(offset, int | bytes | str) and not isinstance(offset, bool) and isinstance(epoch, bytes | str):
            try:
                return PublishResult(int(offset), epoch.decode() if isinstance(epoch, bytes) else epoch)
            except ValueError:  # not digits, or not UTF-8
                pass
    raise unexpected(f"Redis ({FUNCTION})", reply)


#: Redis errors that say "not now" rather than "never": the door is unavailable.
_REDIS_TEMPORARY = ("LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY")
_PUBLICATION = re.compile(r"publication (\d+): ")


def _function_error(why: str) -> ClientError:
    """A livegate function's reason for refusing a publication, typed."""
    if why.startswith("unknown channel namespace"):
        return codes.ErrUnknownChannel(message=f"unknown channel: {why}")
    if why.startswith("no livegate config under prefix"):
        return codes.ErrNotAvailable(message=f"not available: {why} (is the prefix engine.redis.prefix?)")
    if why.startswith("bad config entry"):
        return codes.ErrInternal(message=f"internal server error: {why}")
    return codes.ErrBadRequest(message=f"bad request: {why}")


def fcall_error(message: str) -> ClientError | PublisherUnavailable:
    """The typed error of an error reply to ``FCALL livegate_publish`` or
    ``livegate_publish_batch`` (redis-py's message, with or without the ``ERR`` prefix; a
    batch's ``publication <i>: `` is left out of the message)."""
    text = message.removeprefix("ERR ").strip()
    if text.startswith(_REDIS_TEMPORARY):
        return PublisherUnavailable(f"redis: {text}")
    if text.startswith(("NOPERM", "NOAUTH", "WRONGPASS")):
        return codes.ErrPermissionDenied(message=f"permission denied: redis: {text}")
    if "function not found" in text.lower():
        return codes.ErrNotAvailable(message="not available: the livegate Redis functions are not loaded "
                                             "(no livegate server has started on this Redis)")
    for name in (BATCH_FUNCTION, FUNCTION):  # the longer name first: it starts with the other
        if text.startswith(f"{name}: "):
            why = text.removeprefix(f"{name}: ")
            if name == BATCH_FUNCTION and (found := _PUBLICATION.match(why)):
                why = why[found.end():]
            return _function_error(why)
    return codes.ErrInternal(message=f"internal server error: redis: {text}")


def _batch_failure(message: str, count: int) -> int | None:
    """Which publication (0-based) a ``livegate_publish_batch`` error reply names, if any."""
    text = message.removeprefix("ERR ").strip().removeprefix(f"{BATCH_FUNCTION}: ")
    found = _PUBLICATION.match(text)
    if found is None or not 1 <= int(found[1]) <= count:
        return None
    return int(found[1]) - 1


def redis_failure(exc: BaseException) -> ClientError | PublisherUnavailable:
    """The typed error of a failed Redis call (redis-py's exceptions, sync or asyncio)."""
    from redis import exceptions as rx

    if isinstance(exc, ClientError | PublisherUnavailable):
        return exc
    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError | rx.NoPermissionError):
        return codes.ErrPermissionDenied(message=f"permission denied: redis: {exc}")
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | rx.ReadOnlyError | OSError | TimeoutError):
        return PublisherUnavailable(f"redis: {exc or type(exc).__name__}")
    if isinstance(exc, rx.ResponseError):
        return fcall_error(str(exc))
    return codes.ErrInternal(message=f"internal server error: redis: {exc}")


def group_by_shard(channels: Sequence[str], shards: int) -> dict[int, list[int]]:
    """The indexes of ``channels`` each Redis server holds, by server index."""
    groups: dict[int, list[int]] = {}
    for i, channel in enumerate(channels):
        groups.setdefault(shard_index(channel, shards), []).append(i)
    return groups


ChannelOutcome = PublishResult | ClientError | PublisherUnavailable


def _outcome(reply: Any) -> ChannelOutcome:
    if isinstance(reply, BaseException):
        return redis_failure(reply)
    try:
        return fcall_result(reply)
    except ClientError as err:
        return err


def shard_broadcast(channels: Sequence[str], raw: bytes, options: bytes) -> Steps[list[ChannelOutcome]]:
    """The publications of a broadcast on one Redis server, one outcome per channel.

    First one ``FCALL livegate_publish_batch`` for all of them (one round trip, one call for
    Redis to run). A batch is all or nothing, so when it is refused the channels are sent
    again on their own, in one pipeline of ``FCALL livegate_publish``: when the refusal names
    publication i, channel i gets that error and the others are retried; any other refusal
    (e.g. a Redis whose livegate functions predate the batch) retries them all. Nothing of a
    refused batch was written, so nothing is published twice. A server that cannot be reached
    (or that times out: then the publications may have happened) is ``PublisherUnavailable``
    for each of its channels. Never raises.
    """
    count = len(channels)
    out: list[ChannelOutcome | None] = [None] * count
    try:
        reply = yield RedisCall("fcall", (BATCH_FUNCTION, count, *channels, options, *(raw, b"", b"") * count))
    except Exception as exc:
        error = redis_failure(exc)
        if isinstance(error, PublisherUnavailable):
            return [error] * count
        failed = _batch_failure(str(exc), count)
        if failed is not None:
            out[failed] = error
    else:
        if isinstance(reply, list | tuple) and len(reply) == count:
            return [_outcome(item) for item in reply]
        return [unexpected(f"Redis ({BATCH_FUNCTION})", reply)] * count
    rest = [i for i in range(count) if out[i] is None]
    if rest:
        try:
            replies = yield Pipelined(tuple(RedisCall("fcall", (FUNCTION, 1, channels[i], raw, options)) for i in rest))
        except Exception as exc:
            replies = [exc] * len(rest)
        if not isinstance(replies, list | tuple) or len(replies) != len(rest):
            replies = [unexpected("a Redis pipeline", replies)] * len(rest)
        for i, item in zip(rest, replies, strict=True):
            out[i] = _outcome(item)
    return [item for item in out if item is not None]


def merge_shards(count: int, groups: Mapping[int, Sequence[int]],
                 outcomes: Mapping[int, Sequence[ChannelOutcome]]) -> BroadcastResult:
    """Every server's outcomes (``shard_broadcast``), back in the order of the channels.

    Raises:
        PublisherUnavailable: a server could not be reached (the first one's error; every
            server was tried, so channels on the others may have been published).
    """
    out: list[ChannelOutcome | None] = [None] * count
    for shard, indexes in groups.items():
        for i, item in zip(indexes, outcomes[shard], strict=True):
            out[i] = item
    results: BroadcastResult = []
    for slot in out:
        if isinstance(slot, PublisherUnavailable):
            raise slot
        assert slot is not None
        results.append(slot)
    return results


# -- the HTTP API door -----------------------------------------------------------------------


def http_url(url: str) -> str:
    """The HTTP API's prefix, checked: ``http(s)://host[:port][/path]``, ASCII, nothing
    else (no query or fragment, no spaces). Raises ValueError saying what is wrong."""
    if not isinstance(url, str):
        raise TypeError(f"the HTTP API URL is a str, not {type(url).__name__}")
    shape = "http://host:port/api (the server API's prefix)"
    if not url.isascii() or any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" for ch in url):
        raise ValueError(f"bad HTTP API URL {url!r}: spaces, control or non-ASCII characters (percent-encode them)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        raise ValueError(f"bad HTTP API URL {url!r}: {exc}; expected {shape}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad HTTP API URL {url!r}: expected {shape}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"bad HTTP API URL {url!r}: no query or fragment, the method is appended to it")
    return url.rstrip("/")


def http_headers(api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["X-API-Key"] = api_key
    return headers


def http_error(status: int, body: bytes, url: str) -> ClientError | PublisherUnavailable:
    """The typed error of an HTTP answer other than 200."""
    text = body.decode("utf-8", "replace").strip()[:200]
    said = f": {text}" if text else ""
    if status == 401:
        return codes.ErrUnauthorized(message="unauthorized: the server API refused the API key (HTTP 401)")
    if status == 404:
        return codes.ErrMethodNotFound(
            message=f"method not found: {url} answered 404 (the URL must be the API's prefix, e.g. "
                    "http://127.0.0.1:8001/api)")
    if status == 413:
        return codes.ErrBadRequest(message=f"bad request: body larger than http_api.max_body_size (HTTP 413){said}")
    if status in (400, 415):
        return codes.ErrBadRequest(message=f"bad request: HTTP {status}{said}")
    if status >= 500:
        return PublisherUnavailable(f"{url}: HTTP {status}{said}")
    return codes.ErrInternal(message=f"internal server error: {url}: unexpected HTTP {status}{said}")


_API = "the server API"


def _reply(body: bytes) -> dict[str, Any]:
    try:
        reply = loads(body)
    except JsonTextError:
        reply = None
    if not isinstance(reply, dict):
        raise codes.ErrInternal(message="internal server error: the server API answered something else than JSON",
                                temporary=False)
    return reply


def _error_of(reply: dict[str, Any]) -> ClientError | None:
    error = reply.get("error")
    if error is None:
        return None
    if not isinstance(error, dict):
        raise unexpected(_API, reply)
    code, message = error.get("code", 100), error.get("message", "")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(message, str):
        raise unexpected(_API, reply)
    return error_for_code(code, message)


def _position(result: Any) -> PublishResult:
    if result is None:
        return PublishResult(0, "")
    if not isinstance(result, dict):
        raise unexpected(_API, result)
    offset, epoch = result.get("offset") or 0, result.get("epoch") or ""
    if not isinstance(offset, int) or isinstance(offset, bool) or not isinstance(epoch, str):
        raise unexpected(_API, result)
    return PublishResult(offset, epoch)


def http_result(body: bytes) -> PublishResult:
    """``{"result": {"offset", "epoch"}}`` (``{}`` without history) or ``{"error": ...}``.

    Raises:
        ClientError: the server's error (``ErrInternal`` for an answer that makes no sense).
    """
    reply = _reply(body)
    if (error := _error_of(reply)) is not None:
        raise error
    return _position(reply.get("result"))


def broadcast_results(body: bytes, channels: int) -> list[PublishResult | ClientError]:
    """``{"result": {"responses": [...]}}``: one result or error per channel, in order (a
    response that makes no sense is that channel's ``ErrInternal``).

    Raises:
        ClientError: the server's error for the whole broadcast; ``ErrInternal`` for an
            answer that is not one response per channel.
    """
    reply = _reply(body)
    if (error := _error_of(reply)) is not None:
        raise error
    result = reply.get("result")
    responses = result.get("responses") if isinstance(result, dict) else None
    if not isinstance(responses, list) or len(responses) != channels:
        raise codes.ErrInternal(message="internal server error: broadcast answered no response per channel",
                                temporary=False)
    out: list[PublishResult | ClientError] = []
    for item in responses:
        try:
            if not isinstance(item, dict):
                raise unexpected(_API, item)
            out.append(_error_of(item) or _position(item.get("result")))
        except ClientError as err:
            out.append(err)
    return out


# -- the Redis API stream door ---------------------------------------------------------------


def entry_result(entry_id: Any, stream_added: int | None = None) -> PublishResult:
    """The result of an ``XADD``: the entry id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    if not isinstance(text, str) or not re.fullmatch(r"\d+-\d+", text):
        raise unexpected("Redis (XADD)", entry_id)
    return PublishResult(0, "", text, stream_added)


def stream_add(stream_key: str, method: str, body: bytes) -> Steps[PublishResult]:
    """``XADD`` a command; just before it, in the same round trip, read how many entries the
    stream has had (XINFO GROUPS: the livegate group's ``entries-read`` plus its ``lag``),
    for ``wait``. (Not in a ``MULTI``: a backend whose ACL allows the XADD alone publishes
    all the same, without that reading.)

    Raises:
        ClientError: Redis refused the XADD (``ErrPermissionDenied`` for an ACL, ...).
    """
    groups, added = yield Pipelined((
        RedisCall("xinfo_groups", (stream_key,)),
        RedisCall("xadd", (stream_key, {"method": method, "payload": body})),
    ))
    if isinstance(added, BaseException):
        raise added
    before = None if isinstance(groups, BaseException) else _group_added(groups)
    # Others may have added entries between the two: one more than before is a lower bound.
    return entry_result(added, None if before is None else before + 1)


def _group_added(groups: Any) -> int | None:
    """The stream's ``entries-added`` as livegate's group sees it, when it can tell (Redis
    7.0 and later; not while entries it has not read were deleted)."""
    for group in groups if isinstance(groups, list) else ():
        if isinstance(group, dict) and group.get("name", group.get(b"name")) in (STREAM_GROUP, STREAM_GROUP.encode()):
            read, lag = group.get("entries-read", group.get(b"entries-read")), group.get("lag", group.get(b"lag"))
            if isinstance(read, int) and isinstance(lag, int):
                return read + lag
    return None


def entry_id_key(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry id (``"<ms>-<seq>"``) as a sortable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def dead_letter_error(error: str) -> ClientError:
    """The typed error of a dead letter's ``error`` field: ``"<code>: <message>"`` for a
    command that failed, or why the entry could not be run at all."""
    code, sep, message = error.partition(": ")
    if sep and code.isdigit():
        return error_for_code(int(code), message)
    if error.startswith("internal error"):
        return codes.ErrInternal(message=f"internal server error: {error}", temporary=False)
    return codes.ErrBadRequest(message=f"bad request: {error}")


def delivered(groups: Sequence[Mapping[Any, Any]], entry_id: str) -> bool:
    """Whether livegate's consumer group has read past ``entry_id`` (XINFO GROUPS)."""
    for group in groups:
        name = group.get("name", group.get(b"name"))
        if name in (STREAM_GROUP, STREAM_GROUP.encode()):
            last = group.get("last-delivered-id", group.get(b"last-delivered-id"))
            return last is not None and entry_id_key(last) >= entry_id_key(entry_id)
    return False


def dead_letter_scan_start(entry_id: str) -> str:
    """Where to look for an entry's dead letter: it was written after the entry was read, so
    after the entry's time (a minute earlier, in case the Redis clock stepped back)."""
    ms, _ = entry_id_key(entry_id)
    return f"{max(ms - 60_000, 0)}-0"


#: Entries of the dead-letter stream read per XRANGE.
DEAD_PAGE = 500


def dead_letter_page(entries: Any, entry_id: str) -> str | None:
    """Look for ``entry_id``'s dead letter in one page of ``XRANGE {prefix}.api.dead`` (at
    most ``DEAD_PAGE`` entries): raise its error if it is there; else return where the next
    page starts, or None after the last page.

    Raises:
        ClientError: the error the entry was dead-lettered with.
    """
    wanted = entry_id.encode()
    for _, fields in entries or ():
        if fields and fields.get(b"id") == wanted:
            raise dead_letter_error(fields.get(b"error", b"").decode("utf-8", "replace"))
    if not entries or len(entries) < DEAD_PAGE:
        return None
    last = entries[-1][0]
    return "(" + (last.decode() if isinstance(last, bytes) else str(last))


#: ``engine.redis.api_stream_max_length``'s default.
STREAM_MAX_LENGTH = 100_000


@dataclass(slots=True)
class EntryWatch:
    """What ``wait`` knows of one Redis API stream entry, poll after poll (``poll``).

    What the consumer leaves behind (livegate/api/stream.py): an entry is pending from its
    delivery to its acknowledgement; it is acknowledged once it succeeded, or once it was
    dead-lettered (``dead_key``, with its error); every few seconds the entries every
    consumer is done with are trimmed; and when the consumers fall behind, the oldest entries
    are cut to ``max_length`` (``engine.redis.api_stream_max_length``), read or not, without
    being run. So:

    * read, not pending, not dead-lettered and still in the stream: it ran;
    * no longer in the stream: it ran and was trimmed, or it was cut unrun. A cut keeps the
      ``max_length`` newest entries, so it can only have taken this one if ``max_length``
      entries were added after it. The stream's ``entries-added`` counter, read with the
      XADD (``PublishResult.stream_added``) or, with the stream's length, while the entry was
      still there, bounds how many were: fewer than ``max_length``, and it ran; else, or when
      there is no such reading, which it was is not known.
    """

    stream_key: str
    dead_key: str
    entry_id: str
    max_length: int = STREAM_MAX_LENGTH
    #: A lower bound of the stream's ``entries-added`` just after this entry was added
    #: (``PublishResult.stream_added``, else read when the entry is first seen).
    added_at: int | None = None

    def poll(self) -> Steps[bool]:
        """One look: False while the entry is not read yet or being worked on, True once it ran.

        Raises:
            ClientError: the entry was dead-lettered with this error.
            OutcomeUnknown: the entry is gone without a dead letter, and may have been cut unrun.
        """
        from redis.exceptions import ResponseError

        entry_id = self.entry_id
        try:
            groups = yield RedisCall("xinfo_groups", (self.stream_key,))
        except ResponseError as exc:
            if "no such key" in str(exc):
                return False
            raise
        read = delivered(groups, entry_id)
        if read and (yield RedisCall("xpending_range", (self.stream_key, STREAM_GROUP),
                                     {"min": entry_id, "max": entry_id, "count": 1})):
            return False
        if not read and self.added_at is not None:
            return False
        present, info = yield Pipelined((
            RedisCall("xrange", (self.stream_key,), {"min": entry_id, "max": entry_id, "count": 1}),
            RedisCall("xinfo_stream", (self.stream_key,)),
        ), transaction=True)
        for reply in (present, info):
            if isinstance(reply, BaseException):
                raise reply
        added = _entries_added(info)
        if present and self.added_at is None and added is not None:
            # Only the oldest entries are ever removed: every entry added after this one is
            # still there, so at most length - 1 of them.
            self.added_at = added - _length(info) + 1
        if not read:
            return False
        start: str | None = dead_letter_scan_start(entry_id)
        while start is not None:
            page = yield RedisCall("xrange", (self.dead_key,), {"min": start, "max": "+", "count": DEAD_PAGE})
            start = dead_letter_page(page, entry_id)
        if present:
            return True  # acknowledged, not dead-lettered: it ran
        if self.added_at is not None and added is not None and added - self.added_at < self.max_length:
            return True  # too few entries came after it for a cut to reach it: trimmed after it ran
        raise OutcomeUnknown(
            f"{self.stream_key} entry {entry_id} is no longer in the stream and was not dead-lettered: it ran and "
            f"was trimmed, or it was cut unrun because the stream was over {self.max_length} entries "
            "(engine.redis.api_stream_max_length); which is not known (call wait soon after publishing): publish "
            "again with the same idempotency_key")


def _entries_added(info: Any) -> int | None:
    value = info.get("entries-added", info.get(b"entries-added")) if isinstance(info, dict) else None
    return value if isinstance(value, int) else None  # None before Redis 7.0


def _length(info: Any) -> int:
    value = info.get("length", info.get(b"length")) if isinstance(info, dict) else None
    if not isinstance(value, int):
        raise unexpected("Redis (XINFO STREAM)", info)
    return value


def poll_delays(first: float = 0.005, most: float = 0.1) -> Iterator[float]:
    """How long ``wait`` sleeps between looks: doubling from ``first`` up to ``most``."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)
