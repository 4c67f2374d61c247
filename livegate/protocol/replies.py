"""Typed results of client commands: what a handler returns, and what a codec encodes.

Field names follow protocol v2. Payloads (``data``) are opaque bytes in the form the
publisher gave them (JSON text today); a codec decides how they are embedded. Zero values
are left out on the wire unless a codec's rule says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from livegate.protocol.types import ClientInfo, Publication

__all__ = [
    "Result", "ConnectResult", "SubscribeResult", "PresenceResult", "PresenceStatsResult",
    "HistoryResult", "RPCResult", "RefreshResult", "EmptyResult", "EMPTY",
]


@dataclass(slots=True, kw_only=True)
class SubscribeResult:
    """The subscribe reply; the ``subscribe`` push of a server-side subscription carries the
    same fields except ``recovered``, ``publications`` and ``was_recovering``."""

    positioned: bool = False
    recoverable: bool = False
    epoch: str = ""                 # sent when positioned
    offset: int = 0                 # sent when positioned (0 included)
    recovered: bool = False
    publications: list[Publication] = field(default_factory=list)
    was_recovering: bool = False
    expires: bool = False
    ttl: int = 0
    data: bytes | None = None
    delta: bool = False             # delta compression negotiated: publications carry data as delta or base
    # Map subscriptions: type 1 echoed; the phase of this reply (2 a state page, 1 a stream
    # page, 0 live); the next state page's cursor ("" after the last); the state entries.
    type: int = 0
    phase: int = 0
    cursor: str = ""
    state: list[Publication] | None = None
    data_as_text: bool = False      # map pages before a live reply with delta: JSON values as strings


@dataclass(slots=True, kw_only=True)
class ConnectResult:
    client: str
    version: str
    ping: int = 0
    pong: bool = False
    expires: bool = False
    ttl: int = 0
    data: bytes | None = None
    subs: dict[str, SubscribeResult] | None = None
    session: str = ""  # emulated transports: where the client's later commands go (/emulation)
    node: str = ""


@dataclass(slots=True)
class PresenceResult:
    presence: dict[str, ClientInfo]


@dataclass(slots=True)
class PresenceStatsResult:
    num_clients: int
    num_users: int


@dataclass(slots=True)
class HistoryResult:
    """Always carries all three fields, an empty list and offset 0 included."""

    publications: list[Publication]
    epoch: str
    offset: int


@dataclass(slots=True)
class RPCResult:
    data: bytes | None = None


@dataclass(slots=True)
class RefreshResult:
    """Answer to ``refresh`` and ``sub_refresh``."""

    expires: bool = False
    ttl: int = 0
    items: list[Publication] | None = None  # sub_refresh of a shared poll track: current values


@dataclass(frozen=True, slots=True)
class EmptyResult:
    """Answer of commands whose reply has no fields (unsubscribe, publish, ping)."""


EMPTY = EmptyResult()

Result = (ConnectResult | SubscribeResult | PresenceResult | PresenceStatsResult | HistoryResult | RPCResult
          | RefreshResult | EmptyResult)
