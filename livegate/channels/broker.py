"""The engine contract: everything livegate needs from an engine, and what an engine reports.

An ``Engine`` bundles a ``Broker`` (pub/sub + history), a ``PresenceManager``, a
``UserConnections`` counter (connections per user on every node), a
``NodeChannel`` between the instances of a cluster (None on a one-process engine), its
``Shard`` servers and its health. It reports to the ``EngineEvents`` it was given at
construction: publications, joins and leaves for local subscribers, gaps (publications that
may have been missed while the engine was unreachable) and messages from other nodes.
``memory`` serves one process, ``redis`` many processes on many hosts. Every engine passes
the same conformance suite (tests/conformance/).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from livegate.protocol.types import ClientInfo, Publication, StreamPosition

__all__ = [
    "MapSettings", "MapWriteOptions", "MapUpdateResult", "MapStateResult", "SUPPRESS_REASONS", "MAP_UNWRITTEN_TTL",
    "PublishOptions", "PublishResult", "HistoryOptions", "HistoryResult", "BrokerEventHandler",
    "EngineEvents", "Broker", "PresenceManager", "PresenceStats", "UserConnections", "NodeChannel", "Shard", "Engine",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishOptions:
    history_size: int = 0          # > 0 together with history_ttl: keep history
    history_ttl: float = 0.0       # seconds a publication stays in history
    history_meta_ttl: float = 0.0  # seconds the stream position outlives the last publish; 0: forever
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    idempotent_result_ttl: float = 300.0
    data_format: str = "json"      # the namespace's publication_data_format (checked before: the node did)


@dataclass(frozen=True, slots=True)
class PublishResult:
    position: StreamPosition
    suppressed: bool = False  # an earlier publish with the same idempotency key won


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryOptions:
    limit: int = 0                       # 0: position only; -1: everything retained
    since: StreamPosition | None = None  # publications after since.offset
    reverse: bool = False                # newest first
    meta_ttl: float = 0.0                # refresh the position's lifetime (0: leave it)
    # While the channel has had no publication, a read keeps its position only this long
    # (0: meta_ttl): subscribing to many channels nobody publishes in leaves no long-lived keys.
    unpublished_ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class HistoryResult:
    publications: list[Publication]
    position: StreamPosition


@dataclass(frozen=True, slots=True, kw_only=True)
class MapSettings:
    """How a map channel keeps its entries (from the namespace's ``map`` options, defaults
    applied). ``stream_size`` 0: no stream (ephemeral mode), offsets stay 0."""

    stream_size: int = 0
    stream_ttl: float = 0.0   # seconds a change stays in the stream
    meta_ttl: float = 0.0     # seconds the whole map (entries, stream, epoch) outlives its last write; 0: forever
    key_ttl: float = 0.0      # seconds an entry outlives its last write; 0: until removed


@dataclass(frozen=True, slots=True, kw_only=True)
class MapWriteOptions:
    settings: MapSettings
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    idempotent_result_ttl: float = 300.0
    data_format: str = "json"
    key_mode: str = ""                          # "": always; "if_new": only a new key; "if_exists": only an existing one
    expected: StreamPosition | None = None      # compare-and-set: the entry's offset (0: absent) and the channel's epoch
    refresh_ttl_on_suppress: bool = False       # a write suppressed by key_mode still renews the entry's key_ttl


#: Seconds a map position created by a read (nobody wrote the map yet) lives: subscribing to
#: channel names nobody writes to leaves no lasting state.
MAP_UNWRITTEN_TTL = 300.0

#: Why a map write changed nothing.
SUPPRESS_REASONS = ("idempotency", "key_exists", "key_not_found", "position_mismatch")


@dataclass(frozen=True, slots=True)
class MapUpdateResult:
    position: StreamPosition          # the channel's position after the write (offset 0 without a stream)
    suppressed: bool = False
    reason: str = ""                  # one of SUPPRESS_REASONS when suppressed
    current: Publication | None = None  # position_mismatch: the entry as it is (None: absent)


@dataclass(frozen=True, slots=True)
class MapStateResult:
    entries: list[Publication]        # each with key, offset (its last write) and data
    position: StreamPosition          # the channel's stream position when the page was read
    cursor: str = ""                  # the next page; "" after the last


@dataclass(frozen=True, slots=True)
class PresenceStats:
    num_clients: int
    num_users: int


class BrokerEventHandler(Protocol):
    """What a broker calls when something arrives for a channel this process subscribed to.

    ``handle_publications`` receives what one read produced, in offset order per channel,
    so the hub can join several messages for one connection into one frame.
    """

    def handle_publications(self, batch: list[tuple[str, Publication]]) -> None: ...
    def handle_join(self, channel: str, info: ClientInfo) -> None: ...
    def handle_leave(self, channel: str, info: ClientInfo) -> None: ...


class EngineEvents(BrokerEventHandler, Protocol):
    """Everything an engine reports; given to the engine when it is built."""

    def handle_gap(self, channels: list[str]) -> None:
        """Publications of these channels may have been missed (the engine was unreachable)."""
        ...

    def handle_node_message(self, data: bytes) -> None:
        """A message another node sent over the node channel (never this node's own)."""
        ...


class Broker(Protocol):
    async def publish(self, channel: str, data: bytes, opts: PublishOptions) -> PublishResult:
        """Append to the channel history (when opts enable it) and fan out, atomically per channel.

        Offsets grow by exactly one per publication of a channel with history, and every
        subscriber on every node receives publications in offset order.
        """
        ...

    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...
    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    async def subscribe(self, channel: str) -> None:
        """Receive the channel's publications on this node. Called for every local
        subscriber; returns once publications are flowing (at once when they already are),
        so a history read after it cannot miss what is published meanwhile."""
        ...

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving them (called after the last local subscriber left)."""
        ...

    async def history(self, channel: str, opts: HistoryOptions) -> HistoryResult:
        """Publications and the current top position.

        Without ``since``: the oldest retained first (newest first with ``reverse``), up to
        ``limit``. With ``since``: those after ``since.offset``, oldest first; with
        ``reverse``, those before ``since.offset``, newest first. The epoch of ``since`` is
        the caller's to check. The position is created when missing, so that an empty
        stream still has an epoch.
        """
        ...

    async def remove_history(self, channel: str) -> None: ...

    # -- map channels (namespaces with subscription_type = "map") ----------------------------
    # A map channel is a set of entries (key -> latest publication of the key) plus, when its
    # settings keep one, a stream of the changes: every write or removal is one publication
    # with ``key`` set (``removed`` for a removal), appended to the channel's stream (read with
    # ``history``) and fanned out like any publication, atomically with the entry's change.

    async def map_publish(self, channel: str, key: str, data: bytes, opts: MapWriteOptions) -> MapUpdateResult:
        """Write an entry (unless suppressed: idempotency key seen, key_mode, compare-and-set).
        A suppressed write changes nothing, appends nothing and publishes nothing."""
        ...

    async def map_remove(self, channel: str, key: str, opts: MapWriteOptions) -> MapUpdateResult:
        """Remove an entry; suppressed with "key_not_found" when there is none."""
        ...

    async def map_state(self, channel: str, settings: MapSettings, *, cursor: str = "", limit: int = 100,
                        key: str = "") -> MapStateResult:
        """A page of live entries (``key``: that entry only), and the stream position read with it.
        Creates the position (and epoch) when missing."""
        ...

    async def map_stats(self, channel: str) -> int:
        """How many live entries the channel has."""
        ...

    async def map_clear(self, channel: str) -> None:
        """Forget the channel's entries, stream and position (subscribers start over: new epoch)."""
        ...

    async def map_expire(self) -> int:
        """Remove entries past their key_ttl, each with a removal publication (as map_remove).
        Engines call this on their own every second; returns how many were removed."""
        ...


class PresenceManager(Protocol):
    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...
    async def presence_stats(self, channel: str) -> PresenceStats: ...

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        """Add or refresh an entry; it disappears ``ttl`` seconds after the last refresh."""
        ...

    async def add_presence_many(self, entries: Sequence[tuple[str, ClientInfo]], ttl: float) -> int:
        """``add_presence`` for many entries at once (one round trip per server where the engine
        has servers). Returns how many could not be written; never raises for an engine outage."""
        ...

    async def remove_presence(self, channel: str, client_id: str, user: str) -> None: ...


class UserConnections(Protocol):
    """Every node's connections per user, for ``client.user_connection_limit``.

    An entry is one connection (user, client id). It disappears ``ttl`` seconds after it was
    last added or refreshed, so the entries of a node that died without removing them go
    away; the node that holds a connection refreshes its entry well within ``ttl``. Adding is
    atomic with the count: two nodes adding the user's last free place at once cannot both win.
    """

    async def add_user_connection(self, user: str, client_id: str, limit: int, ttl: float) -> bool:
        """Count the connection unless the user already has ``limit`` live ones (0: no limit).
        True when it counts (also when it already did); False, with nothing recorded, when
        the user is at the limit."""
        ...

    async def refresh_user_connections(self, user: str, client_ids: Sequence[str], ttl: float) -> list[str]:
        """Keep these connections of the user counted for ``ttl`` more seconds. Returns those
        that are not counted (expired, e.g. while the engine was unreachable, or never
        counted): they are not added back here, so a refresh racing a disconnect cannot revive
        a closed connection; the caller adds those still open again."""
        ...

    async def remove_user_connection(self, user: str, client_id: str) -> None: ...

    async def user_connection_count(self, user: str) -> int:
        """The user's live connections on every node."""
        ...


class NodeChannel(Protocol):
    """Messages between the nodes of a cluster. What arrives is reported to
    ``EngineEvents.handle_node_message`` on every other node."""

    async def publish_node(self, data: bytes) -> None: ...


class Shard(Protocol):
    """One server of an engine that spreads channels over several (redis: jump hash)."""

    index: int
    address: str  # for logs and messages: never holds a password
    healthy: bool

    @property
    def client(self) -> Any:
        """A command client for doors that read from this server (the Redis API stream)."""
        ...


class Engine(Protocol):
    # Read-only members: an engine may hold its concrete broker, presence, ... types.
    @property
    def name(self) -> str: ...
    @property
    def broker(self) -> Broker: ...
    @property
    def presence(self) -> PresenceManager: ...
    @property
    def users(self) -> UserConnections: ...
    @property
    def nodes(self) -> NodeChannel | None:
        """None: one process, nothing to tell other nodes."""
        ...
    @property
    def shards(self) -> Sequence[Shard]:
        """Empty when the engine has no servers."""
        ...
    @property
    def envelope_version(self) -> int:
        """The newest inter-node envelope version this build reads (announced to other nodes)."""
        ...

    @property
    def healthy(self) -> bool: ...

    async def start(self) -> None:
        """Connect; raises BrokerUnavailable when the engine cannot be reached."""
        ...

    async def close(self) -> None: ...

    def use_envelope_version(self, version: int) -> None:
        """Write envelopes of this version from now on: the newest one every live node reads."""
        ...
