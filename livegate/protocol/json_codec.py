"""The JSON codec of protocol v2.

A frame holds one or more JSON objects joined by ``\\n``. Everything the server writes is
compact JSON on one line, so messages join into one frame the same way. Payloads (``data``,
``info``) are raw JSON bytes and are embedded as they are, never re-encoded.

Payloads are opaque bytes elsewhere (a Protobuf client may publish anything into a namespace
with ``publication_data_format = "binary"``), so every ``data`` is checked here before it
is embedded: bytes that are not one JSON value raise Unencodable (the connection is closed
with 3506) and are never written into a frame; raw newlines (whitespace in valid JSON) are
dropped, as the frame is newline-delimited.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from livegate.errors import ClientError
from livegate.protocol.codec import Command, FrameError, Unencodable
from livegate.protocol.codes import ErrBadRequest
from livegate.protocol.commands import PAYLOAD_FIELD, REQUESTS
from livegate.protocol.jsontext import (
    MAX_DEPTH,
    JsonTextError,
    depth_within,
    has_surrogate_escape,
    is_json,
    loads_with_spans,
)
from livegate.protocol.replies import (
    ConnectResult,
    EmptyResult,
    HistoryResult,
    PresenceResult,
    PresenceStatsResult,
    RefreshResult,
    Result,
    RPCResult,
    SubscribeResult,
)
from livegate.protocol.types import ClientInfo, Publication

__all__ = ["JsonCodec", "JSON", "publication_fields", "info_fields"]

Fragment = orjson.Fragment
_MAX_ID = (1 << 32) - 1
_PONG = Command(0, "", None)


def data_fragment(data: bytes) -> orjson.Fragment:
    """``data`` to embed as a JSON value.

    Raises:
        Unencodable: ``data`` is not one JSON value.
    """
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses some valid JSON (a lone surrogate escape); the exact parser decides.
        if not is_json(data):
            raise Unencodable("data is not JSON") from None
    if 10 in data or 13 in data:  # b"\n", b"\r" (int membership: the fastest test)
        data = data.replace(b"\r", b"").replace(b"\n", b"")
    return Fragment(data)


def info_fields(info: ClientInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"user": info.user, "client": info.client}
    if info.conn_info is not None:
        out["conn_info"] = Fragment(info.conn_info)
    if info.chan_info is not None:
        out["chan_info"] = Fragment(info.chan_info)
    return out


def publication_fields(pub: Publication) -> dict[str, Any]:
    if not pub.data and (pub.removed or pub.key):  # a map removal, or a map presence entry: no value
        return publication_fields_without_data(pub)
    return {"data": data_fragment(pub.data), **publication_fields_without_data(pub)}


def delta_publication_fields(pub: Publication, data: bytes, delta: bool) -> dict[str, Any]:
    """A publication of a delta-compressed subscription: data as a JSON string (the JSON text
    whole, or the fossil delta), ``delta`` set when it is one.

    Raises:
        Unencodable: ``data`` is not UTF-8 (a delta may cut a character: sent whole then).
    """
    if not data and (pub.removed or pub.key):  # a map removal (or presence entry): no value
        return publication_fields_without_data(pub)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise Unencodable("not UTF-8") from None
    out = publication_fields_without_data(pub)
    out["data"] = text
    if delta:
        out["delta"] = True
    return out


def publication_fields_without_data(pub: Publication) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if pub.offset:
        out["offset"] = pub.offset
    info = pub.info
    if info is not None:
        # bytes: the wire form already (as another node stored it)
        out["info"] = info_fields(info) if isinstance(info, ClientInfo) else Fragment(info)
    if pub.tags:
        out["tags"] = pub.tags
    if pub.key:
        out["key"] = pub.key
    if pub.removed:
        out["removed"] = True
    if pub.version:
        out["version"] = pub.version
    return out


def _with_expiry_and_data(r: SubscribeResult, out: dict[str, Any]) -> dict[str, Any]:
    """The fields every kind of subscribe reply (and push) ends with."""
    if r.expires:
        out["expires"] = True
        out["ttl"] = r.ttl
    if r.data is not None:
        out["data"] = data_fragment(r.data)
    return out


def _map_subscribe_fields(r: SubscribeResult) -> dict[str, Any]:
    """A map subscription's reply: every phase carries the position; pages carry entries."""
    out: dict[str, Any] = {"type": r.type, "epoch": r.epoch, "offset": r.offset}
    if r.phase:
        out["phase"] = r.phase
    if r.cursor:
        out["cursor"] = r.cursor
    # With delta compression negotiated (or about to be, in the pages before the live reply)
    # values go as JSON strings: the client keeps their exact text as delta bases.
    fields = (lambda p: delta_publication_fields(p, p.data, False)) if r.delta or r.data_as_text else publication_fields
    if r.state:
        out["state"] = [fields(p) for p in r.state]
    if r.publications:
        out["publications"] = [fields(p) for p in r.publications]
    if r.delta:
        out["delta"] = True
    if r.recoverable:
        out["recoverable"] = True
    if r.recovered:
        out["recovered"] = True
    if r.was_recovering:
        out["was_recovering"] = True
    return _with_expiry_and_data(r, out)


def _shared_poll_subscribe_fields(r: SubscribeResult) -> dict[str, Any]:
    out: dict[str, Any] = {"type": r.type}
    if r.epoch:
        out["epoch"] = r.epoch
    if r.delta:
        out["delta"] = True
    return _with_expiry_and_data(r, out)


def _subscribe_fields(r: SubscribeResult, *, push: bool = False) -> dict[str, Any]:
    if r.type == 4 and not push:
        return _shared_poll_subscribe_fields(r)
    if r.type and not push:
        return _map_subscribe_fields(r)
    out: dict[str, Any] = {}
    if r.positioned:
        out["positioned"] = True
    if r.recoverable:
        out["recoverable"] = True
    if r.positioned:
        out["epoch"] = r.epoch
        out["offset"] = r.offset
    if not push:
        if r.recovered:
            out["recovered"] = True
            if r.publications:
                out["publications"] = [delta_publication_fields(p, p.data, False) if r.delta else publication_fields(p)
                                       for p in r.publications]
        if r.was_recovering:
            out["was_recovering"] = True
        if r.delta:
            out["delta"] = True
    return _with_expiry_and_data(r, out)


def _result_fields(result: Result) -> dict[str, Any]:
    if type(result) is EmptyResult:
        return {}
    if isinstance(result, SubscribeResult):
        return _subscribe_fields(result)
    if isinstance(result, ConnectResult):
        out: dict[str, Any] = {"client": result.client, "version": result.version, "ping": result.ping,
                               "pong": result.pong}
        if result.expires:
            out["expires"] = True
            out["ttl"] = result.ttl
        if result.data is not None:
            out["data"] = data_fragment(result.data)
        if result.subs is not None:
            out["subs"] = {ch: _subscribe_fields(r) for ch, r in result.subs.items()}
        if result.session:
            out["session"] = result.session
            out["node"] = result.node
        return out
    if isinstance(result, HistoryResult):
        return {"publications": [publication_fields(p) for p in result.publications],
                "epoch": result.epoch, "offset": result.offset}
    if isinstance(result, PresenceResult):
        return {"presence": {cid: info_fields(info) for cid, info in result.presence.items()}}
    if isinstance(result, PresenceStatsResult):
        return {"num_clients": result.num_clients, "num_users": result.num_users}
    if isinstance(result, RPCResult):
        return {} if result.data is None else {"data": data_fragment(result.data)}
    if isinstance(result, RefreshResult):
        out = {"expires": True, "ttl": result.ttl} if result.expires else {}
        if result.items:
            out["items"] = [publication_fields(p) for p in result.items]
        return out
    raise TypeError(f"not a result: {result!r}")


class JsonCodec:
    """Protocol v2 as newline-delimited JSON in text frames."""

    name = "json"
    binary = False
    ping = b"{}"
    json_payloads = True

    def decode_frame(self, frame: bytes | str) -> list[Command]:
        """Raises FrameError when the frame is empty, a line is not a JSON object, a command
        has no known method or more than one, or ``id`` is not a uint32. A command whose
        params do not validate comes back with ``request=None`` and the problem."""
        commands: list[Command] = []
        lines: list[str] | list[bytes] = frame.split("\n") if isinstance(frame, str) else frame.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            text: str | None = None
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if exc.msg.startswith(("depth", "recursion")):
                    raise FrameError(f"invalid JSON: {exc.msg}") from None
                # Valid JSON orjson refuses (a lone surrogate escape, e.g. from a string cut in
                # the middle of an emoji) is parsed by the standard library instead.
                try:
                    obj, _, text = loads_with_spans(line)
                except JsonTextError as err:
                    raise FrameError(f"invalid JSON: {err}") from None
            if not isinstance(obj, dict):
                raise FrameError("a command must be a JSON object")
            commands.append(_command(obj, line, text))
        if not commands:
            raise FrameError("empty frame")
        return commands

    def encode_reply(self, cid: int, method: str, result: Result) -> bytes:
        return orjson.dumps({"id": cid, method: _result_fields(result)})

    def encode_error(self, cid: int, err: ClientError) -> bytes:
        body: dict[str, Any] = {"code": err.code, "message": err.message or "error"}
        if err.temporary:
            body["temporary"] = True
        return orjson.dumps({"id": cid, "error": body})

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        return orjson.dumps({"push": {"channel": channel, "pub": publication_fields(pub)}})

    def encode_publication_delta(self, channel: str, pub: Publication, data: bytes, delta: bool) -> bytes:
        return orjson.dumps({"push": {"channel": channel, "pub": delta_publication_fields(pub, data, delta)}})

    def encode_join(self, channel: str, info: ClientInfo) -> bytes:
        return orjson.dumps({"push": {"channel": channel, "join": {"info": info_fields(info)}}})

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes:
        return orjson.dumps({"push": {"channel": channel, "leave": {"info": info_fields(info)}}})

    def encode_unsubscribe(self, channel: str, code: int, reason: str) -> bytes:
        return orjson.dumps({"push": {"channel": channel, "unsubscribe": {"code": code,
                                                                          "reason": reason or "unsubscribed"}}})

    def encode_subscribe(self, channel: str, result: SubscribeResult) -> bytes:
        return orjson.dumps({"push": {"channel": channel, "subscribe": _subscribe_fields(result, push=True)}})

    def encode_message(self, data: bytes) -> bytes:
        return orjson.dumps({"push": {"message": {"data": data_fragment(data)}}})

    def encode_disconnect(self, code: int, reason: str) -> bytes:
        return orjson.dumps({"push": {"disconnect": {"code": code, "reason": reason}}})

    def join(self, messages: Sequence[bytes]) -> bytes:
        return messages[0] if len(messages) == 1 else b"\n".join(messages)


def _command(obj: dict[str, Any], line: str | bytes, text: str | None) -> Command:
    cid = obj.pop("id", 0)
    if cid is None:
        cid = 0
    if type(cid) is not int or not 0 <= cid <= _MAX_ID:
        raise FrameError("id must be an unsigned 32-bit integer")
    methods = [key for key in obj if key in REQUESTS]
    if not methods:
        if not obj and cid == 0:
            return _PONG
        raise FrameError("command has no known method")
    if len(methods) > 1:
        raise FrameError("command has more than one method")
    method = methods[0]
    params = obj[method]
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise FrameError(f"{method}: request must be a JSON object")
    if cid == 0 and method != "send":
        raise FrameError(f"{method}: command needs an id")
    request_type = REQUESTS[method]
    if PAYLOAD_FIELD in request_type.model_fields and params.get(PAYLOAD_FIELD) is not None:
        # The payload travels as its sender wrote it: cut out of the command's text.
        if text is None:
            _, spans, text = loads_with_spans(line)
        else:
            spans = loads_with_spans(text)[1]
        start, end = spans[(method, PAYLOAD_FIELD)]
        if not depth_within(text[start:end]):
            return Command(cid, method, None, error=ErrBadRequest(
                message=f"bad request: {method}.data: nested deeper than {MAX_DEPTH} levels"))
        params[PAYLOAD_FIELD] = text[start:end].encode()
        if has_surrogate_escape(text, 0, start) or has_surrogate_escape(text, end):
            return _unicode_problem(cid, method)
    elif text is not None and has_surrogate_escape(text):
        return _unicode_problem(cid, method)
    try:
        return Command(cid, method, request_type.model_validate(params))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or method
        return Command(cid, method, None, f"{method}.{where}: {first['msg']}")


def _unicode_problem(cid: int, method: str) -> Command:
    """A lone surrogate may stand in a payload (it is passed on as written), not in a channel
    name, a token or anything else the server reads."""
    return Command(cid, method, None, error=ErrBadRequest(
        message=f"bad request: {method}: a \\u escape of a lone surrogate outside data"))


#: The one JSON codec instance every JSON connection shares.
JSON = JsonCodec()
