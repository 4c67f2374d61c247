"""unsubscribe (always answered with success)."""

from __future__ import annotations

from livegate.errors import DisconnectRequested
from livegate.protocol import codes
from livegate.protocol.commands import UnsubscribeRequest
from livegate.protocol.replies import EMPTY, EmptyResult
from livegate.session import Session
from livegate.session.subscriptions import remove_subscription

__all__ = ["handle_unsubscribe"]


async def handle_unsubscribe(session: Session, req: UnsubscribeRequest) -> EmptyResult:
    if not req.channel:
        raise DisconnectRequested(codes.BAD_REQUEST.code, codes.BAD_REQUEST.reason)
    if session.map_pending:
        session.map_pending.pop(req.channel, None)  # a map subscribe still paging
    await remove_subscription(session, req.channel)
    return EMPTY
