"""The real centrifuge-js SDK (5.8.0, tests/js) against a real livegate server.

Each test starts a server in this event loop (``start_server``), runs one Node script from
tests/js as a subprocess and asserts on what the SDK reported: the scripts print one JSON
line per observation (``{"ev": ..., "who": ...}``, see tests/js/common.mjs). When the server
side has to act in the middle of a scenario, the script prints a marker, the test acts, and
tells the script to go on with a JSON line on its stdin.

The subprocess is driven with asyncio only: the server runs in this loop and must keep
serving while the test waits for Node.

Waits here are in test seconds (``scaled``); the scripts get LIVEGATE_TEST_TIME_SCALE in
their environment and scale their own timeouts the same way (tests/js/common.mjs).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET, TIME_SCALE, FakeClock, Running, exp_in, scaled, token, wait_until

import livegate
from livegate.auth import make_hmac_token
from livegate.channels.broker import HistoryOptions
from livegate.protocol import codes

JS_DIR = Path(__file__).resolve().parents[1] / "js"
NODE = shutil.which("node") or "/usr/bin/node"


class NodeScript:
    """One running scenario script: its JSON-line events, its stdin, its exit."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._eof = False
        self._stderr = asyncio.get_running_loop().create_task(self._read_stderr())

    @classmethod
    async def start(cls, script: str, **params: Any) -> NodeScript:
        assert (JS_DIR / "node_modules" / "centrifuge").is_dir(), "run `make js` first"
        proc = await asyncio.create_subprocess_exec(
            NODE, str(JS_DIR / script), json.dumps(params), cwd=str(JS_DIR),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "LIVEGATE_TEST_TIME_SCALE": repr(TIME_SCALE)},
        )
        return cls(script, proc)

    async def _read_stderr(self) -> bytes:
        assert self.proc.stderr is not None
        return await self.proc.stderr.read()

    def _describe(self) -> str:
        err = self._stderr.result().decode(errors="replace") if self._stderr.done() else ""
        lines = "\n".join(json.dumps(e) for e in self.events)
        return f"{self.name} events:\n{lines}\nstderr:\n{err}"

    async def _read_event(self, deadline: float) -> bool:
        """Read one more event line; False at EOF."""
        assert self.proc.stdout is not None
        if self._eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
        if not line:
            self._eof = True
            return False
        try:
            event = json.loads(line)
        except ValueError:
            event = {"ev": "noise", "line": line.decode(errors="replace")}
        self.events.append(event)
        if event.get("ev") == "fatal":
            await self._settle()
            raise AssertionError(f"{self.name} failed: {event.get('error')}\n{self._describe()}")
        return True

    async def _settle(self) -> None:
        """Let the process exit (killed if it does not) and its stderr be read."""
        try:
            await asyncio.wait_for(self.proc.wait(), scaled(3))
        except TimeoutError:
            self.kill()
        try:
            await asyncio.wait_for(asyncio.shield(self._stderr), scaled(3))
        except TimeoutError:
            pass

    async def wait_for(self, ev: str, within: float = 6.0, **match: Any) -> dict[str, Any]:
        """The next not yet consumed event ``ev`` whose fields equal ``match`` (``within``
        test seconds, scaled)."""
        within = scaled(within)
        deadline = time.monotonic() + within
        i = 0
        while True:
            while i < len(self.events):
                event = self.events[i]
                if i not in self._consumed and event.get("ev") == ev and all(event.get(k) == v for k, v in match.items()):
                    self._consumed.add(i)
                    return event
                i += 1
            try:
                more = await self._read_event(deadline)
            except TimeoutError:
                raise AssertionError(f"no {ev} {match} within {within}s\n{self._describe()}") from None
            if not more:
                await self._settle()
                raise AssertionError(f"{self.name} ended before {ev} {match}\n{self._describe()}")

    async def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def finish(self, within: float = 10.0) -> list[dict[str, Any]]:
        """Wait for the script to end successfully; returns all its events (``within`` test
        seconds, scaled)."""
        within = scaled(within)
        deadline = time.monotonic() + within
        try:
            while await self._read_event(deadline):
                pass
        except TimeoutError:
            self.kill()
            await self._settle()
            raise AssertionError(f"{self.name} still running after {within}s\n{self._describe()}") from None
        await self._settle()
        assert self.proc.returncode == 0, f"{self.name} exited with {self.proc.returncode}\n{self._describe()}"
        assert self.events and self.events[-1]["ev"] == "done", self._describe()
        return self.events

    def of(self, ev: str, **match: Any) -> list[dict[str, Any]]:
        """All events ``ev`` (consumed or not) whose fields equal ``match``, in order."""
        return [e for e in self.events if e.get("ev") == ev and all(e.get(k) == v for k, v in match.items())]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def js() -> AsyncIterator[Callable[..., Awaitable[NodeScript]]]:
    """Start tests/js/<script> with JSON params; leftover processes are killed at teardown."""
    started: list[NodeScript] = []

    async def run(script: str, **params: Any) -> NodeScript:
        s = await NodeScript.start(script, **params)
        started.append(s)
        return s

    yield run
    for s in started:
        s.kill()
        if s.proc.returncode is None:
            await s.proc.wait()


@pytest.fixture(params=["websocket", "http_stream", "sse"])
def transport(request: pytest.FixtureRequest) -> str:
    """The transport every client of a scenario uses (HTTP ones with bidirectional emulation)."""
    return request.param


def only(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(events) == 1, events
    return events[0]


async def stream_top(running: Running, channel: str) -> tuple[int, str]:
    res = await running.node.broker.history(channel, HistoryOptions(limit=0))
    return res.position.offset, res.position.epoch


# -- 1. connect, subscribe, publish, own publication ----------------------------------------


async def test_connect_subscribe_publish_receives_own_publication(start_server, js, transport):
    running = await start_server()
    script = await js("pubsub.mjs", url=running.url, transport=transport, token=token("alice", info={"name": "Alice"}),
                      channel="chat:room", data={"text": "hello", "n": 1})
    events = await script.finish()

    connected = only(script.of("connected", who="a"))
    assert connected["transport"] == transport
    assert isinstance(connected["client"], str) and connected["client"]

    subscribed = only(script.of("subscribed", channel="chat:room"))
    offset, epoch = await stream_top(running, "chat:room")
    assert offset == 1
    assert subscribed["recoverable"] is True
    assert subscribed["positioned"] is True
    assert subscribed["streamPosition"] == {"offset": 0, "epoch": epoch}
    assert epoch != ""
    assert subscribed["wasRecovering"] is False and subscribed["recovered"] is False
    assert subscribed["hasRecoveredPublications"] is False

    assert only(script.of("publish_result"))["result"] == {}
    own = only(script.of("own_publication"))
    assert own["data"] == {"text": "hello", "n": 1}
    assert own["offset"] == 1
    assert own["info"] == {"user": "alice", "client": connected["client"], "connInfo": {"name": "Alice"}}
    assert own["tags"] is None
    # The subscriber gets its own join (force_push_join_leave) and its publication exactly once.
    assert [e["info"] for e in script.of("join")] == [{"user": "alice", "client": connected["client"],
                                                        "connInfo": {"name": "Alice"}}]
    assert len(script.of("publication")) == 1

    assert only(script.of("locked_publish")) == {"ev": "locked_publish", "ok": False,
                                                 "error": {"code": 103, "message": "permission denied"}}
    # The client ends only because it asked to: one connecting (code 0), one disconnected (code 0).
    assert [e["code"] for e in script.of("connecting")] == [0]
    assert [(e["code"], e["reason"]) for e in script.of("disconnected")] == [(0, "disconnect called")]
    assert not script.of("error") and not script.of("sub_error")
    assert events[-1]["ev"] == "done"


# -- 2. a server-side publication reaches the JS subscriber ----------------------------------


async def test_server_side_publication_reaches_js_subscriber(start_server, js):
    running = await start_server()
    script = await js("listen.mjs", url=running.url, token=token("bob"), channels=["chat:x", "news"])
    await script.wait_for("ready")
    first = await running.node.publish("chat:x", b'{"a":1}')
    await running.node.publish("news", b'[1,"two",null]')
    third = await running.node.publish("chat:x", b'"text"', tags={"kind": "note"})
    # Markers: once they arrived, anything else for these channels (a duplicate) would have too.
    await running.node.publish("chat:x", b'"marker"')
    await running.node.publish("news", b'"marker"')
    await script.wait_for("publication", channel="chat:x", data="marker")
    await script.wait_for("publication", channel="news", data="marker")
    await script.send(cmd="exit")
    await script.finish()

    assert (first.position.offset, third.position.offset) == (1, 2)
    pubs = [{k: e[k] for k in ("channel", "data", "offset", "info", "tags")} for e in script.of("publication")
            if e["data"] != "marker"]
    for channel in ("chat:x", "news"):  # each channel's marker came last
        assert [e["data"] for e in script.of("publication", channel=channel)][-1] == "marker"
    assert pubs == [
        {"channel": "chat:x", "data": {"a": 1}, "offset": 1, "info": None, "tags": None},
        # "news" has no namespace and no history: no offset.
        {"channel": "news", "data": [1, "two", None], "offset": None, "info": None, "tags": None},
        {"channel": "chat:x", "data": "text", "offset": 2, "info": None, "tags": {"kind": "note"}},
    ]
    news = only(script.of("subscribed", channel="news"))
    assert (news["recoverable"], news["positioned"], news["streamPosition"]) == (False, False, None)


# -- 3. connect + subscribes batched in one frame ---------------------------------------------


async def test_connect_and_subscribes_batched_in_one_frame(start_server, js, monkeypatch):
    from livegate.session.core import SessionCore as Client

    frames: list[tuple[str, str]] = []
    original = Client.handle_frame

    async def recording(self, frame):  # noqa: ANN001, ANN202
        frames.append((self.client_id, frame))
        return await original(self, frame)

    monkeypatch.setattr(Client, "handle_frame", recording)
    running = await start_server()
    script = await js("batch.mjs", url=running.url, token=token("frank"), publishTo="feed:b3", subs=[
        ["chat:b1", {}],
        ["locked:b2", {}],  # not allowed: its error must not disturb the rest of the batch
        ["feed:b3", {"recoverable": True}],
        ["feed:b4", {}],
    ])
    await script.finish()

    # The first frame from the SDK is connect followed by the four subscribes, in order.
    first = [json.loads(line) for line in frames[0][1].split("\n")]
    assert [next(k for k in m if k != "id") for m in first] == ["connect"] + ["subscribe"] * 4
    assert [m["subscribe"]["channel"] for m in first[1:]] == ["chat:b1", "locked:b2", "feed:b3", "feed:b4"]
    assert first[0]["connect"]["name"] == "js"
    assert all(m["id"] == i + 1 for i, m in enumerate(first))

    assert only(script.of("settled"))["outcome"] == ["subscribed", "unsubscribed", "subscribed", "subscribed"]
    locked = only(script.of("unsubscribed", channel="locked:b2"))
    assert (locked["code"], locked["reason"]) == (103, "permission denied")
    b1 = only(script.of("subscribed", channel="chat:b1"))
    assert (b1["recoverable"], b1["positioned"]) == (True, True)  # chat forces recovery
    b3 = only(script.of("subscribed", channel="feed:b3"))
    assert (b3["recoverable"], b3["positioned"]) == (True, True)  # feed allows it when asked
    assert b3["streamPosition"]["offset"] == 0
    b4 = only(script.of("subscribed", channel="feed:b4"))
    assert (b4["recoverable"], b4["positioned"], b4["streamPosition"]) == (False, False, None)
    pub = only(script.of("publication"))
    assert (pub["channel"], pub["data"], pub["offset"]) == ("feed:b3", {"batched": True}, 1)
    assert [e["code"] for e in script.of("connecting")] == [0]


# -- 4. presence, presence stats, history -----------------------------------------------------


async def test_presence_and_history_through_sdk(start_server, js, transport):
    running = await start_server()
    queries = [
        {"name": "presence", "op": "presence", "channel": "chat:q"},
        {"name": "stats", "op": "presenceStats", "channel": "chat:q"},
        {"name": "position_only", "op": "history", "channel": "chat:q"},
        {"name": "limit2", "op": "history", "channel": "chat:q", "opts": {"limit": 2}},
        {"name": "all", "op": "history", "channel": "chat:q", "opts": {"limit": -1}},
        {"name": "since2", "op": "history", "channel": "chat:q",
         "opts": {"limit": 2, "since": {"offset": 2, "epoch": "$epoch"}}},
        {"name": "reverse2", "op": "history", "channel": "chat:q", "opts": {"limit": 2, "reverse": True}},
        {"name": "reverse_since4", "op": "history", "channel": "chat:q",
         "opts": {"limit": 2, "reverse": True, "since": {"offset": 4, "epoch": "$epoch"}}},
        {"name": "since_other_epoch", "op": "history", "channel": "chat:q",
         "opts": {"limit": 2, "since": {"offset": 1, "epoch": "not-the-epoch"}}},
        {"name": "history_disabled", "op": "history", "channel": "news", "opts": {"limit": 1}},
        {"name": "presence_disabled", "op": "presence", "channel": "feed:q"},
        {"name": "presence_not_subscribed", "op": "presence", "channel": "chat:other"},
        {"name": "unknown_namespace", "op": "presenceStats", "channel": "nope:q"},
    ]
    users = [["a1", token("alice", info={"dev": 1})], ["a2", token("alice", info={"dev": 2})], ["b", token("bob")]]
    script = await js("queries.mjs", url=running.url, transport=transport, channel="chat:q", users=users,
                      publish=[{"n": n} for n in range(1, 6)], queries=queries)
    await script.finish()

    ids = {e["who"]: e["client"] for e in script.of("connected")}
    assert len(ids) == 3
    offset, epoch = await stream_top(running, "chat:q")
    assert offset == 5
    q = {e["name"]: e for e in script.of("query")}
    assert q["presence"]["result"] == {
        ids["a1"]: {"user": "alice", "client": ids["a1"], "connInfo": {"dev": 1}, "chanInfo": None},
        ids["a2"]: {"user": "alice", "client": ids["a2"], "connInfo": {"dev": 2}, "chanInfo": None},
        ids["b"]: {"user": "bob", "client": ids["b"], "connInfo": None, "chanInfo": None},
    }
    assert q["stats"]["result"] == {"numClients": 3, "numUsers": 2}

    def hist(name: str) -> list[int]:
        res = q[name]
        assert res["ok"], res
        assert (res["result"]["offset"], res["result"]["epoch"]) == (5, epoch)
        pubs = res["result"]["publications"]
        assert all(p["data"] == {"n": p["offset"]} for p in pubs), pubs
        assert all(p["info"]["client"] == ids["a1"] for p in pubs), pubs
        return [p["offset"] for p in pubs]

    assert hist("position_only") == []
    assert hist("limit2") == [1, 2]
    assert hist("all") == [1, 2, 3, 4, 5]
    assert hist("since2") == [3, 4]
    assert hist("reverse2") == [5, 4]
    assert hist("reverse_since4") == [3, 2]
    errors = {name: (q[name]["ok"], q[name].get("error", {}).get("code")) for name in (
        "since_other_epoch", "history_disabled", "presence_disabled", "presence_not_subscribed", "unknown_namespace")}
    assert errors == {"since_other_epoch": (False, 112), "history_disabled": (False, 108),
                      "presence_disabled": (False, 108), "presence_not_subscribed": (False, 103),
                      "unknown_namespace": (False, 102)}
    # The SDK stayed connected through the error replies; presence dropped the client that left.
    assert only(script.of("stats_after_leave"))["result"] == {"numClients": 2, "numUsers": 1}
    assert [e["code"] for e in script.of("connecting")] == [0, 0, 0]


# -- 5. RPC --------------------------------------------------------------------------------------


async def test_rpc_through_sdk(start_server, js, transport):
    app = livegate.App()

    @app.rpc("echo")
    async def echo(ctx, data):  # noqa: ANN001, ANN202
        return {"echo": data, "user": ctx.user}

    @app.rpc("nothing")
    async def nothing(ctx, data):  # noqa: ANN001, ANN202
        return None

    @app.rpc("teapot")
    async def teapot(ctx, data):  # noqa: ANN001, ANN202
        raise livegate.ClientError(418, "I am a teapot")

    running = await start_server(app=app)
    payload = {"x": [1, 2.5, None], "s": "é\n\"q\"", "nested": {"t": True}}
    script = await js("rpc.mjs", url=running.url, transport=transport, token=token("gina"), calls=[
        {"name": "echo", "method": "echo", "data": payload},
        {"name": "nothing", "method": "nothing", "data": {}},
        {"name": "unknown", "method": "no.such.method", "data": {}},
        {"name": "teapot", "method": "teapot", "data": 1},
        {"name": "echo_again", "method": "echo", "data": "after errors"},
    ])
    await script.finish()
    r = {e["name"]: e for e in script.of("rpc")}
    assert r["echo"] == {"ev": "rpc", "name": "echo", "ok": True, "data": {"echo": payload, "user": "gina"}}
    assert r["nothing"]["ok"] is True and r["nothing"]["data"] == "<undefined>"
    assert r["unknown"] == {"ev": "rpc", "name": "unknown", "ok": False,
                            "error": {"code": 104, "message": "method not found"}}
    assert r["teapot"] == {"ev": "rpc", "name": "teapot", "ok": False,
                           "error": {"code": 418, "message": "I am a teapot"}}
    assert r["echo_again"]["data"] == {"echo": "after errors", "user": "gina"}
    assert only(script.of("state"))["state"] == "connected"
    assert [e["code"] for e in script.of("connecting")] == [0]


# -- 6. recovery after a forced reconnect ------------------------------------------------------


async def test_recovery_after_force_reconnect(start_server, js, transport):
    running = await start_server()
    node = running.node
    script = await js("listen.mjs", url=running.url, transport=transport, token=token("carol"), channels=["chat:r"],
                      clientOptions={"minReconnectDelay": round(scaled(500)), "maxReconnectDelay": round(scaled(800))})
    await script.wait_for("ready")
    for n in range(1, 4):
        await node.publish("chat:r", json.dumps({"n": n}).encode())
    for _ in range(3):
        await script.wait_for("publication")

    [conn] = node.hub.connections()
    first_id = conn.client_id
    conn.close(codes.FORCE_RECONNECT)
    await wait_until(lambda: not node.hub.connections(), within=2, what="the closed connection's release")
    # The client is away now (its reconnect backoff is at least 500 ms).
    for n in range(4, 8):
        await node.publish("chat:r", json.dumps({"n": n}).encode())

    resubscribed = await script.wait_for("subscribed", wasRecovering=True)
    for _ in range(4):
        await script.wait_for("publication")
    await node.publish("chat:r", b'{"n":8}')  # live again after the recovery
    await script.wait_for("publication")
    await script.send(cmd="exit")
    await script.finish()

    offset, epoch = await stream_top(running, "chat:r")
    assert offset == 8
    connecting = [(e["code"], e["reason"]) for e in script.of("connecting")]
    assert connecting == [(0, "connect called"), (3011, "force reconnect")]
    connected = [e["client"] for e in script.of("connected")]
    assert len(connected) == 2 and connected[0] == first_id and connected[1] != first_id
    initial, again = script.of("subscribed")
    assert initial["streamPosition"] == {"offset": 0, "epoch": epoch}
    assert again is resubscribed
    # Before the recovery: subscribe called (0), then transport closed (1); nothing else.
    before = script.events[:script.events.index(again)]
    assert [(e["code"], e["reason"]) for e in before if e["ev"] == "subscribing"] == [
        (0, "subscribe called"), (1, "transport closed")]
    assert again["wasRecovering"] is True
    assert again["recovered"] is True
    assert again["hasRecoveredPublications"] is True
    # After a successful recovery the position is the one the client had (protocol.md 5.3).
    assert again["streamPosition"] == {"offset": 3, "epoch": epoch}
    pubs = script.of("publication")
    assert [(p["data"]["n"], p["offset"]) for p in pubs] == [(n, n) for n in range(1, 9)]
    # The missed ones came right after the subscribed event, before anything else.
    i = script.events.index(again)
    assert [e.get("offset") for e in script.events[i + 1:i + 5]] == [4, 5, 6, 7]
    assert not script.of("disconnected", code=3011)


# -- 7. join / leave -----------------------------------------------------------------------------


async def test_join_and_leave_between_two_clients(start_server, js, transport):
    running = await start_server()
    script = await js("joinleave.mjs", url=running.url, transport=transport, channel="chat:jl",
                      tokenA=token("alice"), tokenB=token("bob", info={"name": "Bob"}))
    await script.finish()
    a_id = only(script.of("connected", who="a"))["client"]
    b_id = only(script.of("b_client"))["client"]
    alice = {"user": "alice", "client": a_id}
    bob = {"user": "bob", "client": b_id, "connInfo": {"name": "Bob"}}
    assert [e["info"] for e in script.of("join", who="a")] == [alice, bob, bob]
    assert [e["info"] for e in script.of("leave", who="a")] == [bob, bob]
    assert [e["info"] for e in script.of("join", who="b")] == [bob, bob]
    assert script.of("leave", who="b") == []
    assert all(e["channel"] == "chat:jl" for e in script.of("join") + script.of("leave"))
    # Order as "a" saw it: join(b), leave(b), join(b), leave(b).
    seq = [(e["ev"], e["info"]["client"]) for e in script.events if e.get("who") == "a" and e["ev"] in ("join", "leave")]
    assert seq == [("join", a_id), ("join", b_id), ("leave", b_id), ("join", b_id), ("leave", b_id)]


# -- 8. connection token refresh ----------------------------------------------------------------


async def test_connection_token_refresh_keeps_connection(start_server, js):
    # The server's timers run on a FakeClock (ping 25 s, pong 8 s, expired_close_delay 25 s),
    # moved by the test; the SDK's refresh timer and the token checks run on real time.
    clock = FakeClock()
    running = await start_server(clock=clock)
    first_exp = exp_in(1)  # the connect reply says: expires in a second or two
    script = await js("refresh.mjs", url=running.url, channel="chat:t",
                      token=token("dave", exp=first_exp), freshToken=token("dave", ttl=3600))
    ready = await script.wait_for("ready")
    [conn] = running.node.hub.connections()
    assert conn.client_id == ready["client"]
    assert conn.expire_at == first_exp
    await script.wait_for("get_token")
    await wait_until(lambda: conn.expire_at > time.time() + 3000, what="the server taking the refreshed token")
    # Pings on top: the connection also lives only if the SDK's pongs are taken (a sweep past
    # the pong deadline of an unanswered ping closes with 3012 "no pong").
    for _ in range(3):
        await running.advance(25)  # a ping is due
        await wait_until(lambda: conn.pong_deadline == 0.0, what="the SDK's pong")
    # The first token expired and its grace is over: without the refresh the sweeps would have closed it.
    assert clock.time() > first_exp + running.config.client.expired_close_delay
    assert [c.client_id for c in running.node.hub.connections()] == [ready["client"]]
    await script.send(cmd="publish")
    await script.finish()

    [got] = script.of("get_token")
    assert 1000 <= got["atMs"] <= scaled(3.5) * 1000, got  # asked when the connect reply's ttl ran out
    own = only(script.of("own_publication"))
    assert own["state"] == "connected"
    assert (own["offset"], own["info"]["client"]) == (1, ready["client"])
    assert [e["code"] for e in script.of("connecting")] == [0]
    assert len(script.of("connected")) == 1
    assert [e["code"] for e in script.of("disconnected")] == [0]  # only the final disconnect()
    assert not script.of("error")


# -- 9. disconnect codes as the SDK reports them --------------------------------------------------


async def test_terminal_disconnects_as_sdk_sees_them(start_server, js, transport):
    app = livegate.App()

    @app.on_connect
    async def on_connect(ctx, data):  # noqa: ANN001, ANN202
        if ctx.user == "banned":
            raise livegate.ClientError(403, "banned")
        if ctx.user == "kicked":
            raise livegate.DisconnectRequested(4501, "kicked")
        return None

    running = await start_server(app=app)
    cases = [
        {"name": "bad_signature", "token": make_hmac_token("another-secret-" + SECRET, "eve")},
        {"name": "not_a_jwt", "token": "not-a-jwt"},
        {"name": "expired_no_get_token", "token": token("eve", ttl=-30)},
        {"name": "connect_error", "token": token("banned")},
        {"name": "app_disconnect", "token": token("kicked")},
        {"name": "send_without_handler", "token": token("eve"), "send": {"hello": 1}},
        {"name": "force_disconnect", "token": token("eve"), "serverCloses": True},
    ]
    script = await js("disconnect.mjs", url=running.url, transport=transport, cases=cases)
    ready = await script.wait_for("ready", who="force_disconnect", within=12)
    conn = running.node.hub.connection(ready["client"])
    assert conn is not None
    conn.close(codes.FORCE_DISCONNECT)
    await script.finish(within=15)

    got = {e["name"]: (e["code"], e["reason"], e["state"], e["connecting"]) for e in script.of("case")}
    assert got == {
        "bad_signature": (3500, "invalid token", "disconnected", 1),
        "not_a_jwt": (3500, "invalid token", "disconnected", 1),
        # error 109 without getToken: the SDK gives up as unauthorized (client-side code 1)
        "expired_no_get_token": (1, "unauthorized", "disconnected", 1),
        # a non-temporary connect error: disconnected with the error code, no retry
        "connect_error": (403, "banned", "disconnected", 1),
        "app_disconnect": (4501, "kicked", "disconnected", 1),
        # the app registered no on_message: a client send() is answered with 3508
        "send_without_handler": (3508, "not available", "disconnected", 1),
        "force_disconnect": (3503, "force disconnect", "disconnected", 1),
    }
    # The SDK saw the server's 109 reply, then found no getToken to get a new token with.
    assert [(e["type"], e["error"]["code"]) for e in script.of("error", who="expired_no_get_token")] == [
        ("connect", 109), ("configuration", 12)]
    assert running.node.hub.connections() == []


# -- regressions: server bugs these scenarios found ------------------------------------------


async def test_server_publish_of_pretty_printed_json_reaches_sdk(start_server, js):
    running = await start_server()
    script = await js("listen.mjs", url=running.url, token=token("hank"), channels=["chat:pp"])
    await script.wait_for("ready")
    await running.node.publish("chat:pp", b'{\n  "pretty": true\n}')
    await running.node.publish("chat:pp", b'{"after": 1}')
    try:
        await script.wait_for("publication", data={"after": 1}, within=3)
    finally:
        await script.send(cmd="exit")
        await script.finish()
    assert [(p["data"], p["offset"]) for p in script.of("publication")] == [({"pretty": True}, 1), ({"after": 1}, 2)]
    assert [e["code"] for e in script.of("connecting")] == [0]


async def test_recover_request_on_channel_without_recovery_is_echoed(start_server, js, monkeypatch):
    from livegate.session.core import SessionCore as Client

    frames: list[str] = []
    original = Client.handle_frame

    async def recording(self, frame):  # noqa: ANN001, ANN202
        frames.append(frame)
        return await original(self, frame)

    monkeypatch.setattr(Client, "handle_frame", recording)
    running = await start_server()
    # `since` makes the SDK send recover:true; feed:w gives no recovery or positioning unless asked.
    script = await js("batch.mjs", url=running.url, token=token("ivy"), publishTo="feed:w",
                      subs=[["feed:w", {"since": {"offset": 0, "epoch": "e0"}}]])
    await script.finish()
    sent = [json.loads(line) for line in frames[0].split("\n")][1]["subscribe"]
    assert (sent["channel"], sent.get("recover"), sent.get("epoch")) == ("feed:w", True, "e0")
    sub = only(script.of("subscribed", channel="feed:w"))
    assert (sub["recoverable"], sub["positioned"], sub["recovered"]) == (False, False, False)
    assert sub["wasRecovering"] is True


# -- Centrifugo v6 features: delta compression, tags filters (both builds) ---------------------

V6_NAMESPACES = {"channel": {"namespaces": [
    {"name": "delta", "history_size": 50, "history_ttl": "10m", "force_recovery": True,
     "allowed_delta_types": ["fossil"], "allow_subscribe_for_client": True},
    {"name": "tagged", "history_size": 50, "history_ttl": "10m", "allow_tags_filter": True,
     "allow_subscribe_for_client": True},
]}}


def ticker_state(n: int) -> bytes:
    return json.dumps({"ticker": "ACME", "price": 100 + n, "book": [{"level": i, "size": 10 * i + n} for i in range(8)],
                       "note": "x" * 200}, separators=(",", ":")).encode()


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
@pytest.mark.parametrize("via", ["websocket", "http_stream"])
async def test_delta_compression_through_sdk(start_server, js, protobuf, via):
    running = await start_server(V6_NAMESPACES)
    script = await js("listen.mjs", url=running.url, token=token("dora"), channels=["delta:acme"],
                      subOptions={"delta": "fossil"}, protobuf=protobuf, transport=via)
    await script.wait_for("ready")
    for n in range(1, 6):
        await running.node.publish("delta:acme", ticker_state(n))
    await running.node.publish("delta:acme", b'"marker"')
    await script.wait_for("publication", channel="delta:acme", data="marker")
    await script.send(cmd="exit")
    await script.finish()
    got = [e["data"] for e in script.of("publication") if e["data"] != "marker"]
    assert got == [json.loads(ticker_state(n)) for n in range(1, 6)]


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
async def test_tags_filter_through_sdk(start_server, js, protobuf):
    running = await start_server(V6_NAMESPACES)
    tf = {"op": "and", "nodes": [{"key": "ticker", "cmp": "eq", "val": "ACME"},
                                 {"key": "price", "cmp": "gte", "val": "100"}]}
    script = await js("listen.mjs", url=running.url, token=token("tess"), channels=["tagged:t"],
                      subOptions={"tagsFilter": tf}, protobuf=protobuf)
    await script.wait_for("ready")
    for n, tags in [(1, {"ticker": "ACME", "price": "99"}), (2, {"ticker": "ACME", "price": "150"}),
                    (3, {"ticker": "OTHER", "price": "150"}), (4, {"ticker": "ACME", "price": "100"})]:
        await running.node.publish("tagged:t", b'{"n":%d}' % n, tags=tags)
    await running.node.publish("tagged:t", b'"marker"', tags={"ticker": "ACME", "price": "1000"})
    await script.wait_for("publication", channel="tagged:t", data="marker")
    await script.send(cmd="exit")
    await script.finish()
    assert [e["data"] for e in script.of("publication")] == [{"n": 2}, {"n": 4}, "marker"]
