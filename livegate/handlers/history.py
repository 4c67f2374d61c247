"""history: limit, since, reverse, as protocol.md 2.1 describes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livegate.channels.broker import HistoryOptions
from livegate.errors import BrokerError
from livegate.handlers.access import require
from livegate.protocol.codes import ErrBadRequest, ErrInternal, ErrNotAvailable, ErrUnrecoverablePosition
from livegate.protocol.commands import HistoryRequest
from livegate.protocol.types import StreamPosition

if TYPE_CHECKING:
    from livegate.handlers.client import Client

__all__ = ["handle_history"]


async def handle_history(client: Client, req: HistoryRequest) -> dict[str, Any]:
    if not req.channel:
        raise ErrBadRequest()
    node = client.node
    resolved = node.rules.resolve(req.channel)
    if not resolved.options.history_enabled:
        raise ErrNotAvailable()
    require(client, resolved, "history")
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
    return {
        "publications": [p.to_wire() for p in result.publications],
        "epoch": result.position.epoch,
        "offset": result.position.offset,
    }
