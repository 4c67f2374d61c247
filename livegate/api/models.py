"""Requests of the server API (Centrifugo v5/v6 format, as the `cent` client sends them).

One pydantic model per method: they validate every door (HTTP, the Redis API stream, the
PostgreSQL outbox) and generate the OpenAPI document, so the three cannot drift apart.
Unknown fields are ignored, as Centrifugo does; a wrong type is an error naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MODELS", "ApiRequest", "BatchRequest"]

UInt64 = Annotated[int, Field(ge=0, lt=1 << 64)]
Int64 = Annotated[int, Field(ge=-(1 << 63), lt=1 << 63)]


class ApiRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamPositionModel(ApiRequest):
    offset: UInt64 = 0
    epoch: str = ""


class BoolValue(ApiRequest):
    value: bool


class SubscribeOptionOverride(ApiRequest):
    presence: BoolValue | None = None
    join_leave: BoolValue | None = None
    force_push_join_leave: BoolValue | None = None
    force_positioning: BoolValue | None = None
    force_recovery: BoolValue | None = None


class DisconnectModel(ApiRequest):
    code: Annotated[int, Field(ge=3000, le=4999)]
    reason: Annotated[str, Field(max_length=123)] = ""


class PublishRequest(ApiRequest):
    channel: str = Field(description="channel to publish into")
    data: Any = Field(default=None, description="publication data (any JSON)")
    b64data: str | None = None
    skip_history: bool = False
    tags: dict[str, str] | None = None
    idempotency_key: str | None = None


class BroadcastRequest(ApiRequest):
    channels: list[str]
    data: Any = None
    b64data: str | None = None
    skip_history: bool = False
    tags: dict[str, str] | None = None
    idempotency_key: str | None = None


class SubscribeRequest(ApiRequest):
    user: str
    channel: str
    info: Any = None
    b64info: str | None = None
    client: str | None = None
    session: str | None = None
    data: Any = None
    b64data: str | None = None
    recover_since: StreamPositionModel | None = None
    override: SubscribeOptionOverride | None = None
    expire_at: UInt64 | None = None


class UnsubscribeRequest(ApiRequest):
    user: str
    channel: str
    client: str | None = None
    session: str | None = None


class DisconnectRequest(ApiRequest):
    user: str
    client: str | None = None
    session: str | None = None
    whitelist: list[str] | None = None
    disconnect: DisconnectModel | None = None


class RefreshRequest(ApiRequest):
    user: str
    client: str | None = None
    session: str | None = None
    expired: bool = False
    expire_at: UInt64 | None = None
    info: Any = None


class PresenceRequest(ApiRequest):
    channel: str


class PresenceStatsRequest(ApiRequest):
    channel: str


class HistoryRequest(ApiRequest):
    channel: str
    limit: Int64 = 0
    since: StreamPositionModel | None = None
    reverse: bool = False


class HistoryRemoveRequest(ApiRequest):
    channel: str


class ChannelsRequest(ApiRequest):
    pattern: str | None = None


class InfoRequest(ApiRequest):
    pass


class MapPublishRequest(ApiRequest):
    channel: str = Field(description="map channel (a namespace with subscription_type = \"map\")")
    key: str = Field(description="the entry's key")
    data: Any = Field(default=None, description="the entry's value (any JSON)")
    b64data: str | None = None
    tags: dict[str, str] | None = None
    idempotency_key: str | None = None
    key_mode: str = ""  # "", "if_new", "if_exists"
    expected_position: StreamPositionModel | None = None  # compare-and-set
    refresh_ttl_on_suppress: bool = False


class MapRemoveRequest(ApiRequest):
    channel: str
    key: str
    idempotency_key: str | None = None
    expected_position: StreamPositionModel | None = None


class MapReadStateRequest(ApiRequest):
    channel: str
    cursor: str = ""
    limit: Int64 = 0
    key: str = ""


class MapReadStreamRequest(ApiRequest):
    channel: str
    since: StreamPositionModel | None = None
    limit: Int64 = 0
    reverse: bool = False


class MapStatsRequest(ApiRequest):
    channel: str


class MapClearRequest(ApiRequest):
    channel: str


class SharedPollPublishRequest(ApiRequest):
    channel: str
    key: str
    data: Any = None
    b64data: str | None = None
    version: UInt64 = 0
    epoch: str = ""


class BatchRequest(ApiRequest):
    commands: list[dict[str, Any]]
    parallel: bool = False


MODELS: dict[str, type[ApiRequest]] = {
    "publish": PublishRequest,
    "broadcast": BroadcastRequest,
    "subscribe": SubscribeRequest,
    "unsubscribe": UnsubscribeRequest,
    "disconnect": DisconnectRequest,
    "refresh": RefreshRequest,
    "presence": PresenceRequest,
    "presence_stats": PresenceStatsRequest,
    "history": HistoryRequest,
    "history_remove": HistoryRemoveRequest,
    "channels": ChannelsRequest,
    "info": InfoRequest,
    "map_publish": MapPublishRequest,
    "map_remove": MapRemoveRequest,
    "map_read_state": MapReadStateRequest,
    "map_read_stream": MapReadStreamRequest,
    "map_stats": MapStatsRequest,
    "map_clear": MapClearRequest,
    "shared_poll_publish": SharedPollPublishRequest,
    "batch": BatchRequest,
}
