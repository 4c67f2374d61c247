"""What hooks and RPC handlers see of a connection, and the per-subscription state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from livegate.node import Node
from livegate.protocol.types import ClientInfo
from livegate.session.payloads import payload_bytes

__all__ = ["Context", "Subscription"]


@dataclass(slots=True)
class Context:
    """Given to hooks and RPC handlers: who is calling, and the node to act on."""

    client_id: str
    user: str
    conn_info: bytes | None
    name: str
    version: str
    node: Node

    @property
    def info(self) -> Any:
        """The connection info (from the token ``info`` claim or the connect hook), decoded."""
        return None if self.conn_info is None else orjson.loads(self.conn_info)

    def send(self, data: Any) -> bool:
        """Push a message to this connection (the SDK's ``message`` event): ``bytes`` as they
        are (a JSON client is closed with 3506 when they are not JSON), anything else as
        JSON. False when the connection is gone."""
        conn = self.node.hub.connection(self.client_id)
        if conn is None or conn.closing is not None:
            return False
        payload = payload_bytes(data)
        conn.server_message(b"null" if payload is None else payload)
        return True


@dataclass(slots=True)
class Subscription:
    """One channel a connection is subscribed to (or is subscribing to, while ``live`` is False)."""

    info: ClientInfo                 # with chan_info: what join/leave and presence show
    flags: int = 0                   # hub flags (JOIN_LEAVE)
    recoverable: bool = False
    positioned: bool = False
    presence: bool = False           # this subscription has a presence entry
    join_leave: bool = False         # joins and leaves are emitted for the channel
    expire_at: float = 0.0           # unix s when its token expires; 0: never
    live: bool = False
    server_side: bool = False
    clients_presence: str = ""       # map presence: the map_clients channel holding this subscriber's entry
    users_presence: str = ""         # map presence: the map_users channel holding its user's entry
    remove_own_entry: bool = False   # a map subscription whose entry keyed by the client id goes when it leaves
    shared_poll: bool = False        # a shared poll subscription: not in the hub, its keys are tracked
    delta: bool = False              # shared poll: fossil deltas per key negotiated
