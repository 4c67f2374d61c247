"""The track signature check and the shared poll manager's version rules, without a server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import pytest

from livegate.channels.shared_poll import GRACE, SharedPollManager, SignatureError, verify_signature
from livegate.config import SharedPollOptions
from livegate.protocol.json_codec import JSON


def signed(keys: list[str], *, iat: int = 1000, exp: int = 5000, user: str = "u", channel: str = "c",
           secret: str = "s") -> str:
    keys_hash = hashlib.sha256("\x00".join(keys).encode()).hexdigest()
    mac = hmac.new(secret.encode(), f"{iat}\x00{exp}\x00{user}\x00{channel}\x00{keys_hash}".encode(),
                   hashlib.sha256).hexdigest()
    return f"{iat}:{exp}:{mac}"


def test_signature_rules():
    sig = signed(["a", "b"])
    assert verify_signature(sig, ["a", "b"], "u", "c", secret="s", now=2000) == 5000
    for keys, user, channel in [(["b", "a"], "u", "c"), (["a"], "u", "c"), (["a", "b"], "v", "c"),
                                (["a", "b"], "u", "d")]:
        with pytest.raises(SignatureError, match="invalid"):
            verify_signature(sig, keys, user, channel, secret="s", now=2000)
    assert verify_signature(sig, ["a", "b"], "u", "c", secret="s", now=5000 + GRACE) == 5000  # grace
    with pytest.raises(SignatureError, match="expired"):
        verify_signature(sig, ["a", "b"], "u", "c", secret="s", now=5001 + GRACE)
    assert verify_signature(signed(["a"], exp=0), ["a"], "u", "c", secret="s", now=10**10) == 0  # never expires
    for bad in ["", "1:2", "x:y:z", sig + "0", sig.upper()]:
        with pytest.raises(SignatureError):
            verify_signature(bad, ["a", "b"], "u", "c", secret="s", now=2000)


def test_previous_key_while_rotating():
    old = signed(["a"], iat=1000, secret="old")
    assert verify_signature(old, ["a"], "u", "c", secret="new", previous="old", now=2000) == 5000
    assert verify_signature(old, ["a"], "u", "c", secret="new", previous="old", previous_until=1000, now=2000) == 5000
    with pytest.raises(SignatureError):  # issued after the previous key's end
        verify_signature(old, ["a"], "u", "c", secret="new", previous="old", previous_until=999, now=2000)


class FakeTracker:
    codec = JSON

    def __init__(self, name: str) -> None:
        self.client_id = name
        self.got: list[dict[str, Any]] = []
        self.resubscribe = 0

    def write(self, payload: bytes) -> None:
        import orjson
        self.got.append(orjson.loads(payload)["push"]["pub"])

    def unsubscribe_insufficient(self, channel: str) -> None:
        self.resubscribe += 1


async def test_versions_reach_only_trackers_holding_older_ones():
    answers: list[dict[str, Any]] = []

    async def backend(endpoint: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return answers.pop(0) if answers else {"items": []}

    manager = SharedPollManager(backend)
    opts = SharedPollOptions(mode="versioned", refresh_interval=3600)
    old, new = FakeTracker("old"), FakeTracker("new")
    answers.append({"items": [{"key": "k", "data": {"v": 2}, "version": 2}]})
    manager.track("ch", opts, old, [("k", 0, 0.0)])
    await asyncio.sleep(0.05)
    assert old.got == [{"data": {"v": 2}, "key": "k", "version": 2}]
    # "new" holds version 2 already: the poll its track causes sends it nothing
    answers.append({"items": [{"key": "k", "data": {"v": 2}, "version": 2}]})
    manager.track("ch", opts, new, [("k", 2, 0.0)])
    await asyncio.sleep(0.05)
    assert new.got == [] and len(old.got) == 1
    await manager.publish("ch", opts, "k", b'{"v":1}', 1, "")  # older: nobody
    await manager.publish("ch", opts, "k", b'{"v":3}', 3, "")
    assert old.got[-1]["version"] == new.got[-1]["version"] == 3
    await manager.publish("ch", opts, "k", b'{"v":9}', 9, "other-epoch")  # versions void: subscribe again
    assert (old.resubscribe, new.resubscribe) == (1, 1) and manager.tracked_count("ch", old) == 0
    await manager.close()


def test_malformed_signatures_are_invalid_not_errors():
    good = signed(["a"])
    iat, exp, mac = good.split(":")
    for bad in [f"{iat}:{exp}:{'é' * 64}", f"²:{exp}:{mac}", f"{iat}:²:{mac}", "::", f"{iat}:{exp}:"]:
        with pytest.raises(SignatureError, match="invalid"):
            verify_signature(bad, ["a"], "u", "c", secret="s", now=2000)


async def test_a_bad_backend_answer_does_not_stop_the_channel():
    answers = [
        {"items": [{"key": "k", "data": 1, "version": 1 << 64}]},        # not a uint64
        {"items": [{"key": "k", "data": 1, "version": 1.5}, "junk", {"key": 5}]},
        {"items": [{"key": "k", "data": {"id": 123456789012345678901234}, "version": 2}]},
    ]

    async def backend(endpoint: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return answers.pop(0) if answers else {"items": []}

    manager = SharedPollManager(backend)
    opts = SharedPollOptions(mode="versioned", refresh_interval=0.05)
    t = FakeTracker("t")
    manager.track("ch", opts, t, [("k", 0, 0.0)])
    for _ in range(100):
        await asyncio.sleep(0.02)
        if t.got:
            break
    assert [(p["key"], p["version"]) for p in t.got] == [("k", 2)]
    # The data is passed on exactly (a big integer is not turned into a float).
    assert manager._channels["ch"].items["k"].version == 2
    await manager.close()


async def test_data_goes_out_as_the_backend_wrote_it():
    async def backend(endpoint: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {"items": [{"key": "k", "data": {"id": 123456789012345678901234}}]}

    manager = SharedPollManager(backend)
    raw: list[bytes] = []

    class RawTracker(FakeTracker):
        def write(self, payload: bytes) -> None:
            raw.append(payload)

    manager.track("ch", SharedPollOptions(refresh_interval=3600), RawTracker("r"), [("k", 0, 0.0)])
    for _ in range(50):
        await asyncio.sleep(0.02)
        if raw:
            break
    assert b"123456789012345678901234" in raw[0]
    await manager.close()


async def test_immediate_polls_never_starve_the_interval_poll():
    versions = {"victim": 1}
    polled: list[list[str]] = []

    async def backend(endpoint: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        keys = [i["key"] for i in body["items"]]
        polled.append(keys)
        await asyncio.sleep(0.02)
        return {"items": [{"key": k, "data": versions.get(k, 0), "version": versions.get(k, 1)} for k in keys]}

    manager = SharedPollManager(backend)
    opts = SharedPollOptions(mode="versioned", refresh_interval=0.2)
    victim, attacker = FakeTracker("victim"), FakeTracker("attacker")
    manager.track("ch", opts, victim, [("victim", 0, 0.0)])
    await asyncio.sleep(0.1)
    versions["victim"] = 2
    started = asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - started < 1.0:  # a new key every 10 ms: immediate polls
        manager.untrack("ch", attacker)
        manager.track("ch", opts, attacker, [(f"a{len(polled)}", 0, 0.0)])
        await asyncio.sleep(0.01)
        if any(p["version"] == 2 for p in victim.got):
            break
    assert any(p["version"] == 2 for p in victim.got), polled[-5:]
    await manager.close()


async def test_untracked_and_never_tracked_channels_leave_nothing():
    async def backend(endpoint: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {"epoch": "X", "items": []}

    manager = SharedPollManager(backend)
    opts = SharedPollOptions(mode="versioned", refresh_interval=3600, channel_shutdown_delay=0)
    assert manager.epoch("ch", opts) == "" and not manager._channels  # a subscribe creates nothing
    manager.untrack("ch", object())
    t = FakeTracker("t")
    manager.track("ch", opts, t, [("k", 0, 0.0)])
    for _ in range(50):
        await asyncio.sleep(0.02)
        if t.resubscribe:
            break
    assert t.resubscribe == 1  # the backend's epoch: start over
    for _ in range(50):
        await asyncio.sleep(0.02)
        if not manager._channels:
            break
    assert not manager._channels
    assert manager.epoch("ch", opts) == "X"  # remembered: the resubscribe is not sent away again
    await manager.close()
