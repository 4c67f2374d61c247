"""history: limit, since, reverse, as protocol.md 2.1 describes."""

from __future__ import annotations

from livegate.channels.broker import HistoryOptions
from livegate.errors import BrokerError
from livegate.protocol.codes import ErrBadRequest, ErrInternal, ErrNotAvailable, ErrUnrecoverablePosition
from livegate.protocol.commands import HistoryRequest
from livegate.protocol.replies import HistoryResult
from livegate.protocol.types import StreamPosition
from livegate.session import Session
from livegate.session.access import require

__all__ = ["handle_history"]


async def handle_history(session: Session, req: HistoryRequest) -> HistoryResult:
    if not req.channel:
        raise ErrBadRequest()
    node = session.node
    resolved = node.rules.resolve(req.channel)
    if not resolved.options.history_enabled:
        raise ErrNotAvailable()
    require(session, resolved, "history")
    if req.reverse and req.since is not None and req.since.offset == 0:
        raise ErrBadRequest(message="bad request: reverse history needs since.offset > 0")
    max_limit = node.config.client.history_max_publication_limit
    limit = max_limit if req.limit < 0 or req.limit > max_limit else req.limit
    since = StreamPosition(req.since.offset, req.since.epoch) if req.since is not None else None
    try:
        result = await node.history(resolved, HistoryOptions(
            limit=limit, since=since, reverse=req.reverse, meta_ttl=node.meta_ttl(resolved)))
    except BrokerError as exc:
        raise ErrInternal() from exc
    if since is not None and since.epoch and since.epoch != result.position.epoch:
        raise ErrUnrecoverablePosition()
    return HistoryResult(result.publications, result.position.epoch, result.position.offset)
