"""The keys shared poll subscriptions (subscribe ``type`` 4, in livegate.handlers.subscribe)
track: ``sub_refresh`` ``type`` 1 track, 2 untrack; livegate.channels.shared_poll polls and
pushes."""

from __future__ import annotations

import time

from livegate.channels.shared_poll import SignatureError, verify_signature
from livegate.errors import DisconnectRequested
from livegate.protocol import codes
from livegate.protocol.codes import (
    ErrBadRequest,
    ErrLimitExceeded,
    ErrPermissionDenied,
    ErrTokenExpired,
)
from livegate.protocol.commands import SubRefreshRequest
from livegate.protocol.replies import RefreshResult
from livegate.session import Session

__all__ = ["handle_track"]


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
        manager.track(channel, opts, session, [(k, v, exp) for k, (v, exp) in self.items.items()], delta=sub.delta)
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
    wanted = {item.key for batch in req.track for item in batch.items}
    if "" in wanted or any("\x00" in key for key in wanted):
        raise ErrBadRequest(message="bad request: a key is empty or holds NUL")
    untrack = set(req.untrack)
    opts = node.rules.resolve(req.channel).options.shared_poll
    limit = opts.max_keys_per_connection or 5000
    held = manager.tracked_count(req.channel, session)
    leaving = sum(1 for key in untrack if manager.is_tracking(req.channel, session, key))
    coming = sum(1 for key in wanted if key not in untrack and not manager.is_tracking(req.channel, session, key))
    if held - leaving + coming > limit:  # before the signatures: no HMAC work for a refused request
        raise ErrLimitExceeded(message=f"limit exceeded: at most {limit} keys per connection")
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
            items[item.key] = (item.version, float(expires))  # a key listed twice: the last batch's
    result = RefreshResult()
    soonest = min((exp for _, exp in items.values() if exp), default=0.0)
    if soonest and soonest > now:
        result.expires = True
        result.ttl = max(1, int(soonest - now))
    return result, _Track(session, req.channel, items, list(untrack))
