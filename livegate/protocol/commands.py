"""Typed client commands of protocol v2 (requests), validated with pydantic.

Unknown fields are ignored (SDKs send newer fields); a field of the wrong type is a bad
request. Types are strict: ``"5"`` is not an offset.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Request", "ConnectRequest", "SubscribeRequest", "SubscribeOnConnect", "UnsubscribeRequest",
    "PublishRequest", "PresenceRequest", "PresenceStatsRequest", "HistoryRequest", "SincePosition",
    "RPCRequest", "SendRequest", "RefreshRequest", "SubRefreshRequest", "PingRequest",
]

UInt64 = Annotated[int, Field(ge=0, lt=1 << 64)]
Int32 = Annotated[int, Field(ge=-(1 << 31), lt=1 << 31)]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class SubscribeOnConnect(Request):
    recover: bool = False
    offset: UInt64 = 0
    epoch: str = ""


class ConnectRequest(Request):
    token: str = ""
    data: Any = None
    subs: dict[str, SubscribeOnConnect] = Field(default_factory=dict)
    name: str = ""
    version: str = ""


class SubscribeRequest(Request):
    channel: str = ""
    token: str = ""
    data: Any = None
    recover: bool = False
    offset: UInt64 = 0
    epoch: str = ""
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    delta: str = ""
    flag: int = 0
    type: int = 0
    tf: Any = None


class UnsubscribeRequest(Request):
    channel: str = ""


class PublishRequest(Request):
    channel: str = ""
    data: Any = None


class PresenceRequest(Request):
    channel: str = ""


class PresenceStatsRequest(Request):
    channel: str = ""


class SincePosition(Request):
    offset: UInt64 = 0
    epoch: str = ""


class HistoryRequest(Request):
    channel: str = ""
    limit: Int32 = 0
    since: SincePosition | None = None
    reverse: bool = False


class RPCRequest(Request):
    method: str = ""
    data: Any = None


class SendRequest(Request):
    data: Any = None


class RefreshRequest(Request):
    token: str = ""


class SubRefreshRequest(Request):
    channel: str = ""
    token: str = ""


class PingRequest(Request):
    pass
