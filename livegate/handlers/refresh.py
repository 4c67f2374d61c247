"""refresh (connection token) and sub_refresh (subscription token)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from livegate.errors import DisconnectRequested, TokenExpired, TokenInvalid
from livegate.protocol import codes
from livegate.protocol.codes import ErrBadRequest, ErrPermissionDenied, ErrTokenExpired
from livegate.protocol.commands import RefreshRequest, SubRefreshRequest

if TYPE_CHECKING:
    from livegate.handlers.client import Client

__all__ = ["handle_refresh", "handle_sub_refresh", "expiry_result"]


def _disconnect(d: codes.Disconnect) -> DisconnectRequested:
    return DisconnectRequested(d.code, d.reason)


def expiry_result(expire_at: float) -> dict[str, Any]:
    if not expire_at:
        return {}
    return {"expires": True, "ttl": max(1, int(expire_at - time.time()))}


async def handle_refresh(client: Client, req: RefreshRequest) -> dict[str, Any]:
    if not req.token:
        raise _disconnect(codes.BAD_REQUEST)
    try:
        token = await client.node.verifier.verify_connect(req.token)
    except TokenExpired:
        raise _disconnect(codes.EXPIRED) from None
    except TokenInvalid:
        raise _disconnect(codes.INVALID_TOKEN) from None
    if token.user != client.user:
        raise _disconnect(codes.INVALID_TOKEN)
    expires = token.connection_expires_at
    if expires is not None and expires <= time.time():
        raise _disconnect(codes.EXPIRED)
    client.expire_at = float(expires or 0)
    return expiry_result(client.expire_at)


async def handle_sub_refresh(client: Client, req: SubRefreshRequest) -> dict[str, Any]:
    sub = client.subs.get(req.channel)
    if not req.channel or sub is None or not sub.live:
        raise ErrPermissionDenied()
    if not req.token:
        raise ErrBadRequest()
    try:
        token = await client.node.verifier.verify_subscription(req.token)
    except TokenExpired:
        raise ErrTokenExpired(temporary=True) from None
    except TokenInvalid:
        raise _disconnect(codes.INVALID_TOKEN) from None
    if token.channel != req.channel or token.user != client.user or (token.client and token.client != client.client_id):
        raise _disconnect(codes.INVALID_TOKEN)
    expires = token.subscription_expires_at
    if expires is not None and expires <= time.time():
        raise ErrTokenExpired(temporary=True)
    sub.expire_at = float(expires or 0)
    client.recompute_sub_expiry()
    return expiry_result(sub.expire_at)
