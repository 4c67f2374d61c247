"""Shared poll channels (Centrifugo v6.8, subscribe ``type`` 4): clients track keys, the node
polls the application for the keys its connections track, and pushes each key's new versions
to the connections tracking it (never to others).

Per node and channel there is one worker task. It polls every ``refresh_interval`` (keys in
batches of ``refresh_batch_size``), and at once for keys a connection just started tracking
that the node has no value for (or that a connection needs the current value of). The
backend is the namespace's ``shared_poll.endpoint`` (HTTP POST) or, without one, the app's
``shared_poll_refresh`` hook; both take ``{"channel": ..., "items": [{"key", "version"?}]}``
and answer ``{"epoch"?, "items": [{"key", "data", "version"?, "removed"?}]}`` (the HTTP
backend inside ``{"result": ...}``).

Versions: in ``versioned`` mode the backend gives them (a new ``epoch`` means the versions
start over: tracking connections get an unsubscribe push 2500 and subscribe again); in
versionless mode (the default) the node numbers the changes itself, detecting them by a
digest of the data, and the channel's epoch is the node's (new when the channel's worker
starts). A connection gets a key's value only when its version is newer than the one it holds.

Signatures (``verify_signature``): the application signs the keys a user may track;
``"<iat>:<exp>:<hex>"`` with hex = HMAC-SHA256(secret, iat NUL exp NUL user NUL channel NUL
sha256hex(keys joined by NUL)).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import json
import logging
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from livegate.config import SharedPollOptions
from livegate.protocol.codec import Codec, Unencodable
from livegate.protocol.fossil import create_delta
from livegate.protocol.types import Publication

__all__ = ["SharedPollManager", "Tracker", "verify_signature", "SignatureError", "GRACE"]

log = logging.getLogger("livegate.shared_poll")

#: Seconds a signature stays good after its expiry (clock skew, a refresh in flight).
GRACE = 5


class Tracker(Protocol):
    """A connection that tracks keys (a Session)."""

    @property
    def client_id(self) -> str: ...
    @property
    def codec(self) -> Codec: ...

    def write(self, payload: bytes) -> None: ...
    def unsubscribe_insufficient(self, channel: str) -> None: ...


class SignatureError(Exception):
    """Why a track batch's signature is refused: "invalid" or "expired"."""


def _expected(secret: str, iat: str, exp: str, user: str, channel: str, keys: list[str]) -> str:
    keys_hash = hashlib.sha256("\x00".join(keys).encode()).hexdigest()
    payload = f"{iat}\x00{exp}\x00{user}\x00{channel}\x00{keys_hash}".encode()
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def verify_signature(signature: str, keys: list[str], user: str, channel: str, *, secret: str,
                     previous: str = "", previous_until: int = 0, now: float | None = None) -> int:
    """The batch's expiry (unix s; 0: never).

    Raises:
        SignatureError: "invalid" (not signed with the secret, nor with the previous one while it
            is still accepted) or "expired" (past its expiry and the grace period).
    """
    parts = signature.split(":", 2)
    if len(parts) != 3:
        raise SignatureError("invalid")
    iat, exp, mac = parts
    iat_n = int(iat) if iat.isascii() and iat.isdigit() else 0
    exp_n = int(exp) if exp.isascii() and exp.isdigit() else 0
    given = mac.encode()
    good = hmac.compare_digest(given, _expected(secret, iat, exp, user, channel, keys).encode())
    if not good and previous and not (previous_until and iat_n > previous_until):
        good = hmac.compare_digest(given, _expected(previous, iat, exp, user, channel, keys).encode())
    if not good:
        raise SignatureError("invalid")
    if exp_n and exp_n + GRACE < (time.time() if now is None else now):
        raise SignatureError("expired")
    return exp_n


def _new_epoch() -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(8))


@dataclass(slots=True)
class _Item:
    version: int = 0
    digest: bytes = b""
    needs_broadcast: bool = False   # a tracker needs the current value: send it on the next answer
    trackers: dict[Tracker, int] = field(default_factory=dict)  # -> the version it holds
    expires: dict[Tracker, float] = field(default_factory=dict)  # -> when its signature expires (unix s)
    ready: set[Tracker] = field(default_factory=set)  # got a value since it (re)tracked: a delta base


class _Channel:
    __slots__ = ("name", "opts", "epoch", "counter", "items", "urgent", "wake", "task", "stop_at", "by_tracker",
                 "expiry", "next_expiry_check", "delta")

    def __init__(self, name: str, opts: SharedPollOptions, epoch: str) -> None:
        self.name = name
        self.opts = opts
        self.epoch = epoch
        self.counter = 0
        self.items: dict[str, _Item] = {}
        self.urgent: set[str] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.stop_at = 0.0  # monotonic; when the channel is left with no key
        self.by_tracker: dict[Tracker, set[str]] = {}  # what each connection tracks here
        self.expiry: list[tuple[float, int, str, Tracker]] = []  # heap: (expires, seq, key, tracker)
        self.next_expiry_check = 0.0
        self.delta: set[Tracker] = set()  # trackers that negotiated fossil deltas


Backend = Callable[[str, dict[str, Any], float], Awaitable[dict[str, Any] | None]]

#: Versions are uint64 on the wire.
MAX_VERSION = (1 << 64) - 1
#: Backend epochs remembered for versioned channels that stopped (so a channel that stops and
#: starts again does not take the backend's epoch for a new one and send everyone away again).
EPOCHS_KEPT = 10_000
#: Seconds at least between two immediate polls of a channel (tracks coming in bursts share one).
URGENT_GAP = 0.05


class SharedPollManager:
    """This node's shared poll channels."""

    def __init__(self, backend: Backend, *, concurrency: int = 64) -> None:
        #: (endpoint, body, timeout) -> the answer's ``result`` (None: the call failed).
        self._backend = backend
        self._gate = asyncio.Semaphore(concurrency)
        self._channels: dict[str, _Channel] = {}
        self._node_epoch = _new_epoch()  # versionless channels not polled here yet
        self._epochs: OrderedDict[str, str] = OrderedDict()
        self._seq = 0

    # -- what connections do ---------------------------------------------------------------

    def epoch(self, channel: str, opts: SharedPollOptions) -> str:
        """The epoch a subscriber gets: the channel's when this node polls it, else the backend's
        last one (versioned) or the node's (versionless). Creates nothing."""
        ch = self._channels.get(channel)
        if ch is not None:
            return ch.epoch
        return self._epochs.get(channel, "") if opts.versioned else self._node_epoch

    def tracked_count(self, channel: str, tracker: object) -> int:
        ch = self._channels.get(channel)
        return 0 if ch is None else len(ch.by_tracker.get(cast(Tracker, tracker), ()))

    def is_tracking(self, channel: str, tracker: object, key: str) -> bool:
        ch = self._channels.get(channel)
        return ch is not None and key in ch.by_tracker.get(cast(Tracker, tracker), ())

    def track(self, channel: str, opts: SharedPollOptions, tracker: Tracker,
              items: Iterable[tuple[str, int, float]], *, delta: bool = False) -> None:
        """Start (or restart, with the version it now holds) tracking keys (key, version held,
        signature expiry or 0); polls at once what the node has no value for, or what the
        tracker needs the current value of."""
        ch = self._channels.get(channel)
        if ch is None:
            epoch = self._epochs.get(channel, "") if opts.versioned else _new_epoch()
            ch = self._channels[channel] = _Channel(channel, opts, epoch)
        ch.stop_at = 0.0
        mine = ch.by_tracker.setdefault(tracker, set())
        if delta:
            ch.delta.add(tracker)
        for key, held, expires in items:
            item = ch.items.get(key)
            if item is None:
                item = ch.items[key] = _Item()
                if held == 0:
                    ch.urgent.add(key)
            elif held == 0 or item.version > held:
                if not item.needs_broadcast:
                    item.needs_broadcast = True
                    if item.version > 0:
                        ch.urgent.add(key)
            item.trackers[tracker] = held
            item.ready.discard(tracker)  # the first value after a (re)track goes whole
            mine.add(key)
            if expires:
                item.expires[tracker] = expires
                self._seq += 1
                heapq.heappush(ch.expiry, (expires, self._seq, key, tracker))
            else:
                item.expires.pop(tracker, None)
        if ch.urgent:
            ch.wake.set()
        self._ensure_worker(ch)

    def untrack(self, channel: str, tracker: object, keys: Iterable[str] | None = None) -> None:
        """Stop tracking keys (None: every key of the channel). ``tracker``: any object, as
        connections that never tracked are untracked too (unsubscribe, disconnect)."""
        tracker = cast(Tracker, tracker)
        ch = self._channels.get(channel)
        if ch is None:
            return
        mine = ch.by_tracker.get(tracker)
        if mine is None:
            return
        for key in list(mine) if keys is None else keys:
            if key not in mine:
                continue
            mine.discard(key)
            item = ch.items.get(key)
            if item is None:
                continue
            item.trackers.pop(tracker, None)
            item.expires.pop(tracker, None)
            item.ready.discard(tracker)
            if not item.trackers:
                del ch.items[key]
                ch.urgent.discard(key)
        if not mine:
            del ch.by_tracker[tracker]
            ch.delta.discard(tracker)
        if not ch.items:
            self._emptied(ch)

    async def publish(self, channel: str, opts: SharedPollOptions, key: str, data: bytes, version: int,
                      epoch: str) -> None:
        """A version pushed by the application (server API): sent to the trackers of the key
        that hold an older one; a key nobody here tracks is ignored."""
        ch = self._channels.get(channel)
        if ch is None:
            return
        if self._epoch_changed(ch, epoch):
            return
        item = ch.items.get(key)
        if item is None or version <= item.version or version > MAX_VERSION:
            return
        item.version = version
        item.needs_broadcast = False
        self._send(ch, key, item, data)

    async def close(self) -> None:
        tasks = [ch.task for ch in self._channels.values() if ch.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:  # noqa: BLE001 (cancelled, or failed: it is gone either way)
                pass
        self._channels.clear()

    # -- the workers -----------------------------------------------------------------------

    def _emptied(self, ch: _Channel) -> None:
        """Nobody tracks a key of the channel here any more: it stops after the shutdown delay
        (at once when it has no worker)."""
        if ch.task is None or ch.task.done():
            if self._channels.get(ch.name) is ch:
                del self._channels[ch.name]
            return
        ch.stop_at = time.monotonic() + max(0.0, ch.opts.channel_shutdown_delay)
        ch.wake.set()

    def _ensure_worker(self, ch: _Channel) -> None:
        if ch.task is None or ch.task.done():
            ch.task = asyncio.get_running_loop().create_task(self._work(ch), name=f"shared-poll:{ch.name}")

    async def _work(self, ch: _Channel) -> None:
        interval = ch.opts.refresh_interval or 10.0
        next_cycle = time.monotonic() + interval
        while True:
            try:
                self._expire(ch)
                now = time.monotonic()
                if not ch.items and ch.stop_at and now >= ch.stop_at:
                    if self._channels.get(ch.name) is ch:
                        del self._channels[ch.name]  # the next tracker starts over
                    return
                if now >= next_cycle:  # the interval's poll of every key first: never starved
                    ch.urgent.clear()
                    await self._poll_keys(ch, sorted(ch.items))
                    next_cycle = now + interval
                    continue
                if ch.urgent:
                    keys = sorted(ch.urgent)
                    ch.urgent.clear()
                    await self._poll_keys(ch, keys)
                    await asyncio.sleep(URGENT_GAP)  # tracks arriving meanwhile: one poll for all
                    continue
                wait = next_cycle - now
                if ch.stop_at and not ch.items:
                    wait = min(wait, ch.stop_at - now)
                if ch.expiry:
                    wait = min(wait, max(0.0, ch.next_expiry_check - now))
                ch.wake.clear()
                try:
                    await asyncio.wait_for(ch.wake.wait(), max(wait, 0.0))
                except TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shared poll worker step failed", extra={"channel": ch.name})
                await asyncio.sleep(1.0)  # the next step may work (a bad answer is not the next one)

    def _expire(self, ch: _Channel) -> None:
        """Forget what connections track past their signature's expiry (and the extra delay
        they have to send a fresh one); checked at most once a second."""
        now_mono = time.monotonic()
        if now_mono < ch.next_expiry_check or not ch.expiry:
            return
        ch.next_expiry_check = now_mono + 1.0
        deadline = time.time() - ch.opts.track_expired_extra_delay
        heap = ch.expiry
        while heap and heap[0][0] < deadline:
            expires, _, key, tracker = heapq.heappop(heap)
            item = ch.items.get(key)
            if item is not None and item.expires.get(tracker) == expires:  # not renewed since
                self.untrack(ch.name, tracker, [key])

    async def _poll_keys(self, ch: _Channel, keys: list[str]) -> None:
        size = ch.opts.refresh_batch_size or 1000
        for start in range(0, len(keys), size):
            chunk = [k for k in keys[start:start + size] if k in ch.items]
            if chunk:
                await self._poll(ch, chunk)

    async def _poll(self, ch: _Channel, keys: list[str]) -> None:
        items: list[dict[str, Any]] = []
        sent: dict[str, int] = {}  # the versions the poll says the node has (prev_data is relative to them)
        for key in keys:
            item = ch.items[key]
            entry: dict[str, Any] = {"key": key}
            if ch.opts.versioned and item.version and not item.needs_broadcast:
                entry["version"] = sent[key] = item.version
            items.append(entry)
        async with self._gate:
            result = await self._backend(ch.opts.endpoint, {"channel": ch.name, "items": items},
                                         ch.opts.timeout)
        if result is not None:
            self._apply(ch, result, sent)

    def _epoch_changed(self, ch: _Channel, epoch: str) -> bool:
        """Versioned mode: a new backend epoch voids every version; trackers start over."""
        if not ch.opts.versioned or epoch == ch.epoch:
            return False
        ch.epoch = epoch
        self._epochs[ch.name] = epoch
        self._epochs.move_to_end(ch.name)
        while len(self._epochs) > EPOCHS_KEPT:
            self._epochs.popitem(last=False)
        trackers = list(ch.by_tracker)
        ch.items.clear()
        ch.urgent.clear()
        ch.by_tracker.clear()
        ch.delta.clear()
        ch.expiry.clear()
        for tracker in trackers:
            tracker.unsubscribe_insufficient(ch.name)
        self._emptied(ch)  # they track again after subscribing again (the shutdown delay keeps the worker)
        return True

    def _apply(self, ch: _Channel, result: dict[str, Any], sent: dict[str, int] | None = None) -> None:
        epoch = result.get("epoch")
        if self._epoch_changed(ch, epoch if isinstance(epoch, str) else ""):
            return
        answered = result.get("items")
        if not isinstance(answered, list):
            return
        removals: list[str] = []
        for entry in answered:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                continue
            key = entry["key"]
            item = ch.items.get(key)
            if item is None:
                continue
            if entry.get("removed") is True:
                removals.append(key)
                continue
            if "data" not in entry:
                continue
            data = _data_of(entry["data"])
            version = entry.get("version", 0)
            base = item.version
            # prev_data: the value at the version the poll said the node has (and still has).
            prev = (_data_of(entry["prev_data"]) if "prev_data" in entry and base and sent
                    and sent.get(key) == base else None)
            if data is None or type(version) is not int or not 0 <= version <= MAX_VERSION:
                log.warning("shared poll backend item refused (data not JSON, or version not a uint64)",
                            extra={"channel": ch.name})
                continue
            if version:  # versions from the backend
                if version > item.version:
                    item.version = version
                elif not (item.needs_broadcast and item.version and version == item.version):
                    continue
            else:  # versionless: a change of the data is a new version of the node's
                digest = hashlib.blake2b(data, digest_size=16).digest()
                if digest != item.digest:
                    item.digest = digest
                    ch.counter += 1
                    item.version = ch.counter
                elif not (item.needs_broadcast and item.version):
                    continue
            item.needs_broadcast = False
            self._send(ch, key, item, data, prev if version > base else None, base)
        for key in removals:
            self._remove(ch, key)

    def _send(self, ch: _Channel, key: str, item: _Item, data: bytes, prev: bytes | None = None,
              base: int = 0) -> None:
        """The key's new version to the trackers holding an older one. Trackers that negotiated
        deltas get it as a fossil delta against ``prev`` when they hold exactly ``base`` (the
        version ``prev`` is) and got a value since they tracked; else whole (JSON clients: the
        data as a JSON string, as the SDK expects on a delta subscription)."""
        pub = Publication(data, key=key, version=item.version)
        patch: bytes | None = None
        if prev is not None and ch.delta:
            candidate = create_delta(prev, data)
            patch = candidate if len(candidate) < len(data) else None
        encoded: dict[tuple[Codec, int], bytes | None] = {}  # (codec, 0 plain / 1 whole text / 2 delta)
        for tracker, held in list(item.trackers.items()):
            if held >= item.version:
                continue
            form = 0
            if tracker in ch.delta:
                form = 2 if patch is not None and held == base and tracker in item.ready else 1
            codec = tracker.codec
            if (codec, form) not in encoded:
                try:
                    if form == 0:
                        encoded[codec, form] = codec.encode_publication(ch.name, pub)
                    else:
                        encoded[codec, form] = codec.encode_publication_delta(
                            ch.name, pub, patch if form == 2 and patch is not None else data, form == 2)
                except Unencodable:
                    encoded[codec, form] = None
            payload = encoded[codec, form]
            if payload is None and form == 2:  # a delta this codec cannot carry (cut UTF-8): whole
                form = 1
                try:
                    payload = codec.encode_publication_delta(ch.name, pub, data, False)
                except Unencodable:
                    payload = None
            if payload is None:
                continue  # not JSON for a JSON client: it keeps its version and waits for the next
            tracker.write(payload)
            item.trackers[tracker] = item.version
            item.ready.add(tracker)

    def _remove(self, ch: _Channel, key: str) -> None:
        item = ch.items.pop(key, None)
        if item is None:
            return
        pub = Publication(b"", key=key, removed=True)
        for tracker in item.trackers:
            mine = ch.by_tracker.get(tracker)
            if mine is not None:
                mine.discard(key)
                if not mine:
                    del ch.by_tracker[tracker]
            try:
                tracker.write(tracker.codec.encode_publication(ch.name, pub))
            except Unencodable:
                pass
        if not ch.items:
            self._emptied(ch)


def _data_of(value: Any) -> bytes | None:
    """An answered item's data as JSON bytes: bytes (from a hook) as they are, any other value
    encoded (integers of any size kept exactly; None is JSON null). None: not encodable."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError):
        return None
