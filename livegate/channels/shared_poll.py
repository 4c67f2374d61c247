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
import hmac
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson

from livegate.config import SharedPollOptions
from livegate.protocol.codec import Codec, Unencodable
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
    iat_n = int(iat) if iat.isdigit() else 0
    exp_n = int(exp) if exp.isdigit() else 0
    good = hmac.compare_digest(mac, _expected(secret, iat, exp, user, channel, keys))
    if not good and previous and not (previous_until and iat_n > previous_until):
        good = hmac.compare_digest(mac, _expected(previous, iat, exp, user, channel, keys))
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


class _Channel:
    __slots__ = ("name", "opts", "epoch", "counter", "items", "urgent", "wake", "task", "stop_at")

    def __init__(self, name: str, opts: SharedPollOptions) -> None:
        self.name = name
        self.opts = opts
        self.epoch = "" if opts.versioned else _new_epoch()
        self.counter = 0
        self.items: dict[str, _Item] = {}
        self.urgent: set[str] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.stop_at = 0.0  # monotonic; when the channel is left with no key


Backend = Callable[[str, dict[str, Any], float], Awaitable[dict[str, Any] | None]]


class SharedPollManager:
    """This node's shared poll channels."""

    def __init__(self, backend: Backend, *, concurrency: int = 64) -> None:
        #: (endpoint, body, timeout) -> the answer's ``result`` (None: the call failed).
        self._backend = backend
        self._gate = asyncio.Semaphore(concurrency)
        self._channels: dict[str, _Channel] = {}

    # -- what connections do ---------------------------------------------------------------

    def epoch(self, channel: str, opts: SharedPollOptions) -> str:
        """The epoch a subscriber gets (versionless: the node's for the channel)."""
        return self._channel(channel, opts).epoch

    def tracked_count(self, channel: str, tracker: Tracker) -> int:
        ch = self._channels.get(channel)
        return 0 if ch is None else sum(1 for item in ch.items.values() if tracker in item.trackers)

    def is_tracking(self, channel: str, tracker: Tracker, key: str) -> bool:
        ch = self._channels.get(channel)
        item = None if ch is None else ch.items.get(key)
        return item is not None and tracker in item.trackers

    def track(self, channel: str, opts: SharedPollOptions, tracker: Tracker,
              items: Iterable[tuple[str, int, float]]) -> None:
        """Start (or restart, with the version it now holds) tracking keys (key, version held,
        signature expiry or 0); polls at once what the node has no value for, or what the
        tracker needs the current value of."""
        ch = self._channel(channel, opts)
        ch.stop_at = 0.0
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
            if expires:
                item.expires[tracker] = expires
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
        for key in list(ch.items) if keys is None else keys:
            item = ch.items.get(key)
            if item is None or item.trackers.pop(tracker, None) is None:
                continue
            item.expires.pop(tracker, None)
            if not item.trackers:
                del ch.items[key]
                ch.urgent.discard(key)
        if not ch.items:
            ch.stop_at = time.monotonic() + max(0.0, ch.opts.channel_shutdown_delay)
            ch.wake.set()

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
        if item is None or version <= item.version:
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

    def _channel(self, channel: str, opts: SharedPollOptions) -> _Channel:
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel(channel, opts)
        return ch

    def _ensure_worker(self, ch: _Channel) -> None:
        if ch.task is None or ch.task.done():
            ch.task = asyncio.get_running_loop().create_task(self._work(ch), name=f"shared-poll:{ch.name}")

    async def _work(self, ch: _Channel) -> None:
        interval = ch.opts.refresh_interval or 10.0
        next_cycle = time.monotonic() + interval
        try:
            while True:
                self._expire(ch)
                now = time.monotonic()
                if not ch.items and ch.stop_at and now >= ch.stop_at:
                    if self._channels.get(ch.name) is ch:
                        del self._channels[ch.name]  # the next subscriber starts over
                    return
                wait = next_cycle - now
                if ch.stop_at and not ch.items:
                    wait = min(wait, ch.stop_at - now)
                if not ch.urgent and wait > 0:
                    ch.wake.clear()
                    try:
                        await asyncio.wait_for(ch.wake.wait(), wait)
                    except TimeoutError:
                        pass
                if ch.urgent:
                    keys = sorted(ch.urgent)
                    ch.urgent.clear()
                    await self._poll_keys(ch, keys)
                    continue
                if time.monotonic() >= next_cycle:
                    started = time.monotonic()
                    await self._poll_keys(ch, sorted(ch.items))
                    next_cycle = started + interval
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("shared poll worker failed", extra={"channel": ch.name})

    def _expire(self, ch: _Channel) -> None:
        """Forget what connections track past their signature's expiry (and the extra delay
        they have to send a fresh one)."""
        deadline = time.time() - ch.opts.track_expired_extra_delay
        for key, item in list(ch.items.items()):
            gone = [t for t, exp in item.expires.items() if exp < deadline]
            for tracker in gone:
                self.untrack(ch.name, tracker, [key])

    async def _poll_keys(self, ch: _Channel, keys: list[str]) -> None:
        size = ch.opts.refresh_batch_size or 1000
        for start in range(0, len(keys), size):
            chunk = [k for k in keys[start:start + size] if k in ch.items]
            if chunk:
                await self._poll(ch, chunk)

    async def _poll(self, ch: _Channel, keys: list[str]) -> None:
        items: list[dict[str, Any]] = []
        for key in keys:
            item = ch.items[key]
            entry: dict[str, Any] = {"key": key}
            if ch.opts.versioned and item.version and not item.needs_broadcast:
                entry["version"] = item.version
            items.append(entry)
        async with self._gate:
            result = await self._backend(ch.opts.endpoint, {"channel": ch.name, "items": items},
                                         ch.opts.timeout)
        if result is not None:
            self._apply(ch, result)

    def _epoch_changed(self, ch: _Channel, epoch: str) -> bool:
        """Versioned mode: a new backend epoch voids every version; trackers start over."""
        if not ch.opts.versioned or epoch == ch.epoch:
            return False
        ch.epoch = epoch
        trackers = {t for item in ch.items.values() for t in item.trackers}
        ch.items.clear()
        ch.urgent.clear()
        for tracker in trackers:
            tracker.unsubscribe_insufficient(ch.name)
        return True

    def _apply(self, ch: _Channel, result: dict[str, Any]) -> None:
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
            data = _data_of(entry.get("data"))
            if data is None:
                continue
            version = entry.get("version")
            version = version if isinstance(version, int) and not isinstance(version, bool) and version > 0 else 0
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
            self._send(ch, key, item, data)
        for key in removals:
            self._remove(ch, key)

    def _send(self, ch: _Channel, key: str, item: _Item, data: bytes) -> None:
        pub = Publication(data, key=key, version=item.version)
        encoded: dict[Codec, bytes | None] = {}
        for tracker, held in list(item.trackers.items()):
            if held >= item.version:
                continue
            codec = tracker.codec
            if codec not in encoded:
                try:
                    encoded[codec] = codec.encode_publication(ch.name, pub)
                except Unencodable:
                    encoded[codec] = None
            payload = encoded[codec]
            if payload is None:
                continue  # not JSON for a JSON client: it keeps its version and waits for the next
            tracker.write(payload)
            item.trackers[tracker] = item.version

    def _remove(self, ch: _Channel, key: str) -> None:
        item = ch.items.pop(key, None)
        if item is None:
            return
        pub = Publication(b"", key=key, removed=True)
        for tracker in item.trackers:
            try:
                tracker.write(tracker.codec.encode_publication(ch.name, pub))
            except Unencodable:
                pass
        if not ch.items:
            ch.stop_at = time.monotonic() + max(0.0, ch.opts.channel_shutdown_delay)


def _data_of(value: Any) -> bytes | None:
    """An answered item's data as JSON bytes (None: it has none)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value)
    except TypeError:
        return None
