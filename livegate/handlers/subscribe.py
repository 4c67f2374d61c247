"""subscribe: the checks and the authorisation decision; livegate.session.subscriptions does
the rest (options, positioning and recovery, the in-flight merge)."""

from __future__ import annotations

import time

from livegate.channels.names import ResolvedChannel
from livegate.errors import DisconnectRequested, TokenExpired, TokenInvalid
from livegate.protocol import codes
from livegate.protocol.codes import (
    ErrAlreadySubscribed,
    ErrBadRequest,
    ErrLimitExceeded,
    ErrNotAvailable,
    ErrPermissionDenied,
    ErrTokenExpired,
)
from livegate.protocol.commands import SubscribeRequest
from livegate.protocol.replies import SubscribeResult
from livegate.protocol.types import raw_json
from livegate.session import Session
from livegate.session.context import Subscription
from livegate.session.maps import map_continuation, new_flow, subscribe_map, sweep_stale_flows
from livegate.session.payloads import payload_bytes, payload_value
from livegate.session.subscriptions import Grant, InFlight, subscribe_channel

__all__ = ["handle_subscribe", "authorize", "TYPE_SHARED_POLL"]

#: Subscribe ``type`` of a shared poll subscription.
TYPE_SHARED_POLL = 4


async def authorize(session: Session, resolved: ResolvedChannel, req: SubscribeRequest) -> Grant:
    """Decision order of protocol.md 9.2, after name, duplicate and limit checks."""
    node = session.node
    if req.token:
        try:
            token = await node.sub_verifier.verify_subscription(req.token)
        except TokenExpired:
            raise ErrTokenExpired() from None
        except TokenInvalid:
            raise ErrPermissionDenied() from None
        if (token.channel != resolved.name or token.user != session.user
                or (token.client and token.client != session.client_id)):
            raise DisconnectRequested(codes.INVALID_TOKEN.code, codes.INVALID_TOKEN.reason)
        expires = token.subscription_expires_at
        if expires is not None and expires <= time.time():
            raise ErrTokenExpired()
        return Grant(token.info, token.data, float(expires or 0), token.override)
    if resolved.private:
        raise ErrPermissionDenied()
    opts = resolved.options
    if resolved.allowed_users is not None and opts.allow_user_limited_channels:
        if resolved.user_allowed(session.user):
            return Grant()
        raise ErrPermissionDenied()
    hook = node.app.subscribe_hook
    if hook is not None:
        decision = await session.call_app(hook, resolved.name, payload_value(req.data))
        if isinstance(decision, dict):
            info = decision.get("info")
            data = decision.get("data")
            return Grant(None if info is None else raw_json(info), payload_bytes(data))
        if decision:
            return Grant()
    if opts.allow_subscribe_for_client and (session.user or opts.allow_subscribe_for_anonymous):
        return Grant()
    if node.config.client.insecure:
        return Grant()
    raise ErrPermissionDenied()


def _check_channel_limit(session: Session) -> None:
    """client.channel_limit counts subscriptions and map subscribes still paging."""
    if len(session.subs) + len(session.map_pending or ()) >= session.node.config.client.channel_limit:
        raise ErrLimitExceeded()


async def handle_subscribe(
    session: Session, req: SubscribeRequest,
) -> SubscribeResult | tuple[SubscribeResult, InFlight]:
    if not req.channel:
        raise DisconnectRequested(codes.BAD_REQUEST.code, codes.BAD_REQUEST.reason)
    if req.type == TYPE_SHARED_POLL:
        return await handle_shared_poll_subscribe(session, req)
    if req.type != 0:
        return await handle_map_subscribe(session, req)
    if req.delta not in ("", "fossil"):
        # As Centrifugo: a delta type it does not know is a broken client.
        raise DisconnectRequested(codes.BAD_REQUEST.code, codes.BAD_REQUEST.reason)
    if req.tf is not None and req.delta:
        raise DisconnectRequested(codes.BAD_REQUEST.code, codes.BAD_REQUEST.reason)  # exclusive in the SDKs too
    resolved = session.node.rules.resolve(req.channel)
    if resolved.options.subscription_type != "stream":
        raise ErrBadRequest(message=f"bad request: {req.channel!r} is a {resolved.options.subscription_type} channel: "
                                    "subscribe with its type")
    if req.channel in session.subs:
        raise ErrAlreadySubscribed()
    _check_channel_limit(session)
    grant = await authorize(session, resolved, req)
    if session.closing is not None or req.channel in session.subs:
        raise ErrAlreadySubscribed()
    return await subscribe_channel(session, resolved, req, grant)


async def handle_shared_poll_subscribe(session: Session, req: SubscribeRequest) -> SubscribeResult:
    """Subscribe to a shared poll channel: authorised as any subscribe; nothing is sent until
    the client tracks keys."""
    node = session.node
    resolved = node.rules.resolve(req.channel)
    if resolved.options.subscription_type != "shared_poll":
        raise ErrNotAvailable(message=f"not available: {req.channel!r} is not a shared poll channel")
    if req.channel in session.subs:
        raise ErrAlreadySubscribed()
    _check_channel_limit(session)
    grant = await authorize(session, resolved, req)
    if session.closing is not None or req.channel in session.subs:
        raise ErrAlreadySubscribed()
    # Fossil deltas per key, when asked for and allowed (the backend must send prev_data).
    delta = req.delta == "fossil" and "fossil" in resolved.options.allowed_delta_types
    session.subs[req.channel] = Subscription(info=session.info(grant.chan_info), expire_at=grant.expire_at,
                                             live=True, shared_poll=True, delta=delta)
    result = SubscribeResult(type=TYPE_SHARED_POLL, delta=delta,
                             epoch=node.shared_poll.epoch(req.channel, resolved.options.shared_poll))
    if grant.expire_at:
        session.recompute_sub_expiry()
        result.expires = True
        result.ttl = max(1, int(grant.expire_at - time.time()))
    result.data = grant.data
    return result


#: Subscribe ``type`` -> the namespace ``subscription_type`` it subscribes to.
MAP_TYPES = {1: "map", 2: "map_clients", 3: "map_users"}


async def handle_map_subscribe(
    session: Session, req: SubscribeRequest,
) -> SubscribeResult | tuple[SubscribeResult, InFlight]:
    """A command of a map subscribe flow (livegate.session.maps): the first one is authorised
    as any subscribe, the ones continuing it are not asked again."""
    kind = MAP_TYPES.get(req.type)
    if kind is None:
        raise ErrNotAvailable(message=f"not available: subscription type {req.type}")
    resolved = session.node.rules.resolve(req.channel)
    if resolved.options.subscription_type != kind:
        raise ErrBadRequest(message=f"bad request: {req.channel!r} is not a {kind} channel (subscribe type {req.type})")
    if req.channel in session.subs:
        raise ErrAlreadySubscribed()
    sweep_stale_flows(session, req.channel)
    flow = map_continuation(session, req)
    if flow is None:
        _check_channel_limit(session)
        grant = await authorize(session, resolved, req)
        if session.closing is not None or req.channel in session.subs:
            raise ErrAlreadySubscribed()
        flow = new_flow(session, resolved, req, grant)
    return await subscribe_map(session, resolved, req, flow)
