"""Typed client commands of protocol v2 (requests), validated with pydantic.

Unknown fields are ignored (SDKs send newer fields); a field of the wrong type is a bad
request. Types are strict: ``"5"`` is not an offset. Payloads (``data``) are opaque bytes:
a codec hands them over in their encoded form (JSON text for the JSON codec), so handlers
never depend on one codec.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Request", "ConnectRequest", "SubscribeRequest", "SubscribeOnConnect", "UnsubscribeRequest",
    "PublishRequest", "PresenceRequest", "PresenceStatsRequest", "HistoryRequest", "SincePosition",
    "RPCRequest", "SendRequest", "RefreshRequest", "SubRefreshRequest", "PingRequest", "REQUESTS",
    "PAYLOAD_FIELD",
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
    data: bytes | None = None
    subs: dict[str, SubscribeOnConnect] = Field(default_factory=dict)
    name: str = ""
    version: str = ""


class SubscribeRequest(Request):
    channel: str = ""
    token: str = ""
    data: bytes | None = None
    recover: bool = False
    offset: UInt64 = 0
    epoch: str = ""
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    delta: str = ""
    flag: int = 0
    type: Int32 = 0
    tf: Any = None
    phase: Int32 = 0    # map subscriptions: 2 state pages, 1 stream pages, 0 live
    cursor: str = ""    # map subscriptions: the next state page
    limit: Int32 = 0    # map subscriptions: page size (0: the namespace's default)


class UnsubscribeRequest(Request):
    channel: str = ""


class PublishRequest(Request):
    channel: str = ""
    data: bytes | None = None
    type: Int32 = 0      # 1: write the map entry ``key`` (or remove it)
    key: str = ""
    removed: bool = False


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
    data: bytes | None = None


class SendRequest(Request):
    data: bytes | None = None


class RefreshRequest(Request):
    token: str = ""


class KeyedItem(Request):
    key: str = ""
    version: UInt64 = 0


class TrackBatch(Request):
    signature: str = ""
    items: list[KeyedItem] = Field(default_factory=list)


class SubRefreshRequest(Request):
    channel: str = ""
    token: str = ""
    type: Int32 = 0       # shared poll: 1 track (signed batches of keys), 2 untrack
    track: list[TrackBatch] = Field(default_factory=list)
    untrack: list[str] = Field(default_factory=list)


class PingRequest(Request):
    pass


#: Every method a client may send, with the type its params are validated into.
REQUESTS: dict[str, type[Request]] = {
    "connect": ConnectRequest,
    "subscribe": SubscribeRequest,
    "unsubscribe": UnsubscribeRequest,
    "publish": PublishRequest,
    "presence": PresenceRequest,
    "presence_stats": PresenceStatsRequest,
    "history": HistoryRequest,
    "rpc": RPCRequest,
    "send": SendRequest,
    "refresh": RefreshRequest,
    "sub_refresh": SubRefreshRequest,
    "ping": PingRequest,
}

#: The opaque payload field of a request (bytes), where a method has one.
PAYLOAD_FIELD = "data"
