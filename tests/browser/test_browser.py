"""centrifuge-js in a real browser (headless Chromium, driven by Playwright) against a real
livegate server, over WebSocket and over the HTTP fallbacks with WebSocket switched off, and
the demo chat page used by two people.

The browser is Debian's Chromium (``$CHROMIUM``, default /usr/bin/chromium; ``make test``
makes sure it is installed, see scripts/browser.sh); Playwright's own browser downloads are
never used. When Chromium cannot start, every test here fails: none is skipped.

One browser for the whole run, a new context (a fresh profile: no shared storage) per page.
The server runs in the test's event loop (``start_server`` below): these tests and their
fixtures all run in the session's loop, which the browser's Playwright connection lives in.
The SDK scenarios load the demo page (``http_server.demo``) for its origin and for the
centrifuge-js bundle it serves (/demo/centrifuge.js, the global ``Centrifuge``), then drive the
SDK with ``page.evaluate``: what the SDK reports is recorded in ``window.__ev``.

Screenshots of the demo page go to .tmp/browser-artifacts/ (git-ignored).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from conftest import Running, make_config, scaled, token, unique_prefix
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from livegate import App
from livegate.server.lifecycle import Server

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".tmp" / "browser-artifacts"
API_KEY = {"X-API-Key": "test-api-key"}

#: Server config per SDK transport: the HTTP fallbacks run with the WebSocket handler off.
WS_OFF = {"websocket": {"disabled": True}, "http_stream": {"enabled": True}, "sse": {"enabled": True}}
SERVER_FOR = {"websocket": {}, "http_stream": WS_OFF, "sse": WS_OFF}
DEMO = {"http_server": {"demo": True}}


# -- fixtures -------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the run; a failure to start it fails the tests."""
    async with async_playwright() as pw:
        try:
            b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        except Exception as exc:
            pytest.fail(f"Chromium cannot start (executable {CHROMIUM}; set CHROMIUM, or run `make browser` "
                        f"to install Debian's chromium): {exc}", pytrace=False)
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope="session")
async def new_page(browser: Browser) -> AsyncIterator[Callable[[], Awaitable[Page]]]:
    """Pages, each in its own browser context (a separate user); closed at teardown. Page
    errors fail the test."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    async def make() -> Page:
        context = await browser.new_context(viewport={"width": 1000, "height": 700})
        contexts.append(context)
        context.set_default_timeout(scaled(10) * 1000)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for context in contexts:
        await context.close()
    assert not errors, f"errors in the page: {errors}"


@pytest_asyncio.fixture(loop_scope="session")
async def start_server() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """As tests/conftest.py's ``start_server``, in the session's loop (where the browser is)."""
    running: list[Server] = []

    async def start(override: dict[str, Any] | None = None, app: App | None = None) -> Running:
        config = make_config(override)
        server = Server(config, app)
        await server.start()
        running.append(server)
        return Running(server, f"ws://127.0.0.1:{server.port}{config.websocket.handler_prefix}", config)

    yield start
    for server in running:
        await server.drain(0)
        await server.stop()


# -- helpers --------------------------------------------------------------------------------------


def origin(r: Running) -> str:
    return f"http://127.0.0.1:{r.server.port}"


async def api(r: Running, method: str, params: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{r.server.api_port}/api/{method}",
                                                    json=params, headers=API_KEY) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert "error" not in body, body
    return body.get("result", {})


#: Starts centrifuge-js in the page; everything it reports goes to window.__ev, in order.
HARNESS = """
({transports, token, channel, emulation}) => {
  const ev = window.__ev = [];
  const opts = {token, minReconnectDelay: 50, maxReconnectDelay: 300};
  if (emulation) opts.emulationEndpoint = emulation;
  const c = window.__c = new Centrifuge(transports, opts);
  c.on('connecting', (ctx) => ev.push({ev: 'connecting', code: ctx.code}));
  c.on('connected', (ctx) => ev.push({ev: 'connected', transport: ctx.transport, client: ctx.client}));
  c.on('disconnected', (ctx) => ev.push({ev: 'disconnected', code: ctx.code}));
  const sub = window.__sub = c.newSubscription(channel, {joinLeave: true});
  sub.on('subscribed', (ctx) => ev.push({ev: 'subscribed', wasRecovering: ctx.wasRecovering,
                                         recovered: ctx.recovered}));
  sub.on('publication', (ctx) => ev.push({ev: 'publication', data: ctx.data, offset: ctx.offset}));
  sub.on('join', (ctx) => ev.push({ev: 'join', user: ctx.info.user}));
  sub.on('leave', (ctx) => ev.push({ev: 'leave', user: ctx.info.user}));
  sub.on('error', (ctx) => ev.push({ev: 'sub_error', error: ctx.error}));
  sub.subscribe();
  c.connect();
}
"""


async def events_until(page: Page, predicate: Callable[[list[dict[str, Any]]], bool], what: str,
                       within: float = 10.0) -> list[dict[str, Any]]:
    """The page's recorded events once ``predicate`` holds for them (``within`` test seconds)."""
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(scaled(within)):
            while True:
                events = await page.evaluate("window.__ev")
                if predicate(events):
                    return events
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {scaled(within):g}s; events: {events}") from None


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["ev"] == kind]


def published(events: list[dict[str, Any]]) -> list[Any]:
    return [e["data"] for e in of(events, "publication")]


async def sdk_page(new_page: Callable[[], Awaitable[Page]], r: Running, transport: str, user: str,
                   channel: str) -> Page:
    """A page of the server's origin running the harness over ``transport`` only, subscribed."""
    page = await new_page()
    await page.goto(origin(r) + "/")
    endpoint = {"websocket": r.url, "http_stream": origin(r) + "/connection/http_stream",
                "sse": origin(r) + "/connection/sse"}[transport]
    await page.evaluate(HARNESS, {"transports": [{"transport": transport, "endpoint": endpoint}],
                                  "token": token(user), "channel": channel,
                                  "emulation": origin(r) + "/emulation"})
    events = await events_until(page, lambda ev: bool(of(ev, "subscribed")), "subscribed")
    assert of(events, "connected")[0]["transport"] == transport
    assert not of(events, "sub_error"), events
    return page


# -- the SDK over each transport ------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "http_stream", "sse"])
async def test_sdk_in_browser(start_server, new_page, transport: str) -> None:
    """Connect, subscribe, publish (from the page and through the API), presence, history,
    RPC, and recovery after the connection was closed by the client and cut by the server."""
    app = App()

    @app.rpc("echo")
    async def echo(ctx: Any, data: Any) -> Any:
        return {"echo": data, "user": ctx.user}

    r = await start_server({**SERVER_FOR[transport], **DEMO}, app=app)
    channel = f"chat:{unique_prefix()}"
    page = await sdk_page(new_page, r, transport, "alice", channel)

    if r.config.websocket.disabled:  # the page really has no WebSocket to fall back from
        ws = await page.evaluate("""url => new Promise(resolve => {
            const ws = new WebSocket(url);
            ws.onopen = () => { ws.close(); resolve('open'); };
            ws.onerror = () => resolve('error');
        })""", r.url)
        assert ws == "error"

    # Publish from the browser, and through the server API.
    await page.evaluate("window.__sub.publish({text: 'from the page'})")
    await api(r, "publish", {"channel": channel, "data": {"text": "from the API"}})
    events = await events_until(page, lambda ev: len(of(ev, "publication")) >= 2, "two publications")
    assert published(events) == [{"text": "from the page"}, {"text": "from the API"}]
    assert [e["offset"] for e in of(events, "publication")] == [1, 2]

    # Presence, history, RPC.
    presence = await page.evaluate("window.__sub.presence().then(r => Object.values(r.clients))")
    client_id = of(events, "connected")[0]["client"]
    assert [(p["client"], p["user"]) for p in presence] == [(client_id, "alice")]
    history = await page.evaluate("window.__sub.history({limit: 10}).then(r => r.publications.map(p => p.data))")
    assert history == [{"text": "from the page"}, {"text": "from the API"}]
    rpc = await page.evaluate("window.__c.rpc('echo', {x: [1, 'é']}).then(r => r.data)")
    assert rpc == {"echo": {"x": [1, "é"]}, "user": "alice"}

    # Recovery: the client disconnects, three publications are missed, it connects again.
    await page.evaluate("window.__c.disconnect()")
    await events_until(page, lambda ev: bool(of(ev, "disconnected")), "disconnected")
    for n in range(3):
        await api(r, "publish", {"channel": channel, "data": {"missed": n}})
    await page.evaluate("window.__c.connect()")
    events = await events_until(page, lambda ev: len(of(ev, "subscribed")) == 2 and len(of(ev, "publication")) >= 5,
                                "resubscribed with the missed publications")
    again = [i for i, e in enumerate(events) if e["ev"] == "subscribed"][1]
    assert events[again] == {"ev": "subscribed", "wasRecovering": True, "recovered": True}
    after = [e for e in events[again + 1:] if e["ev"] == "publication"]
    assert [(e["data"], e["offset"]) for e in after] == [({"missed": 0}, 3), ({"missed": 1}, 4), ({"missed": 2}, 5)]

    # Recovery: the server cuts the connection (a reconnect code); the SDK comes back by itself.
    await api(r, "disconnect", {"user": "alice", "disconnect": {"code": 3011, "reason": "cut by the test"}})
    events = await events_until(page, lambda ev: len(of(ev, "subscribed")) == 3, "resubscribed after the cut")
    assert of(events, "subscribed")[2] == {"ev": "subscribed", "wasRecovering": True, "recovered": True}
    assert [e["transport"] for e in of(events, "connected")] == [transport] * 3
    await api(r, "publish", {"channel": channel, "data": {"after": "cut"}})
    events = await events_until(page, lambda ev: len(of(ev, "publication")) >= 6, "a publication after the cut")
    assert [e["offset"] for e in of(events, "publication")] == [1, 2, 3, 4, 5, 6]
    assert published(events)[-1] == {"after": "cut"}


async def test_two_browsers_see_each_other(start_server, new_page) -> None:
    """Two users over different fallbacks (WebSocket off): join/leave and publications cross."""
    r = await start_server({**WS_OFF, **DEMO})
    channel = f"chat:{unique_prefix()}"
    alice = await sdk_page(new_page, r, "http_stream", "alice", channel)
    bob = await sdk_page(new_page, r, "sse", "bob", channel)
    await events_until(alice, lambda ev: {"ev": "join", "user": "bob"} in ev, "alice sees bob join")
    await bob.evaluate("window.__sub.publish({text: 'hi alice'})")
    await alice.evaluate("window.__sub.publish({text: 'hi bob'})")
    for page in (alice, bob):
        await events_until(page, lambda ev: sorted(d["text"] for d in published(ev)) == ["hi alice", "hi bob"],
                           "both messages")
    await bob.evaluate("window.__c.disconnect()")
    await events_until(alice, lambda ev: {"ev": "leave", "user": "bob"} in ev, "alice sees bob leave")


# -- the demo page --------------------------------------------------------------------------------


async def open_demo(new_page: Callable[[], Awaitable[Page]], url: str, name: str) -> Page:
    page = await new_page()
    await page.goto(url)
    await page.fill("#name", name)
    await page.click("#join")
    await page.wait_for_selector("#state.connected")
    return page


async def messages(page: Page) -> list[tuple[str, str]]:
    return await page.eval_on_selector_all(
        "#messages li.message", "els => els.map(li => [li.querySelector('.who').textContent, "
        "li.querySelector('.text').textContent])")


async def wait_messages(page: Page, expected: list[tuple[str, str]], what: str) -> None:
    got: list[tuple[str, str]] = []
    try:
        async with asyncio.timeout(scaled(10)):
            while (got := [tuple(m) for m in await messages(page)]) != expected:
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: messages {got}, expected {expected}") from None


async def wait_presence(page: Page, names: list[str]) -> None:
    await page.wait_for_function("names => JSON.stringify([...document.querySelectorAll('#presence li')]"
                                 ".map(li => li.textContent)) === JSON.stringify(names)", arg=names)


async def say(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#send")


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG screenshot"


async def test_demo_chat_between_two_users(start_server, new_page) -> None:
    r = await start_server({**DEMO, "http_stream": {"enabled": True}, "sse": {"enabled": True}})
    url = origin(r) + "/"
    ann = await open_demo(new_page, url, "Ann")
    assert await ann.text_content("#transport") == "websocket"
    await say(ann, "hello, anyone?")
    await wait_messages(ann, [("Ann", "hello, anyone?")], "Ann's own message")

    # Bob joins later: the history is on his page; both see both in the presence list.
    bob = await open_demo(new_page, url, "Bob")
    await wait_messages(bob, [("Ann", "hello, anyone?")], "the history on Bob's page")
    await wait_presence(ann, ["Ann", "Bob"])
    await wait_presence(bob, ["Ann", "Bob"])
    await ann.wait_for_selector("#messages li.system >> text=Bob joined")

    await say(bob, "hi Ann <b>not bold</b>")
    conversation = [("Ann", "hello, anyone?"), ("Bob", "hi Ann <b>not bold</b>")]
    await wait_messages(ann, conversation, "Bob's message on Ann's page")
    await wait_messages(bob, conversation, "Bob's message on his page")
    assert await ann.locator("#messages b").count() == 0  # text, never HTML

    # Bob goes away; Ann writes twice; Bob comes back and is told what he got back.
    await bob.click("#toggle")
    await bob.wait_for_selector("#state.disconnected")
    await ann.wait_for_selector("#messages li.system >> text=Bob left")
    await wait_presence(ann, ["Ann"])
    assert await bob.is_hidden("#recovered")
    for text in ("are you there?", "guess not"):
        await say(ann, text)
        conversation.append(("Ann", text))
        await wait_messages(ann, conversation, "Ann's message while Bob is away")
    await bob.click("#toggle")
    await bob.wait_for_selector("#recovered:visible")
    assert await bob.text_content("#recovered") == "Reconnected: recovered 2 missed messages."
    await wait_messages(bob, conversation, "the recovered messages on Bob's page")
    await wait_presence(bob, ["Ann", "Bob"])
    assert await bob.text_content("#state") == "connected"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = {name: ARTIFACTS / f"demo-{name}.png" for name in ("ann", "bob")}
    for name, page in (("ann", ann), ("bob", bob)):
        shots[name].unlink(missing_ok=True)
        await page.screenshot(path=str(shots[name]), full_page=True)
    for path in shots.values():
        assert_png(path)


async def test_demo_without_websocket(start_server, new_page) -> None:
    """WebSocket off: the page falls back to HTTP-streaming, or SSE when asked for it."""
    r = await start_server({**WS_OFF, **DEMO})
    page = await open_demo(new_page, origin(r) + "/", "Cleo")
    assert await page.text_content("#transport") == "http_stream"
    sse = await open_demo(new_page, origin(r) + "/?transports=sse", "Dan")
    assert await sse.text_content("#transport") == "sse"
    await say(sse, "over SSE")
    await wait_messages(page, [("Dan", "over SSE")], "a message sent over SSE")
    await wait_presence(page, ["Cleo", "Dan"])


async def test_demo_says_when_the_sdk_bundle_is_missing(start_server, new_page, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LIVEGATE_DEMO_CENTRIFUGE_JS", str(tmp_path / "no-such-bundle.js"))
    r = await start_server(DEMO)
    page = await new_page()
    await page.goto(origin(r) + "/")
    await page.wait_for_selector("#sdk-missing:visible")
    assert "make web" in await page.text_content("#sdk-missing")
    assert await page.is_disabled("#join")
