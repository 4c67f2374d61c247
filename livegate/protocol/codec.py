"""JSON codec of protocol v2: split frames into commands, encode replies and pushes.

A frame holds one or more JSON objects joined by ``\\n``. Everything the server writes is
compact JSON on one line, so messages can be joined into one frame the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from livegate.errors import ClientError
from livegate.protocol.types import ClientInfo, Fragment, Publication

__all__ = [
    "METHODS", "Command", "FrameError", "decode_frame",
    "encode_reply", "encode_error", "encode_push", "encode_pub_push", "encode_join_push", "encode_leave_push",
    "encode_unsubscribe_push", "encode_subscribe_push", "encode_message_push", "PING",
]

#: Every method a client may send, in protocol v2.
METHODS = frozenset({
    "connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats",
    "history", "ping", "send", "rpc", "refresh", "sub_refresh",
})

#: The server ping (and the client's pong) is an empty object.
PING = b"{}"

_MAX_ID = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class Command:
    """One decoded command: ``method`` is ``""`` for a pong (the empty object)."""

    id: int
    method: str
    params: dict[str, Any]


class FrameError(Exception):
    """The frame is not valid protocol: the connection is closed with 3501 bad request."""


def decode_frame(frame: str | bytes) -> list[Command]:
    """Split a text frame into commands, in order.

    Raises:
        FrameError: the frame is empty, a line is not a JSON object, a command has no
            known method or more than one, or ``id`` is not a uint32.
    """
    commands: list[Command] = []
    lines = frame.split("\n" if isinstance(frame, str) else b"\n")
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise FrameError(f"invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise FrameError("a command must be a JSON object")
        commands.append(_command(obj))
    if not commands:
        raise FrameError("empty frame")
    return commands


def _command(obj: dict[str, Any]) -> Command:
    cid = obj.pop("id", 0)
    if cid is None:
        cid = 0
    if type(cid) is not int or not 0 <= cid <= _MAX_ID:
        raise FrameError("id must be an unsigned 32-bit integer")
    methods = [key for key in obj if key in METHODS]
    if not methods:
        if not obj and cid == 0:
            return Command(0, "", {})  # pong
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
    return Command(cid, method, params)


def encode_reply(cid: int, method: str, result: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": cid, method: result})


def encode_error(cid: int, err: ClientError) -> bytes:
    body: dict[str, Any] = {"code": err.code, "message": err.message or "error"}
    if err.temporary:
        body["temporary"] = True
    return orjson.dumps({"id": cid, "error": body})


def _push(channel: str, kind: str, body: Any) -> bytes:
    return orjson.dumps({"push": {"channel": channel, kind: body}})


def encode_push(channel: str, kind: str, body: Any) -> bytes:
    return _push(channel, kind, body)


def encode_pub_push(channel: str, pub: Publication) -> bytes:
    return _push(channel, "pub", pub.to_wire())


def encode_join_push(channel: str, info: ClientInfo) -> bytes:
    return _push(channel, "join", {"info": info.to_wire()})


def encode_leave_push(channel: str, info: ClientInfo) -> bytes:
    return _push(channel, "leave", {"info": info.to_wire()})


def encode_unsubscribe_push(channel: str, code: int, reason: str) -> bytes:
    return _push(channel, "unsubscribe", {"code": code, "reason": reason or "unsubscribed"})


def encode_subscribe_push(channel: str, body: dict[str, Any]) -> bytes:
    return _push(channel, "subscribe", body)


def encode_message_push(data: bytes) -> bytes:
    return orjson.dumps({"push": {"message": {"data": Fragment(data)}}})
