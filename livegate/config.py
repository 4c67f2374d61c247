"""Configuration: pydantic models for config.toml, with LIVEGATE_<PATH> environment overrides.

Key names follow Centrifugo v6 where the concept is the same. Every key has a default; an
unknown key, a wrong type or an impossible combination raises ``ConfigError`` naming the key.
Durations are strings ("25s", "5m", "720h", "1h30m", "250ms") or numbers of seconds.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from livegate.errors import ConfigError

__all__ = [
    "Config", "ChannelOptions", "Namespace", "load_config", "parse_config", "parse_duration", "ENV_PREFIX",
]

ENV_PREFIX = "LIVEGATE_"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: Any) -> float:
    """Seconds from ``"25s"``, ``"1h30m"``, ``"250ms"``, ``"0"`` or a number."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a string like '25s' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text in ("0", ""):
            return 0.0
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or pos == 0:
            raise ValueError(f"invalid duration {value!r} (use e.g. '25s', '5m', '720h', '1h30m', '250ms')")
    else:
        raise ValueError("a duration must be a string like '25s' or a number of seconds")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be finite")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(s|m|h)")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: Any) -> float:
    """Events per second from ``"100/s"``, ``"600/m"``, ``"5000/h"``, ``"0"`` or a number (per second)."""
    if isinstance(value, bool):
        raise ValueError("a rate must be a string like '100/s' or a number per second")
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str):
        text = value.strip()
        match = _RATE.fullmatch(text)
        if match is not None:
            rate = float(match.group(1)) / _RATE_UNITS[match.group(2)]
        else:
            try:
                rate = float(text)
            except ValueError:
                raise ValueError(f"invalid rate {value!r} (use e.g. '100/s', '600/m', '5000/h', or 0 for no limit)") from None
    else:
        raise ValueError("a rate must be a string like '100/s' or a number per second")
    if not math.isfinite(rate) or rate < 0:
        raise ValueError("a rate must be a finite number >= 0")
    return rate


Rate = Annotated[float, BeforeValidator(parse_rate)]
NonNegInt = Annotated[int, Field(ge=0)]
PosInt = Annotated[int, Field(gt=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class HttpServer(_Section):
    address: str = "127.0.0.1"
    port: Port = 8000
    workers: PosInt = 1
    shutdown_drain: Duration = 2.0  # livegate: window over which clients are closed on SIGTERM
    demo: bool = False  # livegate: the demo chat page at / and its token endpoint (never in production)


class WebSocket(_Section):
    handler_prefix: str = "/connection/websocket"
    message_size_limit: PosInt = 65536
    compression: bool = False  # permessage-deflate for what clients send; the server's frames stay uncompressed
    write_timeout: Duration = 1.0  # livegate: how long a closing slow connection may take before it is aborted
    disabled: bool = False  # Centrifugo's websocket.disabled: no WebSocket handler (HTTP fallbacks only)


class StreamTransport(_Section):
    """An HTTP fallback transport (Centrifugo's http_stream, sse, uni_http_stream, uni_sse)."""

    enabled: bool = False
    handler_prefix: str = "/connection/http_stream"
    max_request_body_size: PosInt = 65536  # the connect request (POST body or cf_connect)
    max_lifetime: Duration = 0.0  # livegate: a stream is closed with 3001 (reconnect) after this long; 0: never

    @field_validator("handler_prefix")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be a path starting with /")
        return v


class Sse(StreamTransport):
    handler_prefix: str = "/connection/sse"


class UniHttpStream(StreamTransport):
    handler_prefix: str = "/connection/uni_http_stream"


class UniSse(StreamTransport):
    handler_prefix: str = "/connection/uni_sse"


class UniWebSocket(StreamTransport):
    """Centrifugo's uni_websocket: the first message is a ConnectRequest; pushes only after."""

    handler_prefix: str = "/connection/uni_websocket"


class Emulation(_Section):
    """The endpoint that takes a bidirectional-emulation client's later commands."""

    handler_prefix: str = "/emulation"
    max_request_body_size: PosInt = 65536


class TokenConfig(_Section):
    """``client.token`` (and, with ``enabled``, ``client.subscription_token``): how JWTs are verified.
    ``audience_regex``/``issuer_regex``: the ``aud`` (any element of a list) / ``iss`` claim must
    fully match; each is an alternative to ``audience``/``issuer``, never used with it."""

    hmac_secret_key: str = Field(default="", repr=False)
    rsa_public_key: str = ""
    ecdsa_public_key: str = ""
    jwks_public_endpoint: str = ""
    audience: str = ""
    audience_regex: str = ""
    issuer: str = ""
    issuer_regex: str = ""
    user_id_claim: str = "sub"

    @model_validator(mode="after")
    def _claim_checks(self) -> TokenConfig:
        for exact, regex in (("audience", "audience_regex"), ("issuer", "issuer_regex")):
            pattern = getattr(self, regex)
            if not pattern:
                continue
            if getattr(self, exact):
                raise ValueError(f"{regex}: cannot be used together with {exact}; configure only one of them")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{regex}: invalid regular expression: {exc}") from None
        return self


class SubscriptionTokenConfig(TokenConfig):
    """``client.subscription_token``: when ``enabled``, subscription tokens are verified with
    this section's keys and options instead of ``client.token``'s (as Centrifugo does)."""

    enabled: bool = False


class RateLimit(_Section):
    """A token bucket: ``rate`` tokens a second (``"100/s"``, ``"600/m"``, ``"5000/h"``, a number
    per second; 0: no limit), holding ``burst`` tokens at most (0: one second's worth)."""

    rate: Rate = 0.0
    burst: NonNegInt = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    @property
    def capacity(self) -> int:
        return self.burst or max(1, math.ceil(self.rate))


def _limit(rate: float, burst: int) -> Any:
    return Field(default_factory=lambda: RateLimit(rate=rate, burst=burst))


class UserCommandRateLimits(_Section):
    """livegate: command rate limits per user, shared by the user's connections on one node
    (anonymous connections have none)."""

    total: RateLimit = _limit(1000, 2000)
    publish: RateLimit = _limit(0, 0)
    rpc: RateLimit = _limit(0, 0)
    subscribe: RateLimit = _limit(0, 0)
    history: RateLimit = _limit(0, 0)


class CommandRateLimits(_Section):
    """livegate: command rate limits per connection, by command class. ``total`` counts every
    command; ``subscribe`` counts subscribe and unsubscribe; ``rpc`` counts rpc and send;
    ``history`` counts history, presence and presence_stats."""

    total: RateLimit = _limit(100, 200)
    publish: RateLimit = _limit(50, 100)
    rpc: RateLimit = _limit(50, 100)
    subscribe: RateLimit = _limit(25, 200)
    history: RateLimit = _limit(20, 50)
    # Commands refused in a row after which the connection is closed with 3013; 0: never.
    disconnect_after: NonNegInt = 10
    user: UserCommandRateLimits = Field(default_factory=UserCommandRateLimits)


class PersonalChannel(_Section):
    """Centrifugo's ``client.subscribe_to_user_personal_channel``: every connection of a user
    (not anonymous ones) is subscribed server-side to the user's personal channel,
    ``<personal_channel_namespace>:#<user>`` (``#<user>`` without a namespace)."""

    enabled: bool = False
    personal_channel_namespace: str = ""


class Client(_Section):
    allowed_origins: list[str] = Field(default_factory=list)
    allow_anonymous_connect_without_token: bool = False
    insecure: bool = False
    ping_interval: Duration = 25.0
    pong_timeout: Duration = 8.0
    stale_close_delay: Duration = 10.0
    expired_close_delay: Duration = 25.0
    queue_max_size: PosInt = 1048576
    channel_limit: PosInt = 128
    history_max_publication_limit: PosInt = 300
    recovery_max_publication_limit: PosInt = 300
    hook_timeout: Duration = 10.0  # livegate: an RPC handler or app hook taking longer fails with error 100
    connection_limit: NonNegInt = 0  # connections per node (0: unlimited); over it the handshake gets HTTP 503
    user_connection_limit: NonNegInt = 0  # connections per user on all nodes (0: unlimited); over it: 3504
    connection_rate_limit: NonNegInt = 0  # new connections a second per node (0: unlimited); over it: HTTP 503
    rate_limit: CommandRateLimits = Field(default_factory=CommandRateLimits)  # livegate: command rate limits
    token: TokenConfig = Field(default_factory=TokenConfig)
    subscription_token: SubscriptionTokenConfig = Field(default_factory=SubscriptionTokenConfig)
    # A connection token with an empty user (sub) is refused: disconnect 3507 (as Centrifugo).
    disallow_anonymous_connection_tokens: bool = False
    subscribe_to_user_personal_channel: PersonalChannel = Field(default_factory=PersonalChannel)

    @model_validator(mode="after")
    def _ping(self) -> Client:
        if self.ping_interval < 1:
            raise ValueError("ping_interval: must be at least 1s (clients get it in whole seconds)")
        if self.pong_timeout >= self.ping_interval:
            raise ValueError("pong_timeout: must be shorter than client.ping_interval")
        return self


class HttpApi(_Section):
    address: str = "127.0.0.1"
    port: Port = 8001
    key: str = Field(default="", repr=False)
    insecure: bool = False
    handler_prefix: str = "/api"
    max_body_size: PosInt = 1048576  # livegate
    # livegate: a request's head and body must all arrive within this, counted from its first
    # byte (from the accept for a new connection); else the connection is closed
    read_timeout: Duration = 10.0
    idle_timeout: Duration = 60.0        # livegate: a keep-alive connection waiting for its next request
    max_batch_size: PosInt = 1000        # livegate: commands in one batch (more: error 107)
    max_batch_concurrency: PosInt = 64   # livegate: commands of a "parallel" batch running at once

    @model_validator(mode="after")
    def _timeouts(self) -> HttpApi:
        for name in ("read_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be more than 0")
        return self


class RedisEngine(_Section):
    address: list[str] = Field(default_factory=lambda: ["redis://127.0.0.1:6379/0"])
    prefix: str = "livegate"
    # livegate: entries of {prefix}.api.stream kept at most (processed ones are trimmed as they go)
    api_stream_max_length: PosInt = 100_000

    @model_validator(mode="before")
    @classmethod
    def _one_address(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("address"), str):
            data = {**data, "address": [data["address"]]}
        return data


class Engine(_Section):
    type: Literal["memory", "redis"] = "memory"
    redis: RedisEngine = Field(default_factory=RedisEngine)


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class Persistence(_Section):
    dsn: str = Field(default="", repr=False)
    schema_name: str = Field(default="livegate", alias="schema")
    pool_min_size: NonNegInt = 1
    pool_max_size: PosInt = 10
    connect_timeout: Duration = 5.0
    command_timeout: Duration = 10.0
    archive_batch_size: PosInt = 500           # rows per INSERT
    archive_flush_interval: Duration = 0.2     # a partial batch waits at most this long
    archive_buffer_size: PosInt = 100000       # publications held while PostgreSQL is slow or down
    outbox_enabled: bool = True
    outbox_batch_size: PosInt = 100
    outbox_poll_interval: Duration = 1.0       # fallback when a NOTIFY is missed
    retention_interval: Duration = 60.0

    @model_validator(mode="after")
    def _schema(self) -> Persistence:
        if not _SCHEMA_NAME.fullmatch(self.schema_name):
            raise ValueError(f"schema: {self.schema_name!r} is not a valid schema name (lower-case letters, digits, _)")
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size: must not exceed pool_max_size")
        return self


_ADMIN_PREFIX = re.compile(r"(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+/?")


class Admin(_Section):
    """Centrifugo's ``admin``: the admin web page on the API port (README, "Admin page"). Off
    unless ``enabled``, and off too while neither ``password`` nor ``http_api.key`` is set."""

    enabled: bool = False
    password: str = Field(default="", repr=False)  # what an operator types to log in (the API key works too)
    # HMAC-SHA256 key of admin session tokens; empty: derived from password and http_api.key
    # (scrypt), so every worker accepts the tokens of the others and a new password ends them
    secret: str = Field(default="", repr=False)
    handler_prefix: str = "/admin"

    @model_validator(mode="after")
    def _prefix(self) -> Admin:
        if not _ADMIN_PREFIX.fullmatch(self.handler_prefix):
            raise ValueError(f"handler_prefix: {self.handler_prefix!r} is not a path like '/admin' "
                             "(letters, digits, -._~ in segments)")
        return self


class Log(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


#: Seconds at least of a map presence entry's key_ttl: entries are refreshed every 25 s
#: (livegate.node.PRESENCE_REFRESH), so a shorter one would expire between two refreshes.
MIN_PRESENCE_KEY_TTL = 50.0


class MapOptions(_Section):
    """How the channels of a namespace with ``subscription_type = "map"`` keep their entries.

    Modes (as Centrifugo v6.8): ``ephemeral`` keeps the entries only (each expires ``key_ttl``
    after its last write; no stream, so no recovery), ``recoverable`` adds a stream of changes
    (``stream_size`` / ``stream_ttl``) that reconnecting subscribers recover from, and
    ``persistent`` keeps entries until removed (``key_ttl`` must be 0) with a stream too.
    """

    mode: Literal["", "ephemeral", "recoverable", "persistent"] = ""
    key_ttl: Duration = 0.0
    stream_size: NonNegInt = 0      # 0: 100 in the modes with a stream
    stream_ttl: Duration = 0.0      # 0: 60 s in the modes with a stream
    meta_ttl: Duration = 0.0        # 0: recoverable max(10 x stream_ttl, key_ttl); persistent: forever
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    allow_remove_for_client: bool = False
    allow_remove_for_subscriber: bool = False
    allow_remove_for_anonymous: bool = False
    remove_client_on_unsubscribe: bool = False  # a subscriber's own entry (key = its client id) goes when it leaves
    # "client_id" / "user_id": a client's writes and removals go to the entry of its connection
    # (or user), whatever key it names; "": the key it names.
    client_key: Literal["", "client_id", "user_id"] = ""
    default_page_size: NonNegInt = 0  # 0: 100
    min_page_size: NonNegInt = 0      # 0: 100
    max_page_size: NonNegInt = 0      # 0: 1000
    live_transition_max_publication_limit: NonNegInt = 0  # 0: max page size

    @property
    def has_stream(self) -> bool:
        return self.mode in ("recoverable", "persistent")

    @property
    def stream_size_or_default(self) -> int:
        return (self.stream_size or 100) if self.has_stream else 0

    @property
    def stream_ttl_or_default(self) -> float:
        return (self.stream_ttl or 60.0) if self.has_stream else 0.0

    @property
    def meta_ttl_or_default(self) -> float:
        """How long the whole map (entries, stream, epoch) lives after its last write; 0: forever.
        Ephemeral maps: a minute past key_ttl (every entry is gone by then)."""
        if self.mode == "ephemeral":
            return self.key_ttl + 60.0
        if self.meta_ttl or self.mode != "recoverable":
            return self.meta_ttl
        return max(self.stream_ttl_or_default * 10, self.key_ttl)

    def page_size(self, asked: int) -> int:
        low, high = self.min_page_size or 100, self.max_page_size or 1000
        return min(max(asked if asked > 0 else (self.default_page_size or 100), low), high)

    @model_validator(mode="after")
    def _consistent(self) -> MapOptions:
        if self.mode in ("ephemeral", "recoverable") and self.key_ttl <= 0:
            raise ValueError(f"key_ttl: map mode {self.mode!r} needs key_ttl > 0 (its entries expire)")
        if self.mode == "persistent" and self.key_ttl > 0:
            raise ValueError("key_ttl: must be 0 in map mode 'persistent' (its entries do not expire)")
        if self.mode == "ephemeral":
            for key in ("stream_size", "stream_ttl", "meta_ttl"):
                if getattr(self, key):
                    raise ValueError(f"{key}: map mode 'ephemeral' keeps no stream")
        if self.meta_ttl and self.meta_ttl < self.stream_ttl_or_default:
            raise ValueError("meta_ttl: must be at least stream_ttl")
        if self.meta_ttl and self.meta_ttl < self.key_ttl:
            raise ValueError("meta_ttl: must be at least key_ttl (the map would go, with a new epoch, before its entries)")
        if self.mode == "persistent" and self.meta_ttl:
            raise ValueError("meta_ttl: must be 0 in map mode 'persistent' (the map never expires)")
        if (self.min_page_size and self.max_page_size and self.min_page_size > self.max_page_size):
            raise ValueError("min_page_size: larger than max_page_size")
        return self


class SharedPollOptions(_Section):
    """How the channels of a namespace with ``subscription_type = "shared_poll"`` are polled.

    Clients track keys (signed by the application: ``shared_poll.hmac_secret_key``); every
    node polls the backend for the keys its connections track, once per ``refresh_interval``,
    and pushes each key's new versions to the connections tracking it.
    """

    endpoint: str = ""              # the backend's refresh URL (POST); "": the app's shared_poll_refresh hook
    timeout: Duration = 5.0         # of one backend call
    mode: Literal["", "versionless", "versioned"] = ""  # "": versionless
    refresh_interval: Duration = 0.0   # 0: 10 s
    refresh_batch_size: NonNegInt = 0  # 0: 1000 keys per backend call
    max_keys_per_connection: NonNegInt = 0  # 0: 5000
    channel_shutdown_delay: Duration = 1.0
    track_expired_extra_delay: Duration = 25.0
    publish_enabled: bool = False   # the server API's shared_poll_publish may push versions (versioned mode)

    @property
    def versioned(self) -> bool:
        return self.mode == "versioned"

    @model_validator(mode="after")
    def _consistent(self) -> SharedPollOptions:
        if self.endpoint and not re.match(r"https?://", self.endpoint):
            raise ValueError(f"endpoint: {self.endpoint!r} is not an http(s) URL")
        if self.publish_enabled and not self.versioned:
            raise ValueError('publish_enabled: needs mode = "versioned" (published versions are compared)')
        return self


class SharedPoll(_Section):
    """Signatures of the keys clients track in shared poll channels."""

    hmac_secret_key: str = Field(default="", repr=False)
    hmac_previous_secret_key: str = Field(default="", repr=False)  # still accepted while keys rotate
    hmac_previous_secret_key_valid_until: NonNegInt = 0  # unix s: signatures issued later need the new key
    concurrency_limit: PosInt = 64  # backend calls at once, per node


class ChannelOptions(_Section):
    """Options of channels in a namespace (or of channels without one)."""

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: NonNegInt = 0
    history_ttl: Duration = 0.0
    history_meta_ttl: Duration = 0.0  # 0: channel.history_meta_ttl
    force_positioning: bool = False
    allow_positioning: bool = False
    force_recovery: bool = False
    allow_recovery: bool = False
    # "stream": recovery returns every missed publication; "cache": only the latest one (the
    # channel is a cache of its last state).
    force_recovery_mode: Literal["stream", "cache"] = "stream"
    # Delta compression a subscriber may ask for ("fossil"): publications after the first go
    # out as fossil deltas against the previous one.
    allowed_delta_types: list[Literal["fossil"]] = Field(default_factory=list)
    allow_tags_filter: bool = False  # subscribers may filter publications by tags (subscribe tf)
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_anonymous: bool = False
    allow_history_for_client: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    channel_regex: str = ""
    # What publication data may be: "json" (JSON text), "json_object" (a JSON object), or
    # "binary" (any bytes, for Protobuf clients; JSON subscribers are closed with 3506 when a
    # publication is not JSON).
    publication_data_format: Literal["json", "json_object", "binary"] = "json"
    archive: bool = False  # livegate: also write publications to PostgreSQL
    archive_ttl: Duration = 0.0  # livegate: archived publications older than this are deleted; 0 keeps them
    archive_max_size: NonNegInt = 0  # livegate: per channel, only the newest N archived publications are kept; 0: all
    # "stream": publications with history; "map": channels are key-value maps that subscribers
    # mirror (state pages, then the stream of changes, then live; see ``map``).
    subscription_type: Literal["stream", "map", "map_clients", "map_users", "shared_poll"] = "stream"
    map: MapOptions = Field(default_factory=MapOptions)
    shared_poll: SharedPollOptions = Field(default_factory=SharedPollOptions)
    # Map presence: every subscriber of a channel here has an entry (key: its client id, or its
    # user id) in the map channel <prefix><channel>, of a namespace with subscription_type
    # "map_clients" (or "map_users"), which clients watch with map presence subscriptions.
    map_clients_presence_channel_prefix: str = ""
    map_users_presence_channel_prefix: str = ""

    @property
    def is_map(self) -> bool:
        """Channels here are maps (data maps, or the server-kept map presence ones)."""
        return self.subscription_type in ("map", "map_clients", "map_users")

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0

    @model_validator(mode="after")
    def _consistent(self) -> ChannelOptions:
        if (self.history_size > 0) != (self.history_ttl > 0):
            key = "history_ttl" if self.history_size > 0 else "history_size"
            raise ValueError(f"{key}: history needs both history_size and history_ttl set")
        if self.archive and self.publication_data_format == "binary":
            raise ValueError('archive: the archive stores JSON (jsonb); publication_data_format "binary" cannot be archived')
        for key in ("force_recovery", "allow_recovery", "archive"):
            if getattr(self, key) and not self.history_enabled:
                raise ValueError(f"{key}: needs history (history_size and history_ttl)")
        if self.is_map and not self.map.mode:
            raise ValueError(f'map.mode: subscription_type "{self.subscription_type}" needs a map mode '
                             '(ephemeral, recoverable or persistent)')
        if self.subscription_type in ("map_clients", "map_users"):
            if self.map.mode == "persistent":
                raise ValueError(f'map.mode: a "{self.subscription_type}" namespace needs entries that expire '
                                 '(ephemeral or recoverable): a user\'s entry is never removed otherwise')
            if self.map.key_ttl < MIN_PRESENCE_KEY_TTL:
                raise ValueError(f"map.key_ttl: at least {MIN_PRESENCE_KEY_TTL:g}s in a {self.subscription_type} "
                                 "namespace (its entries are kept alive every 25s)")
        if self.is_map and (self.history_enabled or self.archive):
            raise ValueError('subscription_type: a "map" namespace keeps its own stream (map.stream_size); '
                             'history_size/history_ttl and archive are for "stream" namespaces')
        if self.channel_regex:
            try:
                re.compile(self.channel_regex)
            except re.error as exc:
                raise ValueError(f"channel_regex: invalid regular expression: {exc}") from None
        return self


_NAMESPACE_NAME = re.compile(r"[-a-zA-Z0-9_.]{2,}")


class Namespace(ChannelOptions):
    name: str

    @model_validator(mode="after")
    def _name(self) -> Namespace:
        if not _NAMESPACE_NAME.fullmatch(self.name):
            raise ValueError(f"name: {self.name!r} is not a valid namespace name (letters, digits, -_. ; 2+ chars)")
        return self


class Channel(_Section):
    private_prefix: str = "$"
    namespace_boundary: str = ":"
    user_boundary: str = "#"
    user_separator: str = ","
    max_length: PosInt = 255
    history_meta_ttl: Duration = 720 * 3600.0
    # livegate: bytes of publication data at most, at every door (clients, HTTP API, Redis stream,
    # FCALL, outbox); well under client.queue_max_size, so one publication never makes a slow consumer
    max_publication_size: PosInt = 65536
    without_namespace: ChannelOptions = Field(default_factory=ChannelOptions)
    namespaces: list[Namespace] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Channel:
        seen: set[str] = set()
        for i, ns in enumerate(self.namespaces):
            if ns.name in seen:
                raise ValueError(f"namespaces[{i}].name: duplicate namespace {ns.name!r}")
            seen.add(ns.name)
        kinds = {ns.name: ns.subscription_type for ns in self.namespaces}
        for where, opts in [("without_namespace", self.without_namespace),
                            *((f"namespaces[{i}]", ns) for i, ns in enumerate(self.namespaces))]:
            for key, kind in (("map_clients_presence_channel_prefix", "map_clients"),
                              ("map_users_presence_channel_prefix", "map_users")):
                prefix = getattr(opts, key)
                if not prefix:
                    continue
                target = prefix.split(self.namespace_boundary, 1)[0] if self.namespace_boundary in prefix else ""
                if kinds.get(target) != kind:
                    raise ValueError(f"{where}.{key}: {prefix!r} must start with the name of a namespace with "
                                     f'subscription_type = "{kind}" and the namespace boundary (e.g. "presence{self.namespace_boundary}")')
        return self


class Config(_Section):
    http_server: HttpServer = Field(default_factory=HttpServer)
    websocket: WebSocket = Field(default_factory=WebSocket)
    http_stream: StreamTransport = Field(default_factory=StreamTransport)
    sse: Sse = Field(default_factory=Sse)
    uni_http_stream: UniHttpStream = Field(default_factory=UniHttpStream)
    uni_sse: UniSse = Field(default_factory=UniSse)
    uni_websocket: UniWebSocket = Field(default_factory=UniWebSocket)
    emulation: Emulation = Field(default_factory=Emulation)
    client: Client = Field(default_factory=Client)
    http_api: HttpApi = Field(default_factory=HttpApi)
    engine: Engine = Field(default_factory=Engine)
    persistence: Persistence = Field(default_factory=Persistence)
    channel: Channel = Field(default_factory=Channel)
    shared_poll: SharedPoll = Field(default_factory=SharedPoll)
    log: Log = Field(default_factory=Log)
    admin: Admin = Field(default_factory=Admin)

    @property
    def one_port(self) -> bool:
        """The server API (and /metrics, the admin page) is served on the client port:
        ``http_api.port`` equals ``http_server.port`` (not 0) on the same address."""
        return (self.http_api.port != 0 and self.http_api.port == self.http_server.port
                and self.http_api.address == self.http_server.address)

    @model_validator(mode="after")
    def _shared_poll_secret(self) -> Config:
        spaces = [("without_namespace", self.channel.without_namespace),
                  *((f"namespaces[{i}]", ns) for i, ns in enumerate(self.channel.namespaces))]
        if not self.shared_poll.hmac_secret_key and any(o.subscription_type == "shared_poll" for _, o in spaces):
            raise ValueError('shared_poll.hmac_secret_key: needed by the namespaces with subscription_type = '
                             '"shared_poll" (it verifies the keys clients track)')
        return self

    @model_validator(mode="after")
    def _admin_prefix(self) -> Config:
        if self.admin.enabled:
            taken = {self.http_api.handler_prefix.rstrip("/"), "/metrics", "/health", "/ready"}
            if self.admin.handler_prefix.rstrip("/") in taken:
                raise ValueError(f"admin.handler_prefix: {self.admin.handler_prefix!r} is taken on the API port "
                                 "(http_api.handler_prefix, /metrics, /health, /ready)")
        return self

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        if self.channel.max_publication_size >= self.client.queue_max_size:
            raise ValueError("channel.max_publication_size: must be under client.queue_max_size, or every "
                             "subscriber of a publication that large is disconnected as slow")
        paths = {"websocket.handler_prefix": self.websocket.handler_prefix,
                 "emulation.handler_prefix": self.emulation.handler_prefix}
        for key in ("http_stream", "sse", "uni_http_stream", "uni_sse", "uni_websocket"):
            section = getattr(self, key)
            if section.enabled:
                if section.handler_prefix in paths.values():
                    raise ValueError(f"{key}.handler_prefix: {section.handler_prefix} is already the path of another "
                                     "handler")
                paths[f"{key}.handler_prefix"] = section.handler_prefix
        personal = self.client.subscribe_to_user_personal_channel
        if personal.enabled and personal.personal_channel_namespace and personal.personal_channel_namespace not in {
                ns.name for ns in self.channel.namespaces}:
            raise ValueError("client.subscribe_to_user_personal_channel.personal_channel_namespace: no namespace "
                             f"{personal.personal_channel_namespace!r} in channel.namespaces")
        if self.http_server.workers > 1 and self.engine.type == "memory":
            raise ValueError("http_server.workers: more than one worker needs engine.type = \"redis\"")
        if self.one_port:
            # The server API on the client port (as Centrifugo serves it by default): its paths
            # must not be a client handler's.
            api_paths = {"http_api.handler_prefix": self.http_api.handler_prefix.rstrip("/") or "/",
                         "/metrics": "/metrics"}
            if self.admin.enabled:
                api_paths["admin.handler_prefix"] = self.admin.handler_prefix.rstrip("/")
            for key, api_path in api_paths.items():
                for client_key, path in paths.items():
                    if path == api_path or path.startswith(api_path + "/") or api_path in ("/", ""):
                        raise ValueError(f"{key if key != '/metrics' else client_key}: {api_path} on the client port "
                                         f"(http_api.port = http_server.port) would take {client_key} ({path})")
        elif (self.http_api.port and self.http_api.port == self.http_server.port
              and {self.http_api.address, self.http_server.address} & {"", "0.0.0.0", "::"}):
            raise ValueError(f"http_api.address: the API port {self.http_api.port} is http_server.port, and one of "
                             f"{self.http_api.address!r} and {self.http_server.address!r} listens on every address: "
                             "set the same address to serve the API on the client port, or another port")
        archived = [ns.name for ns in self.channel.namespaces if ns.archive]
        if self.channel.without_namespace.archive:
            archived.append("(without namespace)")
        if archived and not self.persistence.dsn:
            raise ValueError(f"persistence.dsn: namespaces with archive = true ({', '.join(archived)}) need a PostgreSQL DSN")
        return self


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("function-", "constrained-")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _format(err: ValidationError) -> ConfigError:
    problems = []
    first_key = ""
    for e in err.errors():
        key = _loc(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
            # Validators name the key inside their section: "key: problem".
            head, sep, rest = msg.partition(": ")
            if sep and re.fullmatch(r"[a-z_.\[\]0-9]+", head):
                key = f"{key}.{head}" if key else head
                msg = rest
        first_key = first_key or key
        problems.append(f"{key}: {msg}" if key else msg)
    error = ConfigError("", "; ".join(problems))
    error.key = first_key
    return error


def _env_path(model: type[BaseModel], rest: str) -> list[str] | None:
    """Map ``CLIENT_TOKEN_HMAC_SECRET_KEY`` to ``["client", "token", "hmac_secret_key"]``."""
    for name, field in model.model_fields.items():
        key = (field.alias or name)
        upper = key.upper()
        if rest == upper:
            return [key]
        sub = field.annotation
        if rest.startswith(upper + "_") and isinstance(sub, type) and issubclass(sub, BaseModel):
            tail = _env_path(sub, rest[len(upper) + 1:])
            if tail is not None:
                return [key, *tail]
    return None


def _env_value(text: str) -> Any:
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    return text


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``LIVEGATE_<PATH>`` variables on the raw config mapping."""
    for var, value in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        path = _env_path(Config, var[len(ENV_PREFIX):])
        if path is None:
            continue  # not a config key (e.g. LIVEGATE_CONFIG, LIVEGATE_TEST_*)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = _env_value(value)
    return raw


def parse_config(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate a raw mapping (after environment overrides) into a Config."""
    raw = apply_env(copy.deepcopy(raw), os.environ if environ is None else environ)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise _format(err) from None


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read a TOML file (or only defaults and environment when ``path`` is None)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except IsADirectoryError:
            raise ConfigError("", f"cannot read config file {path}: it is a directory, not a file") from None
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError("", f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                                  "save it as UTF-8") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"{path}: invalid TOML: {exc}") from None
    return parse_config(raw, environ)
