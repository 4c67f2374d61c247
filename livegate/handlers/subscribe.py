"""subscribe: permissions, positioning and recovery, and the in-flight publication merge."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from livegate.channels.broker import HistoryOptions
from livegate.channels.hub import JOIN_LEAVE
from livegate.channels.names import ResolvedChannel
from livegate.errors import BrokerError, ClientError, DisconnectRequested, TokenExpired, TokenInvalid
from livegate.handlers.access import allowed
from livegate.handlers.context import Subscription
from livegate.node import PRESENCE_TTL
from livegate.protocol import codes
from livegate.protocol.codes import (
    ErrAlreadySubscribed,
    ErrBadRequest,
    ErrInternal,
    ErrLimitExceeded,
    ErrPermissionDenied,
    ErrTokenExpired,
    ErrUnrecoverablePosition,
)
from livegate.protocol.commands import SubscribeRequest
from livegate.protocol.types import Fragment, StreamPosition, raw_json

if TYPE_CHECKING:
    from livegate.handlers.client import Client, Followup

__all__ = ["handle_subscribe", "subscribe_channel", "Grant"]

#: subscribe ``flag`` bit: answer 112 instead of ``recovered: false``.
FLAG_REJECT_UNRECOVERED = 2


class Grant:
    """What authorised a subscription, and what it brings along."""

    __slots__ = ("chan_info", "data", "expire_at", "override")

    def __init__(self, chan_info: bytes | None = None, data: bytes | None = None,
                 expire_at: float = 0.0, override: dict[str, Any] | None = None) -> None:
        self.chan_info = chan_info
        self.data = data
        self.expire_at = expire_at
        self.override = override or {}

    def forced(self, name: str, default: bool) -> bool:
        value = self.override.get(name)
        if isinstance(value, dict) and isinstance(value.get("value"), bool):
            return value["value"]
        return default


async def _authorize(client: Client, resolved: ResolvedChannel, req: SubscribeRequest) -> Grant:
    """Decision order of protocol.md 9.2, after name, duplicate and limit checks."""
    node = client.node
    if req.token:
        try:
            token = await node.verifier.verify_subscription(req.token)
        except TokenExpired:
            raise ErrTokenExpired() from None
        except TokenInvalid:
            raise ErrPermissionDenied() from None
        if token.channel != resolved.name or token.user != client.user or (token.client and token.client != client.client_id):
            raise DisconnectRequested(codes.INVALID_TOKEN.code, codes.INVALID_TOKEN.reason)
        expires = token.subscription_expires_at
        if expires is not None and expires <= time.time():
            raise ErrTokenExpired()
        return Grant(token.info, token.data, float(expires or 0), token.override)
    if resolved.private:
        raise ErrPermissionDenied()
    opts = resolved.options
    if resolved.allowed_users is not None and opts.allow_user_limited_channels:
        if resolved.user_allowed(client.user):
            return Grant()
        raise ErrPermissionDenied()
    hook = node.app.subscribe_hook
    if hook is not None:
        decision = await client.call_app(hook, resolved.name, req.data)
        if isinstance(decision, dict):
            info = decision.get("info")
            data = decision.get("data")
            return Grant(None if info is None else raw_json(info), None if data is None else raw_json(data))
        if decision:
            return Grant()
    if opts.allow_subscribe_for_client and (client.user or opts.allow_subscribe_for_anonymous):
        return Grant()
    if node.config.client.insecure:
        return Grant()
    raise ErrPermissionDenied()


async def subscribe_channel(
    client: Client, resolved: ResolvedChannel, req: SubscribeRequest, grant: Grant, *, server_side: bool = False,
) -> tuple[dict[str, Any], Followup]:
    """Register the subscription, read the stream position (and recover), build the result.

    Live publications that arrive meanwhile wait in the hub; the returned followup, run
    right after the reply is queued, sends those the result did not already contain.
    """
    node = client.node
    channel = resolved.name
    opts = resolved.options
    history = opts.history_enabled
    history_access = allowed(client, resolved, "history")
    recoverable = history and grant.forced("force_recovery", opts.force_recovery or (
        req.recoverable and (opts.allow_recovery or history_access)))
    positioned = history and (recoverable or grant.forced("force_positioning", opts.force_positioning or (
        req.positioned and (opts.allow_positioning or history_access))))
    presence = grant.forced("presence", opts.presence)
    join_leave = grant.forced("join_leave", opts.join_leave)
    push_join_leave = grant.forced("force_push_join_leave", opts.force_push_join_leave) or (
        join_leave and req.join_leave and (allowed(client, resolved, "presence") or opts.allow_presence_for_subscriber))
    sub = Subscription(
        resolved=resolved, info=client.info(grant.chan_info), flags=JOIN_LEAVE if push_join_leave else 0,
        recoverable=recoverable, positioned=positioned, presence=presence, join_leave=join_leave,
        expire_at=grant.expire_at, server_side=server_side,
    )
    client.subs[channel] = sub
    node.hub.subscribe(channel, client)
    result: dict[str, Any] = {}
    sent_up_to = 0  # offsets at or below this are in the result already
    try:
        await node.broker.subscribe(channel)
        if positioned:
            limit = node.config.client.recovery_max_publication_limit
            recovering = req.recover and recoverable
            since = StreamPosition(req.offset, req.epoch) if recovering else None
            hist = await node.history(resolved, HistoryOptions(
                limit=limit + 1 if recovering else 0, since=since, meta_ttl=node.meta_ttl(resolved)))
            top = hist.position
            result["positioned"] = True
            if recoverable:
                result["recoverable"] = True
            result["epoch"] = top.epoch
            result["offset"] = top.offset
            sent_up_to = top.offset
            if recovering:
                pubs = hist.publications
                same_epoch = req.epoch in ("", top.epoch)
                recovered = same_epoch and len(pubs) <= limit and (
                    (not pubs and req.offset == top.offset)
                    or (bool(pubs) and pubs[-1].offset == top.offset
                        and all(p.offset == req.offset + 1 + i for i, p in enumerate(pubs))))
                if recovered:
                    result["recovered"] = True
                    result["offset"] = req.offset
                    if pubs:
                        result["publications"] = [p.to_wire() for p in pubs]
                elif req.flag & FLAG_REJECT_UNRECOVERED:
                    raise ErrUnrecoverablePosition()
    except BaseException as exc:
        await _undo(client, channel, sub)  # only this subscribe: a newer one for the channel stays
        if isinstance(exc, ClientError | DisconnectRequested):
            raise
        if isinstance(exc, BrokerError):
            raise ErrInternal() from exc
        raise
    if req.recover:
        result["was_recovering"] = True  # echoed even when recovery is not enabled (protocol.md 5.3)
    if grant.expire_at:
        result["expires"] = True
        result["ttl"] = max(1, int(grant.expire_at - time.time()))
    if grant.data is not None:
        result["data"] = Fragment(grant.data)

    if client.subs.get(channel) is not sub or client.closing is not None:
        # Removed while we waited (server API unsubscribe, connection closed): no reply.
        await _undo(client, channel, sub)
        if client.closing is not None:
            raise DisconnectRequested(client.closing.code, client.closing.reason)
        raise ErrPermissionDenied(message="subscription removed by the server")

    def followup() -> Any:
        # Identity first: the hub keys pending entries by client, so activating on behalf of a
        # subscribe that was replaced meanwhile would make the newer one live too early.
        if client.subs.get(channel) is not sub:
            return _undo(client, channel, sub)
        buffered = node.hub.activate(channel, client, sub.flags)
        if buffered is None:
            return _undo(client, channel, sub)
        sub.live = True
        if sub.expire_at:
            client.recompute_sub_expiry()
        for offset, payload in buffered:
            if offset == 0 or offset > sent_up_to:
                client.write(payload)
        if presence or join_leave:
            return _announce(client, channel, sub)
        return None

    return result, followup


async def _undo(client: Client, channel: str, sub: Subscription) -> None:
    """Forget a subscribe that was removed while in flight, unless a newer one replaced it."""
    if client.subs.get(channel) is sub:
        del client.subs[channel]
    if client.subs.get(channel) is None and client.node.hub.unsubscribe(channel, client):
        try:
            await client.node.broker.unsubscribe(channel)
        except BrokerError:
            pass


async def _announce(client: Client, channel: str, sub: Subscription) -> None:
    node = client.node
    try:
        if sub.presence:
            await node.presence.add_presence(channel, sub.info, PRESENCE_TTL)
        if sub.join_leave:
            await node.broker.publish_join(channel, sub.info)
    except BrokerError:
        pass  # presence is refreshed on the next sweep; a lost join is not fatal


async def handle_subscribe(client: Client, req: SubscribeRequest) -> tuple[dict[str, Any], Followup]:
    if not req.channel:
        raise DisconnectRequested(codes.BAD_REQUEST.code, codes.BAD_REQUEST.reason)
    if req.type != 0:
        raise ErrPermissionDenied()
    if req.tf is not None:
        # Tags filters are not implemented: say so rather than deliver unfiltered data.
        raise ErrBadRequest(message="bad request: tags filter (tf) is not supported")
    resolved = client.node.rules.resolve(req.channel)
    if req.channel in client.subs:
        raise ErrAlreadySubscribed()
    if len(client.subs) >= client.node.config.client.channel_limit:
        raise ErrLimitExceeded()
    grant = await _authorize(client, resolved, req)
    if client.closing is not None or req.channel in client.subs:
        raise ErrAlreadySubscribed()
    return await subscribe_channel(client, resolved, req, grant)
