"""Shared poll subscriptions (subscribe ``type`` 4) and the keys they track (``sub_refresh``
``type`` 1 track, 2 untrack); livegate.channels.shared_poll polls and pushes."""

from __future__ import annotations

import time

from livegate.channels.shared_poll import SignatureError, verify_signature
from livegate.errors import DisconnectRequested
from livegate.protocol import codes
from livegate.protocol.codes import (
    ErrAlreadySubscribed,
    ErrBadRequest,
    ErrLimitExceeded,
    ErrNotAvailable,
    ErrPermissionDenied,
    ErrTokenExpired,
)
from livegate.protocol.commands import SubRefreshRequest, SubscribeRequest
from livegate.protocol.replies import RefreshResult, SubscribeResult
from livegate.session import Session
from livegate.session.context import Subscription

__all__ = ["handle_shared_poll_subscribe", "handle_track", "TYPE_SHARED_POLL"]

TYPE_SHARED_POLL = 4


async def handle_shared_poll_subscribe(session: Session, req: SubscribeRequest) -> SubscribeResult:
    """Subscribe to a shared poll channel: authorised as any subscribe; nothing is sent until
    the client tracks keys."""
    from livegate.handlers.subscribe import authorize  # the subscribe rules, shared

    node = session.node
    resolved = node.rules.resolve(req.channel)
    if resolved.options.subscription_type != "shared_poll":
        raise ErrNotAvailable(message=f"not available: {req.channel!r} is not a shared poll channel")
    if req.channel in session.subs:
        raise ErrAlreadySubscribed()
    if len(session.subs) + len(session.map_pending or ()) >= node.config.client.channel_limit:
        raise ErrLimitExceeded()
    grant = await authorize(session, resolved, req)
    if session.closing is not None or req.channel in session.subs:
        raise ErrAlreadySubscribed()
    session.subs[req.channel] = Subscription(info=session.info(grant.chan_info), expire_at=grant.expire_at,
                                             live=True, shared_poll=True)
    result = SubscribeResult(type=TYPE_SHARED_POLL,
                             epoch=node.shared_poll.epoch(req.channel, resolved.options.shared_poll))
    if grant.expire_at:
        session.recompute_sub_expiry()
        result.expires = True
        result.ttl = max(1, int(grant.expire_at - time.time()))
    result.data = grant.data
    return result


class _Track:
    """Tracking starts right after the reply is queued: what it pushes follows the reply."""

    __slots__ = ("session", "channel", "items", "untrack")

    def __init__(self, session: Session, channel: str, items: dict[str, tuple[int, float]],
                 untrack: list[str]) -> None:
        self.session = session
        self.channel = channel
        self.items = items
        self.untrack = untrack

    def complete(self) -> None:
        session, channel = self.session, self.channel
        sub = session.subs.get(channel)
        if sub is None or not sub.shared_poll or session.closing is not None:
            return None  # unsubscribed meanwhile
        manager = session.node.shared_poll
        opts = session.node.rules.resolve(channel).options.shared_poll
        manager.track(channel, opts, session, [(k, v, exp) for k, (v, exp) in self.items.items()])
        if self.untrack:
            manager.untrack(channel, session, self.untrack)
        return None


async def handle_track(session: Session, req: SubRefreshRequest) -> RefreshResult | tuple[RefreshResult, _Track]:
    if not req.channel:
        raise DisconnectRequested(codes.BAD_REQUEST.code, codes.BAD_REQUEST.reason)
    sub = session.subs.get(req.channel)
    if sub is None or not sub.shared_poll or not sub.live:
        raise ErrPermissionDenied()
    node = session.node
    manager = node.shared_poll
    if req.type == 2:
        if not req.untrack:
            raise ErrBadRequest(message="bad request: untrack lists no key")
        manager.untrack(req.channel, session, req.untrack)
        return RefreshResult()
    if req.type != 1:
        raise ErrBadRequest(message=f"bad request: unknown sub_refresh type {req.type}")
    if not any(batch.items for batch in req.track):
        raise ErrBadRequest(message="bad request: track lists no key")
    cfg = node.config.shared_poll
    now = time.time()
    items: dict[str, tuple[int, float]] = {}
    for batch in req.track:
        keys = [item.key for item in batch.items]
        try:
            expires = verify_signature(batch.signature, keys, session.user, req.channel, secret=cfg.hmac_secret_key,
                                       previous=cfg.hmac_previous_secret_key,
                                       previous_until=cfg.hmac_previous_secret_key_valid_until, now=now)
        except SignatureError as exc:
            if str(exc) == "expired":
                raise ErrTokenExpired() from None
            raise ErrPermissionDenied(message="permission denied: invalid track signature") from None
        for item in batch.items:
            if not item.key:
                raise ErrBadRequest(message="bad request: an empty key")
            items[item.key] = (item.version, float(expires))  # a key listed twice: the last batch's
    untrack = set(req.untrack)
    opts = node.rules.resolve(req.channel).options.shared_poll
    limit = opts.max_keys_per_connection or 5000
    held = manager.tracked_count(req.channel, session)
    leaving = sum(1 for key in untrack if manager.is_tracking(req.channel, session, key))
    coming = sum(1 for key in items if key not in untrack and not manager.is_tracking(req.channel, session, key))
    if held - leaving + coming > limit:
        raise ErrLimitExceeded(message=f"limit exceeded: at most {limit} keys per connection")
    result = RefreshResult()
    soonest = min((exp for _, exp in items.values() if exp), default=0.0)
    if soonest and soonest > now:
        result.expires = True
        result.ttl = max(1, int(soonest - now))
    return result, _Track(session, req.channel, items, list(untrack))
