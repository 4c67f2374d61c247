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
