"""Shared poll subscriptions (subscribe type 4, Centrifugo v6.8) end to end: the real
centrifuge-js SDK's ``newSharedPollSubscription`` tracking signed keys against a real server,
whose backend is the app's ``on_shared_poll_refresh`` hook or an HTTP endpoint the test serves;
hand-written frames for the errors."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import RawPeer, scaled, token, wait_until
from test_js_sdk import js  # noqa: F401  (the fixture)

from livegate.app import App

SECRET = "poll-secret-for-tests"


def config(**extra: Any) -> dict[str, Any]:
    poll = {"refresh_interval": "200ms", "max_keys_per_connection": 5, **extra}
    return {"shared_poll": {"hmac_secret_key": SECRET}, "channel": {"namespaces": [
        {"name": "prices", "subscription_type": "shared_poll", "allow_subscribe_for_client": True,
         "shared_poll": {**poll, "mode": "versioned", "publish_enabled": True}},
        {"name": "votes", "subscription_type": "shared_poll", "allow_subscribe_for_client": True,
         "shared_poll": poll},
        {"name": "quotes", "subscription_type": "shared_poll", "allow_subscribe_for_client": True,
         "allowed_delta_types": ["fossil"], "shared_poll": {**poll, "mode": "versioned"}},
    ]}}


class Backend:
    """What the application's database holds: key -> (version, value); and the polls it got."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.epoch = ""
        self.polls: list[dict[str, Any]] = []

    async def refresh(self, channel: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        self.polls.append({"channel": channel, "items": items})
        out = [{"key": i["key"], **self.items[i["key"]]} for i in items if i["key"] in self.items]
        return {"epoch": self.epoch, "items": out}

    def app(self) -> App:
        app = App()
        app.on_shared_poll_refresh(self.refresh)
        return app


@asynccontextmanager
async def http_backend(refresh: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[int]:
    """Serve ``refresh`` at http://127.0.0.1:<port>/refresh while the block runs; yields the port."""
    app = web.Application()
    app.router.add_post("/refresh", refresh)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def sign(keys: list[str], user: str, channel: str, *, ttl: int = 3600, secret: str = SECRET) -> str:
    now = int(time.time())
    keys_hash = hashlib.sha256("\x00".join(keys).encode()).hexdigest()
    payload = f"{now}\x00{now + ttl}\x00{user}\x00{channel}\x00{keys_hash}".encode()
    return f"{now}:{now + ttl}:{hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()}"


def updates(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(key, data, version, removed); a removal carries no version."""
    return [(e["key"], e.get("data"), None if e.get("removed") else e["version"], e.get("removed", False))
            for e in events if e["ev"] == "update"]


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
async def test_tracked_keys_get_their_versions(start_server, js, protobuf):  # noqa: F811
    backend = Backend()
    backend.items = {"a": {"data": {"p": 1}, "version": 1}, "b": {"data": {"p": 2}, "version": 1}}
    running = await start_server(config(), backend.app())
    script = await js("poll.mjs", url=running.url, token=token("ann"), user="ann", channel="prices:x",
                      secret=SECRET, protobuf=protobuf)
    await script.wait_for("ready")
    await script.send(cmd="track", keys=["a", "b", "nothing-yet"])
    await script.wait_for("update", key="a")
    await script.wait_for("update", key="b")
    backend.items["a"] = {"data": {"p": 10}, "version": 2}
    backend.items["nothing-yet"] = {"data": "now", "version": 7}
    await script.wait_for("update", key="nothing-yet")
    await script.wait_for("update", key="a", version=2)
    backend.items["b"] = {"removed": True}
    await script.wait_for("update", key="b", removed=True)
    await script.send(cmd="exit")
    got = updates(await script.finish())
    assert sorted(got, key=repr) == sorted([("a", {"p": 1}, 1, False), ("b", {"p": 2}, 1, False),
                                            ("nothing-yet", "now", 7, False), ("a", {"p": 10}, 2, False),
                                            ("b", None, None, True)], key=repr)


def quote(n: int) -> dict[str, Any]:
    return {"symbol": "ACME", "price": 100 + n, "book": [[i, 10 * i + n] for i in range(10)], "note": "x" * 200}


@pytest.mark.parametrize("protobuf", [False, True], ids=["json", "protobuf"])
async def test_per_key_deltas_against_the_backends_prev_data(start_server, js, protobuf):  # noqa: F811
    history: dict[int, dict[str, Any]] = {1: quote(1)}
    asked: list[dict[str, Any]] = []

    async def refresh(channel: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        asked.extend(items)
        top = max(history)
        out = []
        for item in items:
            entry: dict[str, Any] = {"key": item["key"], "data": history[top], "version": top}
            held = item.get("version")
            if held in history and held != top:
                entry["prev_data"] = history[held]  # the value at the version the node says it has
            out.append(entry)
        return {"items": out}

    app = App()
    app.on_shared_poll_refresh(refresh)
    running = await start_server(config(), app)
    script = await js("poll.mjs", url=running.url, token=token("ivy"), user="ivy", channel="quotes:q",
                      secret=SECRET, delta="fossil", protobuf=protobuf)
    await script.wait_for("ready")
    await script.send(cmd="track", keys=["ACME"])
    assert (await script.wait_for("update", key="ACME"))["data"] == quote(1)
    for n in (2, 3, 4):
        history[n] = quote(n)
        assert (await script.wait_for("update", key="ACME", version=n))["data"] == quote(n)
    await script.send(cmd="stats")
    stats = await script.wait_for("stats")
    await script.send(cmd="exit")
    await script.finish()
    assert (stats["numPublications"], stats["numFullPayloads"], stats["numDeltaPayloads"]) == (4, 1, 3), stats
    assert stats["bytesReceived"] < stats["bytesDecoded"] / 2


async def test_versionless_numbers_changes_and_second_client_gets_current_value(start_server, js):  # noqa: F811
    backend = Backend()
    backend.items = {"poll1": {"data": {"yes": 1}}}
    running = await start_server(config(), backend.app())
    first = await js("poll.mjs", url=running.url, token=token("bo"), user="bo", channel="votes:v", secret=SECRET)
    await first.wait_for("ready")
    await first.send(cmd="track", keys=["poll1"])
    assert (await first.wait_for("update", key="poll1"))["data"] == {"yes": 1}
    backend.items["poll1"] = {"data": {"yes": 2}}
    changed = await first.wait_for("update", key="poll1")
    assert changed["data"] == {"yes": 2} and changed["version"] > 1
    polls_before = len(backend.polls)
    await asyncio.sleep(scaled(0.6))  # unchanged data: polled again, nothing sent
    assert len(backend.polls) > polls_before
    second = await js("poll.mjs", url=running.url, token=token("cy"), user="cy", channel="votes:v", secret=SECRET)
    await second.wait_for("ready")
    await second.send(cmd="track", keys=["poll1"])
    assert (await second.wait_for("update", key="poll1"))["data"] == {"yes": 2}
    for script in (first, second):
        await script.send(cmd="exit")
        await script.finish()
    assert len(updates(first.events)) == 2  # nothing twice


async def test_untrack_stops_updates_and_polling(start_server, js):  # noqa: F811
    backend = Backend()
    backend.items = {"k": {"data": 1, "version": 1}}
    running = await start_server(config(channel_shutdown_delay="0s"), backend.app())
    script = await js("poll.mjs", url=running.url, token=token("di"), user="di", channel="prices:u", secret=SECRET)
    await script.wait_for("ready")
    await script.send(cmd="track", keys=["k"])
    await script.wait_for("update", key="k")
    await script.send(cmd="untrack", keys=["k"])
    await wait_until(lambda: not running.node.shared_poll.tracked_count("prices:u", next(iter(running.server.clients))))
    await asyncio.sleep(scaled(0.3))
    polled = len(backend.polls)
    backend.items["k"] = {"data": 2, "version": 2}
    await asyncio.sleep(scaled(0.6))
    assert len(backend.polls) == polled  # nobody tracks anything: the channel stopped polling
    await script.send(cmd="exit")
    assert [u[2] for u in updates(await script.finish())] == [1]


async def test_http_backend_and_server_api_publish(start_server, js):  # noqa: F811
    items: dict[str, Any] = {"q": {"data": {"v": 1}, "version": 1}}
    seen: list[dict[str, Any]] = []

    async def refresh(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        return web.json_response({"result": {"items": [{"key": i["key"], **items[i["key"]]}
                                                       for i in body["items"] if i["key"] in items]}})

    async with http_backend(refresh) as port:
        running = await start_server(config(endpoint=f"http://127.0.0.1:{port}/refresh", refresh_interval="1h"))
        script = await js("poll.mjs", url=running.url, token=token("eve"), user="eve", channel="prices:h",
                          secret=SECRET)
        await script.wait_for("ready")
        await script.send(cmd="track", keys=["q"])
        await script.wait_for("update", key="q")
        assert seen[0] == {"channel": "prices:h", "items": [{"key": "q"}]}
        from livegate.api.commands import execute
        await execute(running.node, "shared_poll_publish", {"channel": "prices:h", "key": "q", "data": {"v": 5},
                                                            "version": 5})
        await execute(running.node, "shared_poll_publish", {"channel": "prices:h", "key": "q", "data": {"v": 4},
                                                            "version": 4})  # older: not sent
        await script.wait_for("update", key="q", version=5)
        await script.send(cmd="exit")
        assert [(u[1], u[2]) for u in updates(await script.finish())] == [({"v": 1}, 1), ({"v": 5}, 5)]


async def test_a_new_backend_epoch_makes_trackers_subscribe_again(start_server, js):  # noqa: F811
    backend = Backend()
    backend.epoch = "e1"
    backend.items = {"k": {"data": 1, "version": 3}}
    running = await start_server(config(), backend.app())
    script = await js("poll.mjs", url=running.url, token=token("fay"), user="fay", channel="prices:e", secret=SECRET)
    await script.wait_for("ready")
    await script.send(cmd="track", keys=["k"])
    # The node had no epoch: the backend's first one voids what it held (nothing yet).
    await script.wait_for("subscribing", code=2500)
    await script.wait_for("update", key="k", version=3)
    backend.epoch = "e2"
    backend.items["k"] = {"data": 2, "version": 1}  # the versions started over
    await script.wait_for("subscribing", code=2500)
    await script.wait_for("update", key="k", version=1)  # the SDK saw the new epoch: tracks from version 0
    await script.send(cmd="exit")
    await script.finish()


# -- errors, frame by frame -------------------------------------------------------------------------


async def poll_peer(running: Any, user: str = "gus") -> RawPeer:
    peer = await RawPeer.open(running.url)
    await peer.connect(user)
    return peer


def track(channel: str, keys: list[str], signature: str, **more: Any) -> dict[str, Any]:
    return {"channel": channel, "type": 1, "track": [{"signature": signature, "items": [{"key": k} for k in keys]}],
            **more}


async def test_track_errors(start_server):
    running = await start_server(config(), Backend().app())
    peer = await poll_peer(running)
    assert (await peer.call("sub_refresh", track("votes:z", ["a"], sign(["a"], "gus", "votes:z"))))["error"][
        "code"] == 103  # not subscribed
    reply = await peer.call("subscribe", {"channel": "votes:z", "type": 4})
    assert reply["subscribe"]["type"] == 4 and reply["subscribe"]["epoch"]
    cases = [
        (track("votes:z", ["a"], sign(["a"], "someone-else", "votes:z")), 103),   # signed for another user
        (track("votes:z", ["a"], sign(["b"], "gus", "votes:z")), 103),            # for other keys
        (track("votes:z", ["a"], sign(["a"], "gus", "votes:z", secret="x")), 103),
        (track("votes:z", ["a"], "garbage"), 103),
        (track("votes:z", ["a"], sign(["a"], "gus", "votes:z", ttl=-60)), 109),   # expired
        (track("votes:z", [], sign([], "gus", "votes:z")), 107),
        (track("votes:z", [f"k{i}" for i in range(6)], sign([f"k{i}" for i in range(6)], "gus", "votes:z")), 106),
        ({"channel": "votes:z", "type": 2, "untrack": []}, 107),
        (track("votes:z", ["a\x00b"], sign(["a", "b"], "gus", "votes:z")), 107),  # NUL: another batch's signature
        (track("votes:z", ["a"], sign(["a"], "gus", "votes:z")[:-2] + "éé"), 103),  # not even hex
        ({"channel": "votes:z", "type": 9}, 107),
    ]
    for params, code in cases:
        assert (await peer.call("sub_refresh", params))["error"]["code"] == code, params
    ok = await peer.call("sub_refresh", track("votes:z", ["a"], sign(["a"], "gus", "votes:z")))
    assert ok["sub_refresh"]["expires"] is True and ok["sub_refresh"]["ttl"] > 3000
    assert (await peer.call("subscribe", {"channel": "votes:z", "type": 4}))["error"]["code"] == 105
    assert (await peer.call("subscribe", {"channel": "votes:z"}))["error"]["code"] == 107
    await peer.sync()
    await peer.close()


async def test_disconnect_forgets_tracked_keys(start_server):
    running = await start_server(config(channel_shutdown_delay="0s"), Backend().app())
    peer = await poll_peer(running)
    await peer.call("subscribe", {"channel": "votes:d", "type": 4})
    await peer.call("sub_refresh", track("votes:d", ["a", "b"], sign(["a", "b"], "gus", "votes:d")))
    session = next(iter(running.server.clients))
    assert running.node.shared_poll.tracked_count("votes:d", session) == 2
    await peer.close()
    await wait_until(lambda: not running.node.shared_poll._channels)


async def test_subscribers_that_never_track_leave_nothing(start_server):
    running = await start_server(config())
    peer = await poll_peer(running)
    for i in range(50):
        await peer.call("subscribe", {"channel": f"votes:n{i}", "type": 4})
        await peer.call("unsubscribe", {"channel": f"votes:n{i}"})
    await peer.close()
    assert not running.node.shared_poll._channels


async def test_a_large_chunked_http_answer_is_read_whole(start_server, js):  # noqa: F811
    big = {"rows": ["x" * 100] * 400}  # ~40 KB, written in pieces of 7,000 bytes

    async def refresh(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        answer = orjson.dumps({"result": {"items": [{"key": i["key"], "data": big, "version": 1}
                                                    for i in body["items"]]}})
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for start in range(0, len(answer), 7000):
            await resp.write(answer[start:start + 7000])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async with http_backend(refresh) as port:
        running = await start_server(config(endpoint=f"http://127.0.0.1:{port}/refresh"))
        script = await js("poll.mjs", url=running.url, token=token("hal"), user="hal", channel="prices:big",
                          secret=SECRET)
        await script.wait_for("ready")
        await script.send(cmd="track", keys=["k"])
        got = await script.wait_for("update", key="k")
        assert got["data"] == big
        await script.send(cmd="exit")
        await script.finish()


async def test_server_api_shared_poll_publish_errors(start_server):
    from livegate.api.commands import execute
    from livegate.errors import ClientError
    running = await start_server(config())
    for params, code in [
        ({"channel": "votes:p", "key": "k", "data": 1, "version": 1}, 108),   # publish not enabled
        ({"channel": "plain", "key": "k", "data": 1, "version": 1}, 107),
        ({"channel": "prices:p", "key": "k", "data": 1, "version": 0}, 107),
        ({"channel": "prices:p", "key": "", "data": 1, "version": 1}, 107),
        ({"channel": "prices:p", "key": "k", "b64data": "eA==", "version": 1}, 107),  # "x": not JSON
    ]:
        with pytest.raises(ClientError) as err:
            await execute(running.node, "shared_poll_publish", params)
        assert err.value.code == code, params
    assert orjson.loads(json.dumps(await execute(running.node, "shared_poll_publish", {
        "channel": "prices:p", "key": "k", "data": 1, "version": 1}))) == {}
