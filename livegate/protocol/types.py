"""Plain data that crosses the wire and the engines: positions, client info, publications.

``data``, ``conn_info`` and ``chan_info`` are kept as raw JSON bytes (compact, one line):
they are embedded as JSON values in frames, never base64, and are encoded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["StreamPosition", "ClientInfo", "Publication", "raw_json", "Fragment"]

Fragment = orjson.Fragment


def raw_json(value: Any) -> bytes:
    """Compact JSON bytes of a decoded value (never contains a raw newline)."""
    return orjson.dumps(value)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's stream is.

    ``offset`` grows by one per publication. ``epoch`` changes whenever the stream was lost
    and rebuilt: offsets of different epochs are not comparable, so a position is only
    trusted when both match.
    """

    offset: int = 0
    epoch: str = ""


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a connection is, as subscribers see it in publications, presence and join/leave."""

    user: str
    client: str
    conn_info: bytes | None = None
    chan_info: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.user, "client": self.client}
        if self.conn_info is not None:
            out["conn_info"] = Fragment(self.conn_info)
        if self.chan_info is not None:
            out["chan_info"] = Fragment(self.chan_info)
        return out

    def to_json(self) -> bytes:
        """The wire form as JSON bytes (what other nodes embed as-is)."""
        return orjson.dumps(self.to_wire())

    @classmethod
    def from_json(cls, raw: bytes | str) -> ClientInfo:
        d = orjson.loads(raw)
        conn, chan = d.get("conn_info"), d.get("chan_info")
        return cls(d.get("user", ""), d.get("client", ""),
                   None if conn is None else orjson.dumps(conn), None if chan is None else orjson.dumps(chan))


@dataclass(frozen=True, slots=True)
class Publication:
    """One message in a channel. ``offset`` is 0 when the channel keeps no history."""

    data: bytes
    offset: int = 0
    info: ClientInfo | bytes | None = None  # bytes: the wire form, already JSON (from another node)
    tags: dict[str, str] | None = None
    time: int = 0  # unix ms when it was published; used for TTL trimming

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"data": Fragment(self.data)}
        if self.offset:
            out["offset"] = self.offset
        info = self.info
        if info is not None:
            out["info"] = info.to_wire() if isinstance(info, ClientInfo) else Fragment(info)
        if self.tags:
            out["tags"] = self.tags
        return out
