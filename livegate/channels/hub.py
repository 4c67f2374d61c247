"""The Hub: which local connections are subscribed to what, and the fan-out.

Fan-out encodes each push once per codec in use, frames it once per ``Wire`` in use, and
hands the same bytes to every subscriber's ``write``, which puts them straight into the
transport buffer: no task, no ``await`` and no queue object per message. When one batch
holds several messages for a connection they are joined into one frame (the codec's join).
With one Wire in use (the usual case) the fan-out does no per-subscriber lookups at all.

``write`` and ``close`` must never change the hub synchronously (a slow subscriber is closed,
and removed when its connection ends), so fan-out can iterate the live dicts.

A publication a codec cannot carry (binary data for JSON connections) closes the subscribers
of that codec with 3506 instead of reaching them; the others get it as usual.

A subscriber with a ``SubView`` (a tags filter, or delta compression) is served one by one on
its channels: a publication its filter refuses is not sent to it, and a delta subscriber gets
the publication's data as a fossil delta against the channel's previous publication once it
holds that one (the first after subscribing goes whole). The delta is computed once per
publication and shared; channels without such subscribers keep the shared fast path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from livegate.channels.tags_filter import TagsMatch
from livegate.metrics import NodeMetrics
from livegate.protocol.codec import Codec, Unencodable, Wire
from livegate.protocol.codes import INAPPROPRIATE_PROTOCOL, Disconnect
from livegate.protocol.fossil import create_delta
from livegate.protocol.types import ClientInfo, Publication

__all__ = ["Hub", "Subscriber", "SubView", "JOIN_LEAVE"]

#: Subscription flag: the subscriber receives join/leave pushes of the channel.
JOIN_LEAVE = 1


class Subscriber(Protocol):
    client_id: str
    user: str
    wire: Wire

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        """Queue ``payload`` (one or more joined messages of ``wire.codec``) for sending; never awaits.

        ``frame`` is ``payload`` already framed by ``wire.frame``, when the caller has it.
        """
        ...

    def close(self, disconnect: Disconnect) -> None:
        """Start closing the connection; never awaits."""
        ...


S = TypeVar("S", bound=Subscriber)


class SubView:
    """How one subscription differs from the shared fan-out."""

    __slots__ = ("match", "delta", "has_base", "floor")

    def __init__(self, match: TagsMatch | None = None, delta: bool = False, has_base: bool = False) -> None:
        #: The tags filter: publications whose tags it refuses are not sent.
        self.match = match
        #: Delta compression (fossil) was negotiated.
        self.delta = delta
        #: The subscriber holds the channel's previous publication: the next may be a delta.
        #: (A map subscriber holds every entry's value from the start: its deltas are per key.)
        self.has_base = has_base
        #: Publications up to this offset were in the subscribe reply: one that comes late from
        #: the engine's pub/sub (after the subscription went live) is not sent again. 0: none.
        self.floor = 0


class _Variants:
    """One publication as delta subscribers get it: whole (data as the delta base) or as a
    delta, each encoded once per codec and framed once per Wire."""

    __slots__ = ("channel", "pub", "delta", "by_key")

    def __init__(self, channel: str, pub: Publication, delta: bytes | None) -> None:
        self.channel = channel
        self.pub = pub
        self.delta = delta
        self.by_key: dict[tuple[Wire, bool], tuple[bytes, bytes]] = {}

    def framed(self, wire: Wire, as_delta: bool) -> tuple[bytes, bytes]:
        key = (wire, as_delta)
        shared = self.by_key.get(key)
        if shared is None:
            try:
                payload = wire.codec.encode_publication_delta(
                    self.channel, self.pub, self.delta if as_delta and self.delta is not None else self.pub.data,
                    as_delta)
            except Unencodable:
                payload = b""
            shared = self.by_key[key] = (payload, wire.frame(payload) if payload else b"")
        return shared


class _Encoded:
    """One event encoded lazily, once per codec, and framed once per Wire. A codec that
    cannot carry it gets ``b""`` (callers close those subscribers instead)."""

    __slots__ = ("encode", "by_codec", "by_wire")

    def __init__(self, encode: Callable[[Codec], bytes]) -> None:
        self.encode = encode
        self.by_codec: dict[Codec, bytes] = {}
        self.by_wire: dict[Wire, tuple[bytes, bytes]] = {}

    def payload(self, codec: Codec) -> bytes:
        payload = self.by_codec.get(codec)
        if payload is None:
            try:
                payload = self.encode(codec)
            except Unencodable:
                payload = b""
            self.by_codec[codec] = payload
        return payload

    def framed(self, wire: Wire) -> tuple[bytes, bytes]:
        shared = self.by_wire.get(wire)
        if shared is None:
            payload = self.payload(wire.codec)
            shared = self.by_wire[wire] = (payload, wire.frame(payload) if payload else b"")
        return shared


def _publication_encoder(channel: str, pub: Publication) -> Callable[[Codec], bytes]:
    return lambda codec: codec.encode_publication(channel, pub)


T = TypeVar("T")


def _queue(subs: Iterable[S], per_sub: dict[S, list[T]], item: T) -> None:
    """Add one batch item (a payload, or an index) to what each subscriber gets."""
    for sub in subs:
        queued = per_sub.get(sub)
        if queued is None:
            per_sub[sub] = [item]
        else:
            queued.append(item)


class Hub(Generic[S]):
    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self._subs: dict[str, dict[S, int]] = {}
        # Subscribers whose subscribe is in flight: live publications wait here as
        # (offset, payload in the subscriber's codec) until the subscribe reply was written.
        self._pending: dict[str, dict[S, list[tuple[int, bytes]]]] = {}
        self._clients: dict[str, S] = {}
        self._users: dict[str, dict[str, S]] = {}
        # Subscriptions (live or pending) per Wire: with one Wire in use, fan-out takes the fast path.
        self._wires: dict[Wire, int] = {}
        self._only_wire: Wire | None = None
        # Subscriptions with a filter or delta compression, per channel; and the data of the
        # previous publication of channels with delta subscribers (the next delta's source).
        self._views: dict[str, dict[S, SubView]] = {}
        self._delta_subs: dict[str, int] = {}  # channel -> its delta subscribers (in _views)
        self._delta_prev: dict[str, bytes] = {}

    # -- connections -------------------------------------------------------------------

    def add_connection(self, sub: S) -> None:
        self._clients[sub.client_id] = sub
        self._users.setdefault(sub.user, {})[sub.client_id] = sub

    def remove_connection(self, sub: S) -> None:
        self._clients.pop(sub.client_id, None)
        conns = self._users.get(sub.user)
        if conns is not None:
            conns.pop(sub.client_id, None)
            if not conns:
                del self._users[sub.user]

    def connection(self, client_id: str) -> S | None:
        return self._clients.get(client_id)

    def user_connections(self, user: str) -> list[S]:
        return list(self._users.get(user, {}).values())

    def connections(self) -> list[S]:
        return list(self._clients.values())

    @property
    def num_clients(self) -> int:
        return len(self._clients)

    @property
    def num_users(self) -> int:
        return len(self._users)

    # -- subscriptions -----------------------------------------------------------------

    def _count_wire(self, wire: Wire, delta: int) -> None:
        n = self._wires.get(wire, 0) + delta
        if n:
            self._wires[wire] = n
        else:
            del self._wires[wire]
        self._only_wire = next(iter(self._wires)) if len(self._wires) == 1 else None

    def subscribe(self, channel: str, sub: S, view: SubView | None = None) -> bool:
        """Register a subscribe in flight. Returns True when it is the channel's first local subscriber."""
        first = channel not in self._subs and channel not in self._pending
        pending = self._pending.setdefault(channel, {})
        if sub not in pending and sub not in self._subs.get(channel, ()):
            self._count_wire(sub.wire, 1)
        pending[sub] = []
        self._set_view(channel, sub, view)
        return first

    def _set_view(self, channel: str, sub: S, view: SubView | None) -> None:
        views = self._views.get(channel)
        old = views.pop(sub, None) if views is not None else None
        if view is not None:
            if views is None:
                views = self._views[channel] = {}
            views[sub] = view
        elif views is not None and not views:
            del self._views[channel]
        change = (view is not None and view.delta) - (old is not None and old.delta)
        if change:
            count = self._delta_subs.get(channel, 0) + change
            if count:
                self._delta_subs[channel] = count
            else:  # no delta subscriber left: no base to keep
                del self._delta_subs[channel]
                self._delta_prev.pop(channel, None)

    def forget_delta_bases(self, channels: Iterable[str]) -> None:
        """Publications of these channels may have been missed: the next goes whole to every
        delta subscriber."""
        for channel in channels:
            self._delta_prev.pop(channel, None)
            for view in self._views.get(channel, {}).values():
                view.has_base = False

    def activate(self, channel: str, sub: S, flags: int, floor: int = 0) -> list[tuple[int, bytes]] | None:
        """Make a pending subscription live; returns what was buffered meanwhile, in arrival
        order, or None when the subscribe is no longer pending (it was removed meanwhile).
        ``floor``: the reply held the publications up to this offset; one of them that reaches
        the hub only now (the engine's pub/sub lagging behind its history read) is dropped."""
        pending = self._pending.get(channel)
        if pending is None or sub not in pending:
            return None
        buffered = pending.pop(sub)
        if not pending:
            del self._pending[channel]
        self._subs.setdefault(channel, {})[sub] = flags
        if floor:
            views = self._views.setdefault(channel, {})
            view = views.get(sub)
            if view is None:
                view = views[sub] = SubView()
            view.floor = floor
        return buffered

    def unsubscribe(self, channel: str, sub: S) -> bool:
        """Remove a live or pending subscription. Returns True when no local subscriber is left."""
        removed = False
        for table in (self._subs, self._pending):
            entries: dict[S, Any] | None = table.get(channel)
            if entries is not None and sub in entries:
                del entries[sub]
                removed = True
                if not entries:
                    del table[channel]
        if removed:
            self._count_wire(sub.wire, -1)
            self._set_view(channel, sub, None)
        return channel not in self._subs and channel not in self._pending

    def channels(self) -> dict[str, int]:
        """Local channels with their number of live subscribers."""
        return {channel: len(subs) for channel, subs in self._subs.items()}

    def subscribers(self, channel: str) -> list[S]:
        return list(self._subs.get(channel, ()))

    def num_subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    @property
    def num_subscriptions(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    # -- fan-out -----------------------------------------------------------------------

    def handle_publications(self, batch: list[tuple[str, Publication]]) -> None:
        self.metrics.publications += len(batch)
        if self._views:
            batch = self._deliver_viewed(batch)
            if not batch:
                return
        wire = self._only_wire
        if len(batch) == 1 and wire is not None:
            channel, pub = batch[0]
            subs = self._subs.get(channel)
            pending = self._pending.get(channel)
            if not subs and not pending:
                return
            try:
                payload = wire.codec.encode_publication(channel, pub)
            except Unencodable:
                self._refuse(channel)
                return
            if pending:
                for waiting in pending.values():
                    waiting.append((pub.offset, payload))
            if subs:
                frame = wire.frame(payload)
                self.metrics.pushes += len(subs)
                for sub in subs:
                    sub.write(payload, frame)
            return
        self._deliver_batch(batch)

    def _deliver_viewed(self, batch: list[tuple[str, Publication]]) -> list[tuple[str, Publication]]:
        """Deliver the publications of channels with filtered or delta subscribers; returns the
        rest (per channel, the order is kept; across channels a connection may see these first)."""
        views = self._views
        rest: list[tuple[str, Publication]] = []
        for item in batch:
            if item[0] in views:
                self._deliver_one_viewed(item[0], item[1])
            else:
                rest.append(item)
        return rest

    def _deliver_one_viewed(self, channel: str, pub: Publication) -> None:
        views = self._views[channel]
        subs = self._subs.get(channel)
        pending = self._pending.get(channel)
        plain = _Encoded(_publication_encoder(channel, pub))
        variants: _Variants | None = None
        if channel in self._delta_subs:
            if pub.key:  # a map entry: its delta base is the key's previous value (the engine sends it)
                prev = pub.prev
            else:
                prev = self._delta_prev.get(channel)
                self._delta_prev[channel] = pub.data
            delta: bytes | None = None
            if prev is not None and any(v.delta and v.has_base for v in views.values()):
                patch = create_delta(prev, pub.data)
                delta = patch if len(patch) < len(pub.data) else None  # no gain: whole
            variants = _Variants(channel, pub, delta)
        if pending:
            for waiting_sub, waiting in pending.items():
                view = views.get(waiting_sub)
                if view is not None and view.match is not None and not view.match(pub.tags):
                    continue
                if view is not None and view.delta and variants is not None:
                    payload = variants.framed(waiting_sub.wire, False)[0]
                else:
                    payload = plain.payload(waiting_sub.wire.codec)
                if payload:
                    waiting.append((pub.offset, payload))
                else:
                    waiting_sub.close(INAPPROPRIATE_PROTOCOL)
        if not subs:
            return
        pushes = 0
        floors_done: list[S] = []
        for sub in subs:
            view = views.get(sub)
            if view is None:
                payload, frame = plain.framed(sub.wire)
            else:
                if view.floor:
                    if pub.offset and pub.offset <= view.floor:
                        continue  # in its subscribe reply already
                    view.floor = 0
                    floors_done.append(sub)
                if view.match is not None and not view.match(pub.tags):
                    continue
                if view.delta and variants is not None:
                    as_delta = view.has_base and variants.delta is not None
                    payload, frame = variants.framed(sub.wire, as_delta)
                    if as_delta and not payload:  # this codec cannot carry the delta: whole
                        payload, frame = variants.framed(sub.wire, False)
                    view.has_base = bool(payload)
                else:
                    payload, frame = plain.framed(sub.wire)
            if payload:
                pushes += 1
                sub.write(payload, frame)
            else:
                sub.close(INAPPROPRIATE_PROTOCOL)
        self.metrics.pushes += pushes
        for sub in floors_done:  # a view that only held a floor: the fast path again
            view = views.get(sub)
            if view is not None and view.match is None and not view.delta and not view.floor:
                del views[sub]
        if not views:
            del self._views[channel]

    def _deliver_batch(self, batch: list[tuple[str, Publication]]) -> None:
        wire = self._only_wire
        if wire is None:
            self._deliver_batch_wires(batch)
            return
        codec = wire.codec
        # One Wire: per subscriber, the payloads it gets, each encoded once.
        per_sub: dict[S, list[bytes]] = {}
        pushes = 0
        for channel, pub in batch:
            subs = self._subs.get(channel)
            pending = self._pending.get(channel)
            if not subs and not pending:
                continue
            try:
                payload = codec.encode_publication(channel, pub)
            except Unencodable:
                self._refuse(channel)
                continue
            if pending:
                for waiting in pending.values():
                    waiting.append((pub.offset, payload))
            if subs:
                pushes += len(subs)
                _queue(subs, per_sub, payload)
        self.metrics.pushes += pushes
        # Subscribers that got the same payloads (one, or several joined) share one frame.
        frames: dict[Any, tuple[bytes, bytes]] = {}
        for sub, payloads in per_sub.items():
            key = id(payloads[0]) if len(payloads) == 1 else tuple(map(id, payloads))
            shared = frames.get(key)
            if shared is None:
                joined = payloads[0] if len(payloads) == 1 else codec.join(payloads)
                shared = frames[key] = (joined, wire.frame(joined))
            sub.write(shared[0], shared[1])

    def _deliver_batch_wires(self, batch: list[tuple[str, Publication]]) -> None:
        """Several Wires in use: each publication encoded at most once per codec, each joined
        payload framed once per Wire."""
        encoded: list[_Encoded] = []
        per_sub: dict[S, list[int]] = {}
        pushes = 0
        for channel, pub in batch:
            subs = self._subs.get(channel)
            pending = self._pending.get(channel)
            if not subs and not pending:
                continue
            index = len(encoded)
            item = _Encoded(_publication_encoder(channel, pub))
            encoded.append(item)
            if pending:
                for waiting_sub, waiting in pending.items():
                    payload = item.payload(waiting_sub.wire.codec)
                    if payload:
                        waiting.append((pub.offset, payload))
                    else:
                        waiting_sub.close(INAPPROPRIATE_PROTOCOL)
            if subs:
                pushes += len(subs)
                _queue(subs, per_sub, index)
        self.metrics.pushes += pushes
        frames: dict[Any, tuple[bytes, bytes]] = {}
        for sub, indexes in per_sub.items():
            sub_wire = sub.wire
            key = (sub_wire, *indexes)
            shared = frames.get(key)
            if shared is None:
                payloads = [encoded[i].payload(sub_wire.codec) for i in indexes]
                if all(payloads):
                    joined = sub_wire.codec.join(payloads)
                    shared = frames[key] = (joined, sub_wire.frame(joined))
                else:
                    shared = frames[key] = (b"", b"")
            if shared[0]:
                sub.write(shared[0], shared[1])
            else:
                sub.close(INAPPROPRIATE_PROTOCOL)

    def _refuse(self, channel: str) -> None:
        """The one Wire in use cannot carry a publication of ``channel``: close its subscribers."""
        for table in (self._subs, self._pending):
            for sub in list(table.get(channel, ())):
                sub.close(INAPPROPRIATE_PROTOCOL)

    def _push_join_leave(self, channel: str, event: _Encoded) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        sent = 0
        for sub, flags in subs.items():
            if flags & JOIN_LEAVE:
                payload, frame = event.framed(sub.wire)
                sub.write(payload, frame)
                sent += 1
        self.metrics.pushes += sent

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        if channel in self._subs:
            self._push_join_leave(channel, _Encoded(lambda c: c.encode_join(channel, info)))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        if channel in self._subs:
            self._push_join_leave(channel, _Encoded(lambda c: c.encode_leave(channel, info)))
