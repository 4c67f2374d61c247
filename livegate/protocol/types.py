"""Plain data that crosses the wire and the engines: positions, client info, publications.

``data``, ``conn_info`` and ``chan_info`` are kept as raw JSON bytes (compact, one line):
they are embedded as JSON values in frames, never base64, and are encoded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from livegate.protocol.jsontext import dumps

__all__ = ["StreamPosition", "ClientInfo", "Publication", "raw_json"]


def raw_json(value: Any) -> bytes:
    """Compact JSON bytes of a decoded value (never contains a raw newline).

    Raises:
        JsonTextError: the value cannot be JSON (nested too deeply, not a JSON type).
    """
    return dumps(value)


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

    def to_json(self) -> bytes:
        """The JSON form (protocol v2 ``ClientInfo``) that engines store and other nodes embed as-is."""
        out: dict[str, Any] = {"user": self.user, "client": self.client}
        if self.conn_info is not None:
            out["conn_info"] = orjson.Fragment(self.conn_info)
        if self.chan_info is not None:
            out["chan_info"] = orjson.Fragment(self.chan_info)
        return orjson.dumps(out)

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
    key: str = ""  # map channels: the entry this publication writes (or removes)
    removed: bool = False  # map channels: the entry was removed (data is empty)
    prev: bytes | None = None  # map channels, in fan-out only: the entry's value before (per-key delta base)
    version: int = 0  # shared poll channels: the key's version
