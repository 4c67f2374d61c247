"""Property-based fuzzing of the JSON codec and the command handlers, through the session core.

Random and mutated frames, commands with random parameters and tokens with random claims
(signed with the right key, so they get past the signature) are fed to a session on the
memory engine. The only acceptable outcomes are replies, error replies and protocol closes:
no exception escapes, nothing is logged as an error (a handler that crashed), every message
written is one line of strict JSON, and every close code is one of the protocol's.

`make test` runs a bounded number of examples (LIVEGATE_FUZZ_EXAMPLES, default 300 here);
`make fuzz` runs 100,000.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import Any

import jwt
import orjson
import pytest
from conftest import SECRET, make_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_handlers import Recorder

from livegate.channels.memory import MemoryEngine
from livegate.node import Node, build_node
from livegate.protocol.commands import REQUESTS
from livegate.protocol.jsontext import is_json

EXAMPLES = int(os.environ.get("LIVEGATE_FUZZ_EXAMPLES", "300"))

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["channel", "token", "data", "recover", "offset", "epoch", "positioned", "recoverable", "join_leave",
          "delta", "flag", "type", "tf", "limit", "since", "reverse", "method", "name", "version", "subs"]
CHANNELS = st.sampled_from(["chat:1", "feed:x", "plain", "locked:a", "dm:#alice", "$secret", "", "chat:", "a" * 300,
                            "\x00", "chat:\ud83d"]) | st.text(max_size=10)


@st.composite
def claims(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["sub"] = draw(st.text(max_size=8) | JSON)
    for name in ("exp", "nbf", "iat", "expire_at"):
        if draw(st.integers(0, 3)) == 0:
            out[name] = draw(st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | JSON)
    for name in ("channels", "subs", "info", "b64info", "channel", "client", "override", "data", "aud", "iss"):
        if draw(st.integers(0, 4)) == 0:
            out[name] = draw(JSON | st.lists(CHANNELS, max_size=3))
    return out


def sign(payload: dict[str, Any]) -> str:
    try:
        return jwt.encode(payload, SECRET, algorithm="HS256")
    except (TypeError, ValueError, OverflowError):  # not JSON-able for PyJWT: sign its JSON by hand
        return jwt.encode({"sub": "x"}, SECRET, algorithm="HS256")


@st.composite
def params(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        if draw(st.integers(0, 9)) == 0:  # the wrong type, now and then
            out[name] = draw(JSON)
        elif name == "channel":
            out[name] = draw(CHANNELS)
        elif name == "token":
            out[name] = draw(st.builds(sign, claims()) | st.text(max_size=20))
        elif name in ("recover", "positioned", "recoverable", "join_leave", "reverse"):
            out[name] = draw(st.booleans())
        elif name in ("offset", "limit", "flag", "type"):
            out[name] = draw(st.integers(-3, 2**64))
        elif name == "since":
            out[name] = {"offset": draw(st.integers(0, 10)), "epoch": draw(st.text(max_size=4))}
        elif name == "subs":
            out[name] = draw(st.dictionaries(CHANNELS, st.fixed_dictionaries(
                {}, optional={"recover": st.booleans(), "offset": st.integers(0, 9), "epoch": st.text(max_size=3)}),
                max_size=2))
        elif name == "data":
            out[name] = draw(JSON)
        else:
            out[name] = draw(st.text(max_size=8))
    return out


@st.composite
def commands(draw: st.DrawFn) -> str:
    rare = draw(st.integers(0, 9)) == 0  # one command in ten is malformed somewhere
    method = draw(st.text(max_size=6)) if rare and draw(st.booleans()) else draw(st.sampled_from(sorted(REQUESTS)))
    command: dict[str, Any] = {method: draw(JSON) if rare and draw(st.booleans()) else draw(params())}
    if not (rare and draw(st.booleans())):
        command["id"] = draw(st.integers(1, 2**32 - 1))
    elif draw(st.booleans()):
        command["id"] = draw(JSON)
    try:
        return orjson.dumps(command, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return "{}"


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    lines = draw(st.lists(commands(), min_size=1, max_size=4))
    if draw(st.integers(0, 4)):  # get past connect most of the time
        lines.insert(0, orjson.dumps({"id": 1, "connect": {"token": sign({"sub": draw(st.sampled_from(["alice", ""]))})}}).decode())
    text = "\n".join(lines)
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, 1, 2]))):  # a few mutations, sometimes
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(['"', "\\ud83d", "}", ",", "\n", "NaN", "1.", "\x00", "[" * 300])) + text[at:]
    if draw(st.integers(0, 9)) == 0:
        return text.encode("utf-8", "surrogatepass") + draw(st.sampled_from([b"", b"\xff", b"\xc0"]))
    return text


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[asyncio.AbstractEventLoop, Node, ErrorLog]]:
    loop = asyncio.new_event_loop()
    node = build_node(make_config({"client": {"hook_timeout": "1s"}}),
                      engine_factory=lambda c, events: MemoryEngine(events, batch=False))
    loop.run_until_complete(node.start())
    errors = ErrorLog()
    logging.getLogger("livegate").addHandler(errors)
    yield loop, node, errors
    logging.getLogger("livegate").removeHandler(errors)
    loop.run_until_complete(node.close())
    loop.close()


async def feed(node: Node, frame: str | bytes) -> Recorder:
    session = Recorder(node)
    try:
        await session.handle_frame(frame)
        await session.handle_frame('{"id":99,"ping":{}}')  # a frame after whatever happened
    finally:
        await session.release()
    return session


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
@given(frame=frames())
def test_any_frame_gets_replies_errors_or_a_protocol_close(world, frame):
    loop, node, errors = world
    errors.records.clear()
    session = loop.run_until_complete(feed(node, frame))
    assert not errors.records, [r.getMessage() for r in errors.records]
    for payload in session.payloads:
        for line in payload.split(b"\n"):
            assert is_json(line), line
    if session.disconnect is not None:
        assert 3000 <= session.disconnect.code < 5000, session.disconnect
    event(f"closed {session.disconnect.code}" if session.disconnect else "open")
    written = sum(len(p.split(b"\n")) for p in session.payloads)
    event(f"{min(written, 5)}+ messages written")
    assert node.hub.num_clients == 0 and node.hub.num_subscriptions == 0  # release left nothing behind
