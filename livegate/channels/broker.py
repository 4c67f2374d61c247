"""The engine contracts: Broker (pub/sub + history) and PresenceManager.

An engine is a pair of these; ``memory`` serves one process, ``redis`` many processes on
many hosts. Every engine passes the same conformance suite (tests/conformance/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from livegate.protocol.types import ClientInfo, Publication, StreamPosition

__all__ = [
    "PublishOptions", "PublishResult", "HistoryOptions", "HistoryResult", "BrokerEventHandler",
    "Broker", "PresenceManager", "PresenceStats",
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


@dataclass(frozen=True, slots=True)
class HistoryResult:
    publications: list[Publication]
    position: StreamPosition


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


class Broker(Protocol):
    async def start(self, handler: BrokerEventHandler) -> None: ...
    async def close(self) -> None: ...

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


class PresenceManager(Protocol):
    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...
    async def presence_stats(self, channel: str) -> PresenceStats: ...

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        """Add or refresh an entry; it disappears ``ttl`` seconds after the last refresh."""
        ...

    async def remove_presence(self, channel: str, client_id: str, user: str) -> None: ...
    async def close(self) -> None: ...
