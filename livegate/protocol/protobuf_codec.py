"""The Protobuf codec of protocol v2: what the mobile SDKs (Swift, Kotlin/Java, Dart, C#) speak,
and centrifuge-js / centrifuge-python in Protobuf mode.

A frame (binary) holds one or more messages, each prefixed with its length as a varint:
``Command`` messages from the client, ``Reply`` messages from the server. Several replies and
pushes join into one frame by concatenation. The server's ping is an empty ``Reply`` (one
zero byte) and the client's pong an empty ``Command``.

Inbound commands are parsed with the code generated from ``proto/client.proto`` (upb), then
validated into the same typed requests the JSON codec produces. Outbound messages are
written here field by field: the messages are few and flat, and building them through the
generated classes costs about ten times more per publication than writing the bytes, which
matters on the fan-out path. ``tests/unit/test_protobuf_codec.py`` parses everything this
writes with the generated classes (ours and the SDK's) to keep the two in step.

Payloads (``data``) are opaque bytes both ways: JSON text from a JSON publisher arrives as
its bytes; bytes from a Protobuf client are passed on as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.message import DecodeError
from pydantic import ValidationError

from livegate.errors import ClientError
from livegate.protocol.codec import Command, FrameError
from livegate.protocol.commands import REQUESTS
from livegate.protocol.proto import client_pb2 as pb
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

__all__ = ["ProtobufCodec", "PROTOBUF", "varint", "read_varint"]

_PONG = Command(0, "", None)
_MAX_VARINT = 10  # bytes of a 64-bit varint

# -- writing -------------------------------------------------------------------------------

_SMALL = [bytes((n,)) for n in range(128)]


def varint(n: int) -> bytes:
    """The base-128 varint of a non-negative integer."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


# Field keys by number: varint (wire type 0) and length-delimited (wire type 2) fields.
_V = [_key(n, 0) for n in range(20)]
_L = [_key(n, 2) for n in range(20)]
_TRUE = b"\x01"


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (a JSON \\ud800 escape): never valid UTF-8 on the wire
        return text.encode(errors="replace")


def _ld(field: int, value: bytes) -> bytes:
    """A length-delimited field: bytes, or an embedded message (written even when empty)."""
    return _L[field] + varint(len(value)) + value


def _blob(field: int, value: bytes | None) -> bytes:
    """A bytes field; empty or None is left out (proto3)."""
    return _L[field] + varint(len(value)) + value if value else b""


def _text(field: int, value: str) -> bytes:
    return _ld(field, _utf8(value)) if value else b""


def _uint(field: int, value: int) -> bytes:
    return _V[field] + varint(value) if value else b""


def _flag(field: int, value: bool) -> bytes:
    return _V[field] + _TRUE if value else b""


def _info(info: ClientInfo | bytes) -> bytes:
    if isinstance(info, bytes):  # another node's wire form (JSON)
        info = ClientInfo.from_json(info)
    return _text(1, info.user) + _text(2, info.client) + _blob(3, info.conn_info) + _blob(4, info.chan_info)


def _publication(pub: Publication, data: bytes | None = None, delta: bool = False) -> bytes:
    """``data``/``delta``: for a delta-compressed subscription (see Codec.encode_publication_delta)."""
    if data is None:
        data = pub.data
    body = _L[4] + varint(len(data)) + data if data else b""
    if pub.info is not None:
        body += _ld(5, _info(pub.info))
    if pub.offset:
        body += _V[6] + varint(pub.offset)
    if pub.tags:
        body += b"".join(_ld(7, _text(1, k) + _text(2, v)) for k, v in pub.tags.items())
    if delta:
        body += _flag(8, True)
    if pub.key:
        body += _text(11, pub.key)
    if pub.removed:
        body += _flag(12, True)
    if pub.version:
        body += _V[16] + varint(pub.version)
    return body


def _map_subscribe_result(r: SubscribeResult) -> bytes:
    return b"".join((
        _flag(1, r.expires), _uint(2, r.ttl if r.expires else 0), _flag(3, r.recoverable), _text(6, r.epoch),
        b"".join(_ld(7, _publication(p)) for p in r.publications), _flag(8, r.recovered), _uint(9, r.offset),
        _blob(11, r.data), _flag(12, r.was_recovering), _flag(13, r.delta), _uint(15, r.type), _uint(16, r.phase),
        _text(17, r.cursor), b"".join(_ld(18, _publication(p)) for p in r.state or ()),
    ))


def _subscribe_result(r: SubscribeResult) -> bytes:
    if r.type:
        return _map_subscribe_result(r)
    positioned = r.positioned
    pubs = b"".join(_ld(7, _publication(p)) for p in r.publications) if r.recovered else b""
    return b"".join((
        _flag(1, r.expires), _uint(2, r.ttl if r.expires else 0), _flag(3, r.recoverable),
        _text(6, r.epoch) if positioned else b"", pubs, _flag(8, r.recovered),
        _uint(9, r.offset) if positioned else b"", _flag(10, positioned), _blob(11, r.data),
        _flag(12, r.was_recovering), _flag(13, r.delta),
    ))


def _subscribe_push(r: SubscribeResult) -> bytes:
    positioned = r.positioned
    return b"".join((
        _flag(1, r.recoverable), _text(4, r.epoch) if positioned else b"",
        _uint(5, r.offset) if positioned else b"", _flag(6, positioned), _blob(7, r.data),
    ))


def _connect_result(r: ConnectResult) -> bytes:
    subs = b"".join(_ld(6, _text(1, ch) + _ld(2, _subscribe_result(sub))) for ch, sub in (r.subs or {}).items())
    return b"".join((
        _text(1, r.client), _text(2, r.version), _flag(3, r.expires), _uint(4, r.ttl if r.expires else 0),
        _blob(5, r.data), subs, _uint(7, r.ping), _flag(8, r.pong), _text(9, r.session), _text(10, r.node),
    ))


def _history_result(r: HistoryResult) -> bytes:
    return b"".join(_ld(1, _publication(p)) for p in r.publications) + _text(2, r.epoch) + _uint(3, r.offset)


def _presence_result(r: PresenceResult) -> bytes:
    return b"".join(_ld(1, _text(1, client) + _ld(2, _info(info))) for client, info in r.presence.items())


# Reply field numbers of each method's result.
_RESULT_FIELD = {
    "connect": 5, "subscribe": 6, "unsubscribe": 7, "publish": 8, "presence": 9, "presence_stats": 10,
    "history": 11, "ping": 12, "rpc": 13, "refresh": 14, "sub_refresh": 15,
}


def _result_body(method: str, result: Result) -> bytes:
    if type(result) is EmptyResult:
        return b""
    if isinstance(result, SubscribeResult):
        return _subscribe_result(result)
    if isinstance(result, ConnectResult):
        return _connect_result(result)
    if isinstance(result, HistoryResult):
        return _history_result(result)
    if isinstance(result, PresenceResult):
        return _presence_result(result)
    if isinstance(result, PresenceStatsResult):
        return _uint(1, result.num_clients) + _uint(2, result.num_users)
    if isinstance(result, RPCResult):
        return _blob(1, result.data)
    if isinstance(result, RefreshResult):
        ttl = result.ttl if result.expires else 0
        if method == "refresh":  # RefreshResult: client 1, version 2, expires 3, ttl 4
            return _flag(3, result.expires) + _uint(4, ttl)
        items = b"".join(_ld(3, _publication(p)) for p in result.items or ())
        return _flag(1, result.expires) + _uint(2, ttl) + items  # SubRefreshResult
    raise TypeError(f"not a result: {result!r}")


def _delimited(message: bytes) -> bytes:
    return varint(len(message)) + message


def _push(channel: str, field: int, body: bytes) -> bytes:
    """A Reply holding one Push (Reply.push = 4; Push.channel = 2), length-prefixed."""
    push = _text(2, channel) + _L[field] + varint(len(body)) + body
    return _delimited(_L[4] + varint(len(push)) + push)


# -- reading -------------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``buf[pos:]`` and the position after it.

    Raises:
        FrameError: the varint runs past the end of ``buf`` or past 10 bytes.
    """
    result = shift = 0
    end = min(len(buf), pos + _MAX_VARINT)
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise FrameError("malformed length prefix (varint)")


def _data(value: bytes) -> bytes | None:
    return value or None  # proto3 cannot tell empty from absent: both are "no data"


def _position(m: Any) -> dict[str, Any]:
    return {"offset": m.offset, "epoch": m.epoch}


def _connect(m: Any) -> dict[str, Any]:
    subs = {ch: {"recover": s.recover, **_position(s)} for ch, s in m.subs.items()}
    return {"token": m.token, "data": _data(m.data), "subs": subs, "name": m.name, "version": m.version}


def _subscribe(m: Any) -> dict[str, Any]:
    return {"channel": m.channel, "token": m.token, "data": _data(m.data), "recover": m.recover, **_position(m),
            "positioned": m.positioned, "recoverable": m.recoverable, "join_leave": m.join_leave,
            "delta": m.delta, "flag": m.flag, "type": m.type, "phase": m.phase, "cursor": m.cursor, "limit": m.limit,
            "tf": _filter_node(m.tf) if m.HasField("tf") else None}


def _filter_node(m: Any) -> dict[str, Any]:
    """A FilterNode as the JSON codec would have it (livegate.channels.tags_filter checks it)."""
    return {"op": m.op, "key": m.key, "cmp": m.cmp, "val": m.val, "vals": list(m.vals),
            "nodes": [_filter_node(n) for n in m.nodes]}


def _history(m: Any) -> dict[str, Any]:
    return {"channel": m.channel, "limit": m.limit, "reverse": m.reverse,
            "since": _position(m.since) if m.HasField("since") else None}


_PARAMS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "connect": _connect,
    "subscribe": _subscribe,
    "unsubscribe": lambda m: {"channel": m.channel},
    "publish": lambda m: {"channel": m.channel, "data": _data(m.data), "type": m.type, "key": m.key,
                          "removed": m.removed},
    "presence": lambda m: {"channel": m.channel},
    "presence_stats": lambda m: {"channel": m.channel},
    "history": _history,
    "rpc": lambda m: {"method": m.method, "data": _data(m.data)},
    "send": lambda m: {"data": _data(m.data)},
    "refresh": lambda m: {"token": m.token},
    "sub_refresh": lambda m: {"channel": m.channel, "token": m.token, "type": m.type, "untrack": list(m.untrack),
                              "track": [{"signature": b.signature,
                                         "items": [{"key": i.key, "version": i.version} for i in b.items]}
                                        for b in m.track]},
    "ping": lambda m: {},
}


def _command(body: bytes) -> Command:
    try:
        msg = pb.Command.FromString(body)
    except DecodeError as exc:
        raise FrameError(f"malformed Command message: {exc}") from None
    cid = msg.id
    methods = [(fd.name, value) for fd, value in msg.ListFields() if fd.name != "id"]
    if not methods:
        if cid == 0:
            return _PONG
        raise FrameError("command has no known method")
    if len(methods) > 1:
        raise FrameError("command has more than one method")
    method, params = methods[0]
    if cid == 0 and method != "send":
        raise FrameError(f"{method}: command needs an id")
    try:
        return Command(cid, method, REQUESTS[method].model_validate(_PARAMS[method](params)))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or method
        return Command(cid, method, None, f"{method}.{where}: {first['msg']}")


class ProtobufCodec:
    """Protocol v2 as varint-delimited Protobuf messages in binary frames."""

    name = "protobuf"
    binary = True
    ping = b"\x00"  # an empty Reply
    json_payloads = False

    def decode_frame(self, frame: bytes | str) -> list[Command]:
        """Raises FrameError for a text frame, an empty frame, a malformed length prefix, a
        length past the end of the frame, a message that does not parse as ``Command`` (a
        truncated one included), or a command without exactly one method."""
        if isinstance(frame, str):
            raise FrameError("text frame on a Protobuf connection")
        if not frame:
            raise FrameError("empty frame")
        commands: list[Command] = []
        pos, size = 0, len(frame)
        while pos < size:
            length, pos = read_varint(frame, pos)
            end = pos + length
            if end > size:
                raise FrameError(f"message length {length} runs past the end of the frame")
            commands.append(_command(frame[pos:end]))
            pos = end
        return commands

    def encode_reply(self, cid: int, method: str, result: Result) -> bytes:
        return _delimited(_uint(1, cid) + _ld(_RESULT_FIELD[method], _result_body(method, result)))

    def encode_error(self, cid: int, err: ClientError) -> bytes:
        error = _uint(1, err.code) + _text(2, err.message or "error") + _flag(3, err.temporary)
        return _delimited(_uint(1, cid) + _ld(2, error))

    def encode_publication(self, channel: str, pub: Publication) -> bytes:
        return _push(channel, 4, _publication(pub))

    def encode_publication_delta(self, channel: str, pub: Publication, data: bytes, delta: bool) -> bytes:
        return _push(channel, 4, _publication(pub, data, delta))

    def encode_join(self, channel: str, info: ClientInfo) -> bytes:
        return _push(channel, 5, _ld(1, _info(info)))

    def encode_leave(self, channel: str, info: ClientInfo) -> bytes:
        return _push(channel, 6, _ld(1, _info(info)))

    def encode_unsubscribe(self, channel: str, code: int, reason: str) -> bytes:
        return _push(channel, 7, _uint(2, code) + _text(3, reason or "unsubscribed"))

    def encode_subscribe(self, channel: str, result: SubscribeResult) -> bytes:
        return _push(channel, 9, _subscribe_push(result))

    def encode_message(self, data: bytes) -> bytes:
        return _push("", 8, _blob(1, data))

    def encode_disconnect(self, code: int, reason: str) -> bytes:
        return _push("", 11, _uint(1, code) + _text(2, reason))

    def join(self, messages: Sequence[bytes]) -> bytes:
        return messages[0] if len(messages) == 1 else b"".join(messages)


#: The one Protobuf codec instance every Protobuf connection shares.
PROTOBUF = ProtobufCodec()
