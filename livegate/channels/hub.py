"""The Hub: which local connections are subscribed to what, and the fan-out.

Fan-out encodes each push once and hands the same bytes to every subscriber's ``write``,
which puts them straight into the transport buffer: no task, no ``await`` and no queue
object per message. When one batch holds several messages for a connection they are joined
into one frame (``\\n``-separated, as the JSON protocol allows).

``write`` must never change the hub synchronously (a slow subscriber is closed later, and
removed when its connection ends), so fan-out can iterate the live dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from livegate.metrics import METRICS
from livegate.protocol.codec import encode_join_push, encode_leave_push, encode_pub_push
from livegate.protocol.types import ClientInfo, Publication

__all__ = ["Hub", "Subscriber", "JOIN_LEAVE"]

#: Subscription flag: the subscriber receives join/leave pushes of the channel.
JOIN_LEAVE = 1


class Subscriber(Protocol):
    client_id: str
    user: str

    def write(self, payload: bytes, frame: bytes | None = None) -> None:
        """Queue ``payload`` (one or more ``\\n``-joined messages) for sending; never awaits.

        ``frame`` is ``payload`` already framed for the transport, when the caller has it.
        """
        ...


class Hub:
    def __init__(self, framer: Callable[[bytes], bytes] = bytes) -> None:
        self._framer = framer
        self._subs: dict[str, dict[Subscriber, int]] = {}
        # Subscribers whose subscribe is in flight: live publications wait here as
        # (offset, payload) until the subscribe reply has been written.
        self._pending: dict[str, dict[Subscriber, list[tuple[int, bytes]]]] = {}
        self._clients: dict[str, Subscriber] = {}
        self._users: dict[str, dict[str, Subscriber]] = {}

    # -- connections -------------------------------------------------------------------

    def add_connection(self, sub: Subscriber) -> None:
        self._clients[sub.client_id] = sub
        self._users.setdefault(sub.user, {})[sub.client_id] = sub

    def remove_connection(self, sub: Subscriber) -> None:
        self._clients.pop(sub.client_id, None)
        conns = self._users.get(sub.user)
        if conns is not None:
            conns.pop(sub.client_id, None)
            if not conns:
                del self._users[sub.user]

    def connection(self, client_id: str) -> Subscriber | None:
        return self._clients.get(client_id)

    def user_connections(self, user: str) -> list[Subscriber]:
        return list(self._users.get(user, {}).values())

    def connections(self) -> list[Subscriber]:
        return list(self._clients.values())

    @property
    def num_clients(self) -> int:
        return len(self._clients)

    @property
    def num_users(self) -> int:
        return len(self._users)

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(self, channel: str, sub: Subscriber) -> bool:
        """Register a subscribe in flight. Returns True when it is the channel's first local subscriber."""
        first = channel not in self._subs and channel not in self._pending
        self._pending.setdefault(channel, {})[sub] = []
        return first

    def activate(self, channel: str, sub: Subscriber, flags: int) -> list[tuple[int, bytes]] | None:
        """Make a pending subscription live; returns what was buffered meanwhile, in arrival
        order, or None when the subscribe is no longer pending (it was removed meanwhile)."""
        pending = self._pending.get(channel)
        if pending is None or sub not in pending:
            return None
        buffered = pending.pop(sub)
        if not pending:
            del self._pending[channel]
        self._subs.setdefault(channel, {})[sub] = flags
        return buffered

    def set_flags(self, channel: str, sub: Subscriber, flags: int) -> None:
        subs = self._subs.get(channel)
        if subs is not None and sub in subs:
            subs[sub] = flags

    def unsubscribe(self, channel: str, sub: Subscriber) -> bool:
        """Remove a live or pending subscription. Returns True when no local subscriber is left."""
        for table in (self._subs, self._pending):
            entries = table.get(channel)
            if entries is not None:
                entries.pop(sub, None)
                if not entries:
                    del table[channel]
        return channel not in self._subs and channel not in self._pending

    def channels(self) -> dict[str, int]:
        """Local channels with their number of live subscribers."""
        return {channel: len(subs) for channel, subs in self._subs.items()}

    def subscribers(self, channel: str) -> list[Subscriber]:
        return list(self._subs.get(channel, ()))

    def num_subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    @property
    def num_subscriptions(self) -> int:
        return sum(len(subs) for subs in self._subs.values())

    # -- fan-out -----------------------------------------------------------------------

    def handle_publications(self, batch: list[tuple[str, Publication]]) -> None:
        METRICS.publications.value += len(batch)
        if len(batch) == 1:
            channel, pub = batch[0]
            subs = self._subs.get(channel)
            pending = self._pending.get(channel)
            if not subs and not pending:
                return
            payload = encode_pub_push(channel, pub)
            if pending:
                for waiting in pending.values():
                    waiting.append((pub.offset, payload))
            if subs:
                frame = self._framer(payload)
                METRICS.pushes.value += len(subs)
                for sub in subs:
                    sub.write(payload, frame)
            return
        self._deliver_batch(batch)

    def _deliver_batch(self, batch: list[tuple[str, Publication]]) -> None:
        per_sub: dict[Subscriber, list[bytes]] = {}
        for channel, pub in batch:
            subs = self._subs.get(channel)
            pending = self._pending.get(channel)
            if not subs and not pending:
                continue
            payload = encode_pub_push(channel, pub)
            if pending:
                for waiting in pending.values():
                    waiting.append((pub.offset, payload))
            if subs:
                METRICS.pushes.value += len(subs)
                for sub in subs:
                    queued = per_sub.get(sub)
                    if queued is None:
                        per_sub[sub] = [payload]
                    else:
                        queued.append(payload)
        if not per_sub:
            return
        # Subscribers that got the same payloads (one, or several joined) share one frame.
        frames: dict[Any, tuple[bytes, bytes]] = {}
        for sub, payloads in per_sub.items():
            key = id(payloads[0]) if len(payloads) == 1 else tuple(map(id, payloads))
            shared = frames.get(key)
            if shared is None:
                joined = payloads[0] if len(payloads) == 1 else b"\n".join(payloads)
                shared = frames[key] = (joined, self._framer(joined))
            sub.write(shared[0], shared[1])

    def _push_join_leave(self, channel: str, payload: bytes) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        frame: bytes | None = None
        sent = 0
        for sub, flags in subs.items():
            if flags & JOIN_LEAVE:
                if frame is None:
                    frame = self._framer(payload)
                sub.write(payload, frame)
                sent += 1
        METRICS.pushes.value += sent

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        if channel in self._subs:
            self._push_join_leave(channel, encode_join_push(channel, info))

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        if channel in self._subs:
            self._push_join_leave(channel, encode_leave_push(channel, info))

    def broadcast_to(self, subs: Iterable[Subscriber], payload: bytes) -> None:
        frame = self._framer(payload)
        for sub in subs:
            sub.write(payload, frame)
