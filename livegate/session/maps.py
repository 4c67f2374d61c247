"""Map subscriptions (subscribe ``type`` 1, Centrifugo v6.8): a subscriber mirrors a map
channel's entries, then follows its changes live.

A subscribe is several commands, each answered with a phase:

* **state** (request phase 2): a page of entries (``state``) and, in every page, the stream
  position of the first page, frozen for the whole flow. Later pages leave out entries written
  after that position: the stream catch-up brings them. The last page goes live at once when
  the map has no stream, or when the stream is at most one page ahead.
* **stream** (phase 1): a page of the changes after the client's position; answered with
  phase 0 instead once the client is at most one page behind the top captured at the first
  stream request (with ``recover``, a reconnecting client starts here).
* **live** (phase 0): the subscription is registered in the hub (live publications wait there),
  the changes after the client's position are read, and the reply carries them; what arrived
  meanwhile follows the reply, without duplicates (``InFlight``).

The first command of a flow is authorised like any subscribe; the continuation commands are
accepted only while the session holds that flow (``session.map_pending``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from livegate.channels.broker import MAP_UNWRITTEN_TTL, HistoryOptions, MapSettings
from livegate.channels.hub import SubView
from livegate.channels.names import ResolvedChannel
from livegate.channels.tags_filter import TagsMatch
from livegate.errors import BrokerError
from livegate.protocol.codes import ErrBadRequest, ErrInternal, ErrPermissionDenied, ErrUnrecoverablePosition
from livegate.protocol.commands import SubscribeRequest
from livegate.protocol.replies import SubscribeResult
from livegate.protocol.types import Publication, StreamPosition
from livegate.session.context import Subscription
from livegate.session.subscriptions import Grant, InFlight, SubscribingSession, tags_match, with_map_presence

__all__ = ["PHASE_LIVE", "PHASE_STREAM", "PHASE_STATE", "MapFlow", "map_continuation", "subscribe_map",
           "CATCH_UP_TIMEOUT", "sweep_stale_flows", "new_flow"]

PHASE_LIVE, PHASE_STREAM, PHASE_STATE = 0, 1, 2
#: Subscribe ``type`` of a map subscription (echoed in every reply).
TYPE_MAP = 1
#: Seconds a flow may take from its first command to live; later continuations get 112.
CATCH_UP_TIMEOUT = 60.0


@dataclass(slots=True)
class MapFlow:
    """A map subscribe between its first command and live."""

    grant: Grant
    match: TagsMatch | None
    started: float
    delta: bool = False                      # fossil deltas per key, once live
    position: StreamPosition | None = None   # of the first state page (frozen)
    stream_top: int | None = None            # the top when the stream phase began


def sweep_stale_flows(session: SubscribingSession, keep: str) -> None:
    """Forget flows a client left half-way (they count against client.channel_limit), but
    ``keep``'s: its next command learns of its timeout (112)."""
    flows = session.map_pending
    if flows:
        cutoff = time.monotonic() - CATCH_UP_TIMEOUT
        for channel in [c for c, f in flows.items() if f.started < cutoff and c != keep]:
            del flows[channel]


def map_continuation(session: SubscribingSession, req: SubscribeRequest) -> MapFlow | None:
    """The flow this command continues, or None when it starts one (a state request without a
    cursor always starts over, e.g. after the client saw the epoch change).

    Raises:
        ErrPermissionDenied: a cursor with no flow to continue.
        ErrUnrecoverablePosition: the flow took longer than CATCH_UP_TIMEOUT.
    """
    flows = session.map_pending or {}
    flow = flows.get(req.channel)
    if req.phase == PHASE_STATE and not req.cursor:
        flows.pop(req.channel, None)
        return None
    if flow is None:
        if req.cursor:
            raise ErrPermissionDenied()
        return None
    if time.monotonic() - flow.started > CATCH_UP_TIMEOUT:
        flows.pop(req.channel, None)
        raise ErrUnrecoverablePosition()
    return flow


def new_flow(session: SubscribingSession, resolved: ResolvedChannel, req: SubscribeRequest, grant: Grant) -> MapFlow:
    match = tags_match(resolved, req)
    # Per-key deltas need every change of a key to reach the subscriber: not with a tags
    # filter (changes it refuses), nor without a stream (changes between the state read and
    # live are not caught up).
    delta = (req.delta == "fossil" and "fossil" in resolved.options.allowed_delta_types and match is None
             and resolved.options.map.has_stream)
    return MapFlow(grant, match, time.monotonic(), delta)


async def subscribe_map(session: SubscribingSession, resolved: ResolvedChannel, req: SubscribeRequest,
                        flow: MapFlow) -> SubscribeResult | tuple[SubscribeResult, InFlight]:
    """Answer one command of a map subscribe (``flow``: from ``map_continuation`` or ``new_flow``)."""
    if req.phase not in (PHASE_LIVE, PHASE_STREAM, PHASE_STATE):
        raise ErrBadRequest(message=f"bad request: unknown map subscribe phase {req.phase}")
    settings = session.node.map_settings(resolved)
    if req.phase == PHASE_STREAM and not settings.stream_size:
        raise ErrBadRequest(message="bad request: this map keeps no stream (map mode ephemeral)")
    if session.map_pending is None:
        session.map_pending = {}
    session.map_pending[req.channel] = flow
    try:
        if req.phase == PHASE_STATE:
            return await _state_page(session, resolved, req, flow, settings)
        if req.phase == PHASE_STREAM:
            return await _stream_page(session, resolved, req, flow, settings)
        return await _go_live(session, resolved, req, flow, settings, StreamPosition(req.offset, req.epoch),
                              None, recovery=True)
    except BrokerError as exc:
        _forget(session, req.channel, flow)
        raise ErrInternal() from exc
    except BaseException:
        _forget(session, req.channel, flow)
        raise


def _forget(session: SubscribingSession, channel: str, flow: MapFlow) -> None:
    if session.map_pending is not None and session.map_pending.get(channel) is flow:
        del session.map_pending[channel]


def _page_size(resolved: ResolvedChannel, req: SubscribeRequest) -> int:
    return resolved.options.map.page_size(req.limit)


def _filtered(pubs: list[Publication], match: TagsMatch | None) -> list[Publication]:
    return pubs if match is None else [p for p in pubs if match(p.tags)]


async def _state_page(session: SubscribingSession, resolved: ResolvedChannel, req: SubscribeRequest,
                      flow: MapFlow, settings: MapSettings) -> SubscribeResult | tuple[SubscribeResult, InFlight]:
    limit = _page_size(resolved, req)
    page = await session.node.broker.map_state(req.channel, settings, cursor=req.cursor, limit=limit)
    if flow.position is None or not req.cursor:
        flow.position = page.position
    frozen = flow.position
    if page.position.epoch != frozen.epoch or (req.epoch and req.epoch != frozen.epoch):
        raise ErrUnrecoverablePosition()  # the map was cleared or expired meanwhile: start over
    entries = page.entries
    if req.cursor and settings.stream_size:
        # Written after the first page: the stream catch-up brings them (in order, once).
        entries = [e for e in entries if e.offset <= frozen.offset]
    entries = _filtered(entries, flow.match)
    if not page.cursor and (not settings.stream_size or frozen.offset + limit >= page.position.offset):
        return await _go_live(session, resolved, req, flow, settings, frozen, entries, recovery=False)
    return SubscribeResult(type=TYPE_MAP, phase=PHASE_STATE, cursor=page.cursor, epoch=frozen.epoch,
                           offset=frozen.offset, state=entries, data_as_text=flow.delta)


async def _stream_page(session: SubscribingSession, resolved: ResolvedChannel, req: SubscribeRequest,
                       flow: MapFlow, settings: MapSettings) -> SubscribeResult | tuple[SubscribeResult, InFlight]:
    broker = session.node.broker
    since = StreamPosition(req.offset, req.epoch)
    if flow.stream_top is None:
        top = (await broker.history(req.channel, HistoryOptions(limit=0, unpublished_ttl=MAP_UNWRITTEN_TTL))).position
        if req.epoch != top.epoch:
            raise ErrUnrecoverablePosition()
        flow.stream_top = top.offset
    limit = _page_size(resolved, req)
    if req.offset + limit >= flow.stream_top:
        return await _go_live(session, resolved, req, flow, settings, since, None, recovery=True)
    hist = await broker.history(req.channel, HistoryOptions(limit=limit, since=since, unpublished_ttl=MAP_UNWRITTEN_TTL))
    pubs = hist.publications
    if hist.position.epoch != req.epoch or not pubs or pubs[0].offset != req.offset + 1:
        raise ErrUnrecoverablePosition()  # the stream no longer holds what comes after the client's position
    return SubscribeResult(type=TYPE_MAP, phase=PHASE_STREAM, epoch=hist.position.epoch, offset=pubs[-1].offset,
                           publications=_filtered(pubs, flow.match), data_as_text=flow.delta)


async def _go_live(session: SubscribingSession, resolved: ResolvedChannel, req: SubscribeRequest, flow: MapFlow,
                   settings: MapSettings, since: StreamPosition, state: list[Publication] | None, *,
                   recovery: bool) -> tuple[SubscribeResult, InFlight]:
    """Register the subscription, read the changes after ``since``, build the live reply."""
    node = session.node
    channel = req.channel
    grant = flow.grant
    _forget(session, channel, flow)
    if channel in session.subs or session.closing is not None:
        raise ErrPermissionDenied(message="subscription removed meanwhile")
    stream = settings.stream_size > 0
    sub = Subscription(info=session.info(grant.chan_info), recoverable=stream, positioned=stream,
                       expire_at=grant.expire_at, remove_own_entry=resolved.options.map.remove_client_on_unsubscribe)
    with_map_presence(sub, resolved, session.user)
    session.subs[channel] = sub
    view = SubView(flow.match, flow.delta, has_base=True) if flow.match is not None or flow.delta else None
    node.hub.subscribe(channel, session, view)
    flight = InFlight(session, channel, sub)
    result = SubscribeResult(type=TYPE_MAP, phase=PHASE_LIVE, recoverable=stream, state=state or None,
                             was_recovering=recovery and req.recover, recovered=recovery and req.recover,
                             delta=flow.delta)
    try:
        await node.broker.subscribe(channel)
        if stream:
            limit = resolved.options.map.live_transition_max_publication_limit or resolved.options.map.page_size(1 << 30)
            hist = await node.broker.history(channel, HistoryOptions(limit=limit + 1, since=since,
                                                                     unpublished_ttl=MAP_UNWRITTEN_TTL))
            top = hist.position
            pubs = hist.publications
            lost = since.offset < top.offset and (not pubs or pubs[0].offset != since.offset + 1)
            if since.epoch != top.epoch or len(pubs) > limit or lost or since.offset > top.offset:
                raise ErrUnrecoverablePosition()
            flight.sent_up_to = top.offset
            result.epoch, result.offset = top.epoch, top.offset
            result.publications = _filtered(pubs, flow.match)
        else:
            result.epoch = since.epoch
    except BaseException as exc:
        await flight.fail(exc)
    return await flight.finish(result, grant)
