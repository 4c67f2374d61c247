"""refresh (connection token) and sub_refresh (subscription token)."""

from __future__ import annotations

import time
from typing import Any

from livegate.errors import DisconnectRequested, TokenExpired, TokenInvalid
from livegate.handlers.shared_poll import handle_track
from livegate.protocol import codes
from livegate.protocol.codes import ErrBadRequest, ErrPermissionDenied, ErrTokenExpired
from livegate.protocol.commands import RefreshRequest, SubRefreshRequest
from livegate.protocol.replies import RefreshResult
from livegate.session import Session

__all__ = ["handle_refresh", "handle_sub_refresh", "expiry_result"]


def _disconnect(d: codes.Disconnect) -> DisconnectRequested:
    return DisconnectRequested(d.code, d.reason)


def expiry_result(expire_at: float) -> RefreshResult:
    if not expire_at:
        return RefreshResult()
    return RefreshResult(expires=True, ttl=max(1, int(expire_at - time.time())))


async def handle_refresh(session: Session, req: RefreshRequest) -> RefreshResult:
    if not req.token:
        raise _disconnect(codes.BAD_REQUEST)
    try:
        token = await session.node.verifier.verify_connect(req.token)
    except TokenExpired:
        raise _disconnect(codes.EXPIRED) from None
    except TokenInvalid:
        raise _disconnect(codes.INVALID_TOKEN) from None
    if token.user != session.user:
        raise _disconnect(codes.INVALID_TOKEN)
    expires = token.connection_expires_at
    if expires is not None and expires <= time.time():
        raise _disconnect(codes.EXPIRED)
    session.expire_at = float(expires or 0)
    return expiry_result(session.expire_at)


async def handle_sub_refresh(session: Session, req: SubRefreshRequest) -> RefreshResult | tuple[RefreshResult, Any]:
    if req.type != 0:
        return await handle_track(session, req)
    sub = session.subs.get(req.channel)
    if not req.channel or sub is None or not sub.live:
        raise ErrPermissionDenied()
    if not req.token:
        raise ErrBadRequest()
    try:
        token = await session.node.sub_verifier.verify_subscription(req.token)
    except TokenExpired:
        raise ErrTokenExpired(temporary=True) from None
    except TokenInvalid:
        raise _disconnect(codes.INVALID_TOKEN) from None
    if token.channel != req.channel or token.user != session.user or (token.client and token.client != session.client_id):
        raise _disconnect(codes.INVALID_TOKEN)
    expires = token.subscription_expires_at
    if expires is not None and expires <= time.time():
        raise ErrTokenExpired(temporary=True)
    sub.expire_at = float(expires or 0)
    session.recompute_sub_expiry()
    return expiry_result(sub.expire_at)
