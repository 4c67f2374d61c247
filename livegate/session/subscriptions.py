"""Subscribing a session to a channel and removing it again.

Three parts, so that each can be read and tested alone:

* ``resolve_options``: which features a subscription gets (recovery, positioning, presence,
  join/leave pushes) from the namespace options, the grant and the request. Pure.
* ``decide_recovery``: whether the publications read from history recover the client's
  position exactly. Pure.
* ``InFlight``: a subscribe between the moment the hub starts buffering live publications for
  it and the moment its reply is queued. ``complete()`` makes it live and sends what arrived
  meanwhile and the reply did not already contain (nothing lost, nothing twice).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from livegate.channels.broker import HistoryOptions
from livegate.channels.hub import JOIN_LEAVE, SubView
from livegate.channels.names import ResolvedChannel
from livegate.channels.tags_filter import FilterError, TagsMatch, compile_filter
from livegate.cluster import Connection
from livegate.config import ChannelOptions
from livegate.errors import BrokerError, DisconnectRequested
from livegate.node import PRESENCE_TTL, Node
from livegate.protocol import codes
from livegate.protocol.codes import ErrInternal, ErrPermissionDenied, ErrUnrecoverablePosition
from livegate.protocol.commands import SubscribeRequest
from livegate.protocol.replies import SubscribeResult
from livegate.protocol.types import ClientInfo, Publication, StreamPosition
from livegate.session.access import allowed
from livegate.session.context import Subscription

__all__ = [
    "Grant", "Features", "resolve_options", "decide_recovery", "InFlight", "subscribe_channel",
    "remove_subscription", "SubscribingSession", "FLAG_REJECT_UNRECOVERED",
]

#: subscribe ``flag`` bit: answer 112 instead of ``recovered: false``.
FLAG_REJECT_UNRECOVERED = 2


class SubscribingSession(Connection, Protocol):
    """What subscribing needs of a session: its subscription state and node, and being a
    ``Connection`` that the node's hub holds. ``Session`` is one (``SessionCore`` alone is not:
    the hub's connections also take the node's and the cluster's operations)."""

    node: Node
    subs: dict[str, Subscription]
    map_pending: dict[str, Any] | None  # map subscribes paging towards live (livegate.session.maps)

    def info(self, chan_info: bytes | None = None) -> ClientInfo: ...
    def recompute_sub_expiry(self) -> None: ...


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
        """An ``override`` from a subscription token or the server API wins over the namespace."""
        value = self.override.get(name)
        if isinstance(value, dict) and isinstance(value.get("value"), bool):
            return value["value"]
        return default


@dataclass(frozen=True, slots=True)
class Features:
    recoverable: bool
    positioned: bool
    presence: bool
    join_leave: bool        # joins and leaves of this subscriber are published
    push_join_leave: bool   # this subscriber receives join/leave pushes


def resolve_options(opts: ChannelOptions, grant: Grant, req: SubscribeRequest, *,
                    history_access: bool, presence_access: bool) -> Features:
    """``history_access``/``presence_access``: the client may call history/presence on the channel."""
    history = opts.history_enabled
    recoverable = history and grant.forced("force_recovery", opts.force_recovery or (
        req.recoverable and (opts.allow_recovery or history_access)))
    positioned = history and (recoverable or grant.forced("force_positioning", opts.force_positioning or (
        req.positioned and (opts.allow_positioning or history_access))))
    join_leave = grant.forced("join_leave", opts.join_leave)
    push_join_leave = grant.forced("force_push_join_leave", opts.force_push_join_leave) or (
        join_leave and req.join_leave and (presence_access or opts.allow_presence_for_subscriber))
    return Features(recoverable=recoverable, positioned=positioned, presence=grant.forced("presence", opts.presence),
                    join_leave=join_leave, push_join_leave=push_join_leave)


def decide_recovery(since: StreamPosition, top: StreamPosition, pubs: list[Publication], limit: int) -> bool:
    """True when ``pubs`` are exactly the publications after ``since`` up to ``top``: same
    epoch (or the client sent none), at most ``limit`` of them, consecutive, ending at the top."""
    if since.epoch not in ("", top.epoch) or len(pubs) > limit:
        return False
    if not pubs:
        return since.offset == top.offset
    return pubs[-1].offset == top.offset and all(p.offset == since.offset + 1 + i for i, p in enumerate(pubs))


class InFlight:
    """A subscribe whose live publications wait in the hub until its reply is queued."""

    __slots__ = ("session", "channel", "sub", "sent_up_to")

    def __init__(self, session: SubscribingSession, channel: str, sub: Subscription) -> None:
        self.session = session
        self.channel = channel
        self.sub = sub
        self.sent_up_to = 0  # offsets at or below this are in the reply already

    @property
    def current(self) -> bool:
        """Still the session's subscription of the channel (not removed or replaced meanwhile)."""
        return self.session.subs.get(self.channel) is self.sub

    def complete(self) -> Awaitable[None] | None:
        """Make the subscription live and send what was buffered meanwhile; then announce it."""
        session, channel, sub = self.session, self.channel, self.sub
        # Identity first: the hub keys pending entries by session, so activating on behalf of a
        # subscribe that was replaced meanwhile would make the newer one live too early.
        if not self.current:
            return self.abandon()
        buffered = session.node.hub.activate(channel, session, sub.flags, self.sent_up_to)
        if buffered is None:
            return self.abandon()
        sub.live = True
        if sub.expire_at:
            session.recompute_sub_expiry()
        for offset, payload in buffered:
            if offset == 0 or offset > self.sent_up_to:
                session.write(payload)
        if sub.presence or sub.join_leave or sub.clients_presence or sub.users_presence:
            return _announce(session, channel, sub)
        return None

    async def fail(self, exc: BaseException) -> NoReturn:
        """Forget this subscribe (only this one: a newer one for the channel stays) after
        ``exc``, and raise what the client gets for it."""
        await self.abandon()
        if isinstance(exc, BrokerError):
            raise ErrInternal() from exc
        raise exc

    async def finish(self, result: SubscribeResult, grant: Grant) -> tuple[SubscribeResult, InFlight]:
        """The reply with the token's expiry and the grant's data; unless the subscription was
        removed while it was set up (server API unsubscribe, connection closed): no reply then."""
        session = self.session
        if grant.expire_at:
            result.expires = True
            result.ttl = max(1, int(grant.expire_at - time.time()))
        result.data = grant.data
        if not self.current or session.closing is not None:
            await self.abandon()
            if session.closing is not None:
                raise DisconnectRequested(session.closing.code, session.closing.reason)
            raise ErrPermissionDenied(message="subscription removed by the server")
        return result, self

    async def abandon(self) -> None:
        """Forget this subscribe, unless a newer one for the channel replaced it."""
        session, channel = self.session, self.channel
        if self.current:
            del session.subs[channel]
        node = session.node
        if session.subs.get(channel) is None and node.hub.unsubscribe(channel, session):
            try:
                await node.broker.unsubscribe(channel)
            except BrokerError:
                pass


async def subscribe_channel(
    session: SubscribingSession, resolved: ResolvedChannel, req: SubscribeRequest, grant: Grant, *,
    server_side: bool = False,
) -> tuple[SubscribeResult, InFlight]:
    """Register the subscription, read the stream position (and recover), build the result.

    Live publications that arrive meanwhile wait in the hub; ``InFlight.complete()``, run
    right after the reply is queued, sends those the result did not already contain.
    """
    node = session.node
    channel = resolved.name
    view = _view(session, resolved, req)
    features = resolve_options(resolved.options, grant, req, history_access=allowed(session, resolved, "history"),
                               presence_access=allowed(session, resolved, "presence"))
    sub = Subscription(
        info=session.info(grant.chan_info), flags=JOIN_LEAVE if features.push_join_leave else 0,
        recoverable=features.recoverable, positioned=features.positioned, presence=features.presence,
        join_leave=features.join_leave, expire_at=grant.expire_at, server_side=server_side,
    )
    with_map_presence(sub, resolved, session.user)
    session.subs[channel] = sub
    node.hub.subscribe(channel, session, view)
    flight = InFlight(session, channel, sub)
    result = SubscribeResult(was_recovering=req.recover)  # echoed even when recovery is off (protocol.md 5.3)
    result.delta = view is not None and view.delta
    try:
        await node.broker.subscribe(channel)
        if features.positioned:
            flight.sent_up_to = await _position(session, resolved, req, features.recoverable, result,
                                                view.match if view is not None else None)
    except BaseException as exc:
        await flight.fail(exc)
    return await flight.finish(result, grant)


def tags_match(resolved: ResolvedChannel, req: SubscribeRequest) -> TagsMatch | None:
    """The subscribe's tags filter, compiled (None: it has none).

    Raises:
        DisconnectRequested: a tags filter the namespace does not allow, or a malformed one
            (3501, as Centrifugo).
    """
    if req.tf is None:
        return None
    if not resolved.options.allow_tags_filter:
        raise DisconnectRequested(codes.BAD_REQUEST.code, codes.BAD_REQUEST.reason)
    try:
        return compile_filter(req.tf)
    except FilterError:
        raise DisconnectRequested(codes.BAD_REQUEST.code, codes.BAD_REQUEST.reason) from None


def _view(session: SubscribingSession, resolved: ResolvedChannel, req: SubscribeRequest) -> SubView | None:
    """The subscription's tags filter and delta compression, when asked for and allowed.

    Raises:
        DisconnectRequested: a tags filter the namespace does not allow, or a malformed one
            (3501, as Centrifugo).
    """
    match = tags_match(resolved, req)
    delta = bool(req.delta) and req.delta in resolved.options.allowed_delta_types
    return SubView(match, delta) if match is not None or delta else None


async def _position(session: SubscribingSession, resolved: ResolvedChannel, req: SubscribeRequest,
                    recoverable: bool, result: SubscribeResult, match: TagsMatch | None = None) -> int:
    """Fill in the stream position, and the recovered publications when the client recovers
    (those its tags filter takes). Returns the top offset: the reply covers every publication
    up to it."""
    node = session.node
    if recoverable and req.recover and resolved.options.force_recovery_mode == "cache":
        return await _position_cache(session, resolved, req, result, match)
    limit = node.config.client.recovery_max_publication_limit
    recovering = req.recover and recoverable
    since = StreamPosition(req.offset, req.epoch)
    hist = await node.history(resolved, HistoryOptions(
        limit=limit + 1 if recovering else 0, since=since if recovering else None, meta_ttl=node.meta_ttl(resolved)))
    top = hist.position
    result.positioned = True
    result.recoverable = recoverable
    result.epoch = top.epoch
    result.offset = top.offset
    if not recovering:
        return top.offset
    if decide_recovery(since, top, hist.publications, limit):
        result.recovered = True
        result.offset = req.offset
        result.publications = hist.publications if match is None else [p for p in hist.publications if match(p.tags)]
    elif req.flag & FLAG_REJECT_UNRECOVERED:
        raise ErrUnrecoverablePosition()
    return top.offset


async def _position_cache(session: SubscribingSession, resolved: ResolvedChannel, req: SubscribeRequest,
                          result: SubscribeResult, match: TagsMatch | None) -> int:
    """Cache recovery mode (``force_recovery_mode = "cache"``): the channel is a cache of its
    latest publication, and recovering means getting that one (with a tags filter: the newest
    one the filter takes, among the last ``recovery_max_publication_limit``). Recovered when
    the client holds the top already (nothing sent), or when the latest publication is still
    in history (the one found is sent); not recovered when history lost it, or when the filter
    takes none (as Centrifugo's cache recovery)."""
    node = session.node
    limit = 1 if match is None else node.config.client.recovery_max_publication_limit
    hist = await node.history(resolved, HistoryOptions(limit=limit, reverse=True, meta_ttl=node.meta_ttl(resolved)))
    top = hist.position
    result.positioned = True
    result.recoverable = True
    result.epoch = top.epoch
    result.offset = top.offset
    holds_top = req.offset > 0 and req.offset == top.offset and req.epoch == top.epoch
    latest = hist.publications[0] if hist.publications else None
    found = latest if match is None else next((p for p in hist.publications if match(p.tags)), None)
    if holds_top:
        result.recovered = True
        result.offset = req.offset
    elif latest is not None and latest.offset == top.offset and found is not None:
        result.recovered = True
        result.offset = req.offset  # the client moves on with the publication, as after any recovery
        result.publications = [found]
    elif req.flag & FLAG_REJECT_UNRECOVERED:
        raise ErrUnrecoverablePosition()
    return top.offset


def with_map_presence(sub: Subscription, resolved: ResolvedChannel, user: str) -> None:
    """Where the subscriber's map presence entries go (the namespace's presence prefixes);
    anonymous subscribers have no user entry."""
    opts = resolved.options
    if opts.map_clients_presence_channel_prefix:
        sub.clients_presence = opts.map_clients_presence_channel_prefix + resolved.name
    if opts.map_users_presence_channel_prefix and user:
        sub.users_presence = opts.map_users_presence_channel_prefix + resolved.name


async def refresh_map_presence(node: Node, sub: Subscription) -> None:
    """Add or keep alive the subscriber's map presence entries (a change is published only
    when an entry is new)."""
    if sub.clients_presence:
        await node.map_presence_add(sub.clients_presence, sub.info.client, sub.info)
    if sub.users_presence:
        await node.map_presence_add(sub.users_presence, sub.info.user, None)


async def _announce(session: SubscribingSession, channel: str, sub: Subscription) -> None:
    node = session.node
    try:
        if sub.presence:
            await node.presence.add_presence(channel, sub.info, PRESENCE_TTL)
        await refresh_map_presence(node, sub)
        if sub.join_leave:
            await node.broker.publish_join(channel, sub.info)
    except BrokerError:
        pass  # presence is refreshed on the next sweep; a lost join is not fatal


async def remove_subscription(session: SubscribingSession, channel: str) -> None:
    """Forget the subscription locally and in the engine; announce the leave."""
    sub = session.subs.pop(channel, None)
    if sub is None:
        return
    node = session.node
    if sub.shared_poll:
        node.shared_poll.untrack(channel, session)
        return
    last = node.hub.unsubscribe(channel, session)
    try:
        if last:
            await node.broker.unsubscribe(channel)
        if sub.live and sub.presence:
            await node.presence.remove_presence(channel, session.client_id, session.user)
        # A user's entry stays until its key_ttl: the user may have other connections, or be
        # back in a moment.
        if sub.live and sub.clients_presence:
            await node.map_presence_remove(sub.clients_presence, session.client_id)
        if sub.live and sub.remove_own_entry:
            await node.map_presence_remove(channel, session.client_id)
        if sub.live and sub.join_leave:
            await node.broker.publish_leave(channel, sub.info)
    except BrokerError:
        pass  # presence entries expire on their own; the subscription is gone locally
