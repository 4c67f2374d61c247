"""presence and presence_stats."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livegate.channels.names import ResolvedChannel
from livegate.errors import BrokerError
from livegate.handlers.access import require
from livegate.protocol.codes import ErrBadRequest, ErrInternal, ErrNotAvailable
from livegate.protocol.commands import PresenceRequest, PresenceStatsRequest

if TYPE_CHECKING:
    from livegate.handlers.client import Client

__all__ = ["handle_presence", "handle_presence_stats"]


def _check(client: Client, channel: str) -> ResolvedChannel:
    if not channel:
        raise ErrBadRequest()
    resolved = client.node.rules.resolve(channel)
    if not resolved.options.presence:
        raise ErrNotAvailable()
    require(client, resolved, "presence")
    return resolved


async def handle_presence(client: Client, req: PresenceRequest) -> dict[str, Any]:
    _check(client, req.channel)
    try:
        entries = await client.node.presence.presence(req.channel)
    except BrokerError as exc:
        raise ErrInternal() from exc
    return {"presence": {cid: info.to_wire() for cid, info in entries.items()}}


async def handle_presence_stats(client: Client, req: PresenceStatsRequest) -> dict[str, Any]:
    _check(client, req.channel)
    try:
        stats = await client.node.presence.presence_stats(req.channel)
    except BrokerError as exc:
        raise ErrInternal() from exc
    return {"num_clients": stats.num_clients, "num_users": stats.num_users}
