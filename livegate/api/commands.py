"""The server API, written once. HTTP, the Redis API stream and the PostgreSQL outbox all
call ``execute(node, method, params)``.

Every method validates its params with the model in ``api.models`` and raises a
``ClientError`` with a stable code on failure: 100 internal (temporary: retry), 102 unknown
channel, 104 not found, 107 bad request, 108 not available, 112 unrecoverable position.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from livegate.api import models as m
from livegate.channels.broker import HistoryOptions, MapUpdateResult
from livegate.channels.names import ResolvedChannel
from livegate.errors import BrokerError, ClientError
from livegate.node import Node
from livegate.protocol import codes
from livegate.protocol.codes import (
    ErrBadRequest,
    ErrInternal,
    ErrMethodNotFound,
    ErrNotAvailable,
    ErrUnrecoverablePosition,
)
from livegate.protocol.json_codec import info_fields, publication_fields
from livegate.protocol.jsontext import MAX_DEPTH, JsonTextError, RawJson, depth_within, is_json
from livegate.protocol.jsontext import is_json as is_json_data
from livegate.protocol.types import Publication, StreamPosition, raw_json

__all__ = ["execute", "METHODS", "error_body", "validation_message", "keep_raw_data"]


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg'].lower()}")
    return "bad request: " + "; ".join(parts)


def error_body(err: ClientError) -> dict[str, Any]:
    return {"code": err.code, "message": err.message or "error"}


def _data(data: Any, b64data: str | None) -> tuple[bytes, bool]:
    """Publication data, and whether it is JSON already: ``data`` as the backend wrote it
    where the door kept the text (``RawJson``), else encoded; ``b64data`` decoded to bytes,
    which the namespace's publication_data_format then checks (Node.publish)."""
    if b64data:
        try:
            return base64.b64decode(b64data, validate=True), False
        except binascii.Error:
            raise ErrBadRequest(message="bad request: b64data is not base64") from None
    if data is None:
        raise ErrBadRequest(message="bad request: data is required")
    return _encoded(data, "data"), True


def keep_raw_data(params: dict[str, Any], spans: dict[tuple[str, ...], tuple[int, int]], text: str,
                  path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Replace ``data`` (at ``path``) in params parsed from ``text`` by its text as written,
    so that a publication passes through the door byte for byte."""
    span = spans.get((*path, "data"))
    target = params
    for key in path:
        target = target.get(key) if isinstance(target, dict) else None  # type: ignore[assignment]
    if span is not None and isinstance(target, dict) and target.get("data") is not None:
        target["data"] = RawJson(text[span[0]:span[1]].encode())
    return params


def _b64_json(value: str, name: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error:
        raw = b""
    if not raw or not is_json(raw):
        raise ErrBadRequest(message=f"bad request: {name} must be base64 of JSON (JSON protocol only)")
    return _within_depth(raw, name)


def _encoded(value: Any, name: str) -> bytes:
    """JSON bytes of a decoded value; a value too deeply nested to encode is a bad request."""
    if isinstance(value, RawJson):
        return _within_depth(bytes(value), name)
    try:
        raw = raw_json(value)
    except JsonTextError as exc:
        raise ErrBadRequest(message=f"bad request: {name}: {exc}") from None
    return _within_depth(raw, name)


def _within_depth(raw: bytes, name: str) -> bytes:
    if not depth_within(raw.decode()):
        raise ErrBadRequest(message=f"bad request: {name}: nested deeper than {MAX_DEPTH} levels")
    return raw


def _channel(node: Node, channel: str) -> ResolvedChannel:
    if not channel:
        raise ErrBadRequest(message="bad request: channel is required")
    return node.rules.resolve(channel)


async def _engine(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except BrokerError as exc:
        raise ErrInternal(message=f"internal server error: {exc}") from None


async def publish(node: Node, req: m.PublishRequest) -> dict[str, Any]:
    _channel(node, req.channel)
    data, is_json = _data(req.data, req.b64data)
    result = await _engine(node.publish(
        req.channel, data, tags=req.tags, idempotency_key=req.idempotency_key or "",
        skip_history=req.skip_history, data_is_json=is_json))
    if result.position.offset:
        return {"offset": result.position.offset, "epoch": result.position.epoch}
    return {}


async def broadcast(node: Node, req: m.BroadcastRequest) -> dict[str, Any]:
    if not req.channels:
        raise ErrBadRequest(message="bad request: channels is required")
    data, is_json = _data(req.data, req.b64data)

    async def publish_raw(channel: str) -> dict[str, Any]:
        try:
            _channel(node, channel)
            result = await _engine(node.publish(channel, data, tags=req.tags, idempotency_key=req.idempotency_key or "",
                                                skip_history=req.skip_history, data_is_json=is_json))
        except ClientError as err:
            return {"error": error_body(err)}
        pos = result.position
        return {"result": {"offset": pos.offset, "epoch": pos.epoch} if pos.offset else {}}

    return {"responses": list(await asyncio.gather(*(publish_raw(ch) for ch in req.channels)))}


def _json_or_b64(value: Any, b64: str | None, name: str) -> bytes | None:
    if b64:
        return _b64_json(b64, f"b64{name}")
    return None if value is None else _encoded(value, name)


def _subscribe_data(value: Any, b64: str | None) -> bytes | None:
    """Subscribe data: JSON, or any bytes from ``b64data`` (for Protobuf clients; a JSON
    client that gets data that is not JSON is closed with 3506)."""
    if b64:
        try:
            return base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise ErrBadRequest(message="bad request: b64data is not base64") from None
    return None if value is None else _encoded(value, "data")


async def subscribe(node: Node, req: m.SubscribeRequest) -> dict[str, Any]:
    if not req.user:
        raise ErrBadRequest(message="bad request: user is required")
    kind = _channel(node, req.channel).options.subscription_type
    if kind != "stream":
        raise ErrBadRequest(message=f"bad request: {req.channel!r} is a {kind} channel: clients subscribe to it "
                                    "themselves (server-side subscriptions are to stream channels)")
    override = req.override.model_dump(exclude_none=True) if req.override else None
    since = req.recover_since
    await _engine(node.cluster.send({
        "t": "subscribe", "user": req.user, "channel": req.channel, "client": req.client,
        "info": _json_or_b64(req.info, req.b64info, "info"), "data": _subscribe_data(req.data, req.b64data),
        "recover_since": [since.offset, since.epoch] if since else None, "override": override,
        "expire_at": req.expire_at or 0,
    }))
    return {}


async def unsubscribe(node: Node, req: m.UnsubscribeRequest) -> dict[str, Any]:
    if not req.user:
        raise ErrBadRequest(message="bad request: user is required")
    _channel(node, req.channel)
    await _engine(node.cluster.send({"t": "unsubscribe", "user": req.user, "channel": req.channel, "client": req.client}))
    return {}


async def disconnect(node: Node, req: m.DisconnectRequest) -> dict[str, Any]:
    if not req.user:
        raise ErrBadRequest(message="bad request: user is required")
    d = req.disconnect
    code, reason = (d.code, d.reason or "disconnect") if d else (codes.FORCE_DISCONNECT.code, codes.FORCE_DISCONNECT.reason)
    await _engine(node.cluster.send({"t": "disconnect", "user": req.user, "client": req.client,
                                "whitelist": req.whitelist, "code": code, "reason": reason}))
    return {}


async def refresh(node: Node, req: m.RefreshRequest) -> dict[str, Any]:
    if not req.user:
        raise ErrBadRequest(message="bad request: user is required")
    await _engine(node.cluster.send({"t": "refresh", "user": req.user, "client": req.client, "expired": req.expired,
                                "expire_at": req.expire_at, "info": None if req.info is None else _encoded(req.info, "info")}))
    return {}


def _presence_channel(node: Node, channel: str) -> None:
    if not _channel(node, channel).options.presence:
        raise ErrNotAvailable()


async def presence(node: Node, req: m.PresenceRequest) -> dict[str, Any]:
    _presence_channel(node, req.channel)
    entries = await _engine(node.presence.presence(req.channel))
    return {"presence": {cid: info_fields(info) for cid, info in entries.items()}}


async def presence_stats(node: Node, req: m.PresenceStatsRequest) -> dict[str, Any]:
    _presence_channel(node, req.channel)
    stats = await _engine(node.presence.presence_stats(req.channel))
    return {"num_clients": stats.num_clients, "num_users": stats.num_users}


async def history(node: Node, req: m.HistoryRequest) -> dict[str, Any]:
    resolved = _channel(node, req.channel)
    if not resolved.options.history_enabled:
        raise ErrNotAvailable()
    if req.reverse and req.since is not None and req.since.offset == 0:
        raise ErrBadRequest(message="bad request: reverse history needs since.offset > 0")
    since = StreamPosition(req.since.offset, req.since.epoch) if req.since is not None else None
    result = await _engine(node.history(resolved, HistoryOptions(
        limit=-1 if req.limit < 0 else req.limit, since=since, reverse=req.reverse, meta_ttl=node.meta_ttl(resolved))))
    if since is not None and since.epoch and since.epoch != result.position.epoch:
        raise ErrUnrecoverablePosition()
    return {"publications": [publication_fields(p) for p in result.publications],
            "epoch": result.position.epoch, "offset": result.position.offset}


async def history_remove(node: Node, req: m.HistoryRemoveRequest) -> dict[str, Any]:
    if not _channel(node, req.channel).options.history_enabled:
        raise ErrNotAvailable()
    await _engine(node.broker.remove_history(req.channel))
    return {}


async def channels(node: Node, req: m.ChannelsRequest) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for answer in await node.cluster.survey("channels"):
        for name, count in answer.items():
            totals[name] = totals.get(name, 0) + count
    pattern = req.pattern or ""
    return {"channels": {name: {"num_clients": n} for name, n in sorted(totals.items())
                         if n > 0 and (not pattern or fnmatch.fnmatchcase(name, pattern))}}


async def info(node: Node, req: m.InfoRequest) -> dict[str, Any]:
    return {"nodes": node.cluster.cluster_info()}


def _update_result(result: MapUpdateResult) -> dict[str, Any]:
    out: dict[str, Any] = {"offset": result.position.offset, "epoch": result.position.epoch}
    if result.suppressed:
        out["suppressed"] = True
        out["suppress_reason"] = result.reason
    if result.reason == "position_mismatch":
        current = result.current
        out["current"] = None if current is None else _map_entry(current)
    return out


def _map_entry(pub: Publication) -> dict[str, Any]:
    out = publication_fields(pub)
    out["key"] = pub.key
    if pub.time:
        out["time"] = pub.time
    return out


def _expected(position: m.StreamPositionModel | None) -> StreamPosition | None:
    return None if position is None else StreamPosition(position.offset, position.epoch)


async def map_publish(node: Node, req: m.MapPublishRequest) -> dict[str, Any]:
    _channel(node, req.channel)
    data, is_json = _data(req.data, req.b64data)
    return _update_result(await _engine(node.map_publish(
        req.channel, req.key, data, tags=req.tags, idempotency_key=req.idempotency_key or "", key_mode=req.key_mode,
        expected=_expected(req.expected_position), data_is_json=is_json,
        refresh_ttl_on_suppress=req.refresh_ttl_on_suppress)))


async def map_remove(node: Node, req: m.MapRemoveRequest) -> dict[str, Any]:
    _channel(node, req.channel)
    return _update_result(await _engine(node.map_remove(
        req.channel, req.key, idempotency_key=req.idempotency_key or "", expected=_expected(req.expected_position))))


async def map_read_state(node: Node, req: m.MapReadStateRequest) -> dict[str, Any]:
    resolved = _channel(node, req.channel)
    settings = node.map_settings(resolved)
    limit = resolved.options.map.page_size(req.limit)  # bounded: a large map is read page by page
    page = await _engine(node.broker.map_state(req.channel, settings, cursor=req.cursor, limit=limit, key=req.key))
    out: dict[str, Any] = {"entries": [_map_entry(p) for p in page.entries], "offset": page.position.offset,
                           "epoch": page.position.epoch}
    if page.cursor:
        out["cursor"] = page.cursor
    return out


async def map_read_stream(node: Node, req: m.MapReadStreamRequest) -> dict[str, Any]:
    resolved = _channel(node, req.channel)
    if not node.map_settings(resolved).stream_size:
        raise ErrNotAvailable(message="not available: this map keeps no stream (map mode ephemeral)")
    since = _expected(req.since)
    result = await _engine(node.broker.history(req.channel, HistoryOptions(
        limit=-1 if req.limit < 0 else req.limit, since=since, reverse=req.reverse)))
    if since is not None and since.epoch and since.epoch != result.position.epoch:
        raise ErrUnrecoverablePosition()
    return {"entries": [_map_entry(p) for p in result.publications], "offset": result.position.offset,
            "epoch": result.position.epoch}


async def map_stats(node: Node, req: m.MapStatsRequest) -> dict[str, Any]:
    node.map_settings(_channel(node, req.channel))
    return {"num_keys": await _engine(node.broker.map_stats(req.channel))}


async def map_clear(node: Node, req: m.MapClearRequest) -> dict[str, Any]:
    node.map_settings(_channel(node, req.channel))
    await _engine(node.map_clear(req.channel))
    return {}


async def shared_poll_publish(node: Node, req: m.SharedPollPublishRequest) -> dict[str, Any]:
    resolved = _channel(node, req.channel)
    opts = resolved.options
    if opts.subscription_type != "shared_poll":
        raise ErrBadRequest(message=f"bad request: {req.channel!r} is not a shared poll channel")
    if not opts.shared_poll.publish_enabled:
        raise ErrNotAvailable(message="not available: the namespace's shared_poll.publish_enabled is off")
    if not req.key:
        raise ErrBadRequest(message="bad request: key is required")
    if req.version == 0:
        raise ErrBadRequest(message="bad request: version must be above 0")
    data, is_json = _data(req.data, req.b64data)
    if not is_json and not is_json_data(data):
        raise ErrBadRequest(message="bad request: data must be JSON")
    await _engine(node.shared_poll_publish(req.channel, req.key, data, req.version, req.epoch))
    return {}


async def batch(node: Node, req: m.BatchRequest) -> dict[str, Any]:
    """In order, or with ``parallel`` at most ``http_api.max_batch_concurrency`` at once (replies
    in order either way). The size is bounded in ``execute``, before validation."""
    async def one(command: dict[str, Any]) -> dict[str, Any]:
        if len(command) != 1:
            return {"error": error_body(ErrBadRequest(message="bad request: a command has exactly one method"))}
        (method, params), = command.items()
        if method == "batch":
            return {"error": error_body(ErrBadRequest(message="bad request: batch inside batch"))}
        try:
            return {method: await execute(node, method, params)}
        except ClientError as err:
            return {"error": error_body(err)}

    if req.parallel:
        gate = asyncio.Semaphore(node.config.http_api.max_batch_concurrency)

        async def limited(command: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                return await one(command)

        replies = list(await asyncio.gather(*(limited(c) for c in req.commands)))
    else:
        replies = [await one(c) for c in req.commands]
    return {"replies": replies}


Method = Callable[[Node, Any], Awaitable[dict[str, Any]]]
METHODS: dict[str, Method] = {
    "publish": publish, "broadcast": broadcast, "subscribe": subscribe, "unsubscribe": unsubscribe,
    "disconnect": disconnect, "refresh": refresh, "presence": presence, "presence_stats": presence_stats,
    "history": history, "history_remove": history_remove, "channels": channels, "info": info,
    "map_publish": map_publish, "map_remove": map_remove, "map_read_state": map_read_state,
    "map_read_stream": map_read_stream, "map_stats": map_stats, "map_clear": map_clear,
    "shared_poll_publish": shared_poll_publish, "batch": batch,
}
assert METHODS.keys() == m.MODELS.keys()


async def execute(node: Node, method: str, params: Any) -> dict[str, Any]:
    """Run one API method. Raises ClientError (104 for an unknown method, 107 for bad params)."""
    handler = METHODS.get(method)
    if handler is None:
        raise ErrMethodNotFound(message="not found")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ErrBadRequest(message="bad request: params must be a JSON object")
    if method == "batch":  # bounded at every door, before validating thousands of commands
        listed, limit = params.get("commands"), node.config.http_api.max_batch_size
        if isinstance(listed, list) and len(listed) > limit:
            raise ErrBadRequest(message=f"bad request: commands: {len(listed)} commands, more than "
                                        f"http_api.max_batch_size ({limit})")
    try:
        req = m.MODELS[method].model_validate(params)
    except ValidationError as exc:
        raise ErrBadRequest(message=validation_message(exc)) from None
    return await handler(node, req)
