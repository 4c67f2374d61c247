"""presence and presence_stats."""

from __future__ import annotations

from livegate.channels.names import ResolvedChannel
from livegate.errors import BrokerError
from livegate.protocol.codes import ErrBadRequest, ErrInternal, ErrNotAvailable
from livegate.protocol.commands import PresenceRequest, PresenceStatsRequest
from livegate.protocol.replies import PresenceResult, PresenceStatsResult
from livegate.session import Session
from livegate.session.access import require

__all__ = ["handle_presence", "handle_presence_stats"]


def _check(session: Session, channel: str) -> ResolvedChannel:
    if not channel:
        raise ErrBadRequest()
    resolved = session.node.rules.resolve(channel)
    if not resolved.options.presence:
        raise ErrNotAvailable()
    require(session, resolved, "presence")
    return resolved


async def handle_presence(session: Session, req: PresenceRequest) -> PresenceResult:
    _check(session, req.channel)
    try:
        return PresenceResult(await session.node.presence.presence(req.channel))
    except BrokerError as exc:
        raise ErrInternal() from exc


async def handle_presence_stats(session: Session, req: PresenceStatsRequest) -> PresenceStatsResult:
    _check(session, req.channel)
    try:
        stats = await session.node.presence.presence_stats(req.channel)
    except BrokerError as exc:
        raise ErrInternal() from exc
    return PresenceStatsResult(stats.num_clients, stats.num_users)
