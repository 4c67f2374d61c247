"""The admin page (``admin.enabled``, on the API port) in a real browser (headless Chromium,
driven by Playwright) against a real livegate server, with two centrifuge-python clients
connected: log in, see the two connections, publish, disconnect one, and see it go.

As in test_browser.py: Debian's Chromium (``$CHROMIUM``, default /usr/bin/chromium; see
scripts/browser.sh), never Playwright's downloads; when Chromium cannot start the test fails,
it is never skipped. The server, the SDK clients and the browser's Playwright connection all
run in the session's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
import test_browser
from centrifuge import Client, ClientEventHandler, ClientState, SubscriptionEventHandler
from conftest import Running, make_config, scaled, token
from playwright.async_api import Browser, BrowserContext, Page, expect

from livegate.server.lifecycle import Server

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "admin-page-password-5f3a9c1e7b"
API_KEY = "test-api-key"  # conftest.BASE_CONFIG's http_api.key
CHANNEL = "chat:admin"  # the "chat" namespace of the test config: presence, history


# -- fixtures -------------------------------------------------------------------------------------

browser = test_browser.browser  # the run's one headless Chromium (a failure to start it fails the test)


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile. Errors thrown in its pages and Content-Security-Policy violations fail
    the test."""
    ctx = await browser.new_context(viewport={"width": 1200, "height": 900})
    ctx.set_default_timeout(scaled(5) * 1000)
    problems: list[str] = []
    ctx.on("weberror", lambda err: problems.append(f"page error: {err.error}"))
    ctx.on("console", lambda msg: problems.append(f"console: {msg.text}")
           if "Content Security Policy" in msg.text else None)
    yield ctx
    await ctx.close()
    assert not problems, problems


@pytest_asyncio.fixture(loop_scope="session")
async def admin_server() -> AsyncIterator[Running]:
    """A server with the admin page on (the API key of the test config is also set)."""
    config = make_config({"admin": {"enabled": True, "password": PASSWORD}})
    server = Server(config)
    await server.start()
    try:
        yield Running(server, f"ws://127.0.0.1:{server.port}{config.websocket.handler_prefix}", config)
    finally:
        await server.drain(0)
        await server.stop()


class Recorder(ClientEventHandler, SubscriptionEventHandler):
    """What one SDK client (and its one subscription) reported, for the test to wait on."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()

    def _add(self, name: str, ctx: Any) -> None:
        self.log.append((name, ctx))
        self.changed.set()

    def of(self, name: str) -> list[Any]:
        return [ctx for n, ctx in self.log if n == name]

    async def wait(self, name: str, count: int = 1, within: float = 5.0) -> list[Any]:
        try:
            async with asyncio.timeout(scaled(within)):
                while len(self.of(name)) < count:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{count} {name!r} not within {scaled(within):g}s: {self.log}") from None
        return self.of(name)

    async def on_connected(self, ctx: Any) -> None:
        self._add("connected", ctx)

    async def on_disconnected(self, ctx: Any) -> None:
        self._add("disconnected", ctx)

    async def on_subscribed(self, ctx: Any) -> None:
        self._add("subscribed", ctx)

    async def on_publication(self, ctx: Any) -> None:
        self._add("publication", ctx)

    async def on_error(self, ctx: Any) -> None:
        self._add("error", ctx)


@pytest_asyncio.fixture(loop_scope="session")
async def sdk_user(admin_server: Running) -> AsyncIterator[Callable[[str], Awaitable[tuple[Client, Recorder]]]]:
    """centrifuge-python clients connected as a user and subscribed to CHANNEL; disconnected at
    teardown."""
    made: list[Client] = []

    async def connect(user: str) -> tuple[Client, Recorder]:
        rec = Recorder()
        client = Client(admin_server.url, events=rec, token=token(user), timeout=scaled(5),
                        max_server_ping_delay=scaled(30), proxy=None)
        made.append(client)
        sub = client.new_subscription(CHANNEL, events=rec)
        await client.connect()
        await sub.subscribe()
        await rec.wait("subscribed")
        return client, rec

    yield connect
    for client in made:
        await client.disconnect()


# -- helpers --------------------------------------------------------------------------------------


async def refreshed_until(page: Page, selector: str, text: str, within: float = 5.0) -> None:
    """Press Refresh, wait for that refresh to finish (``#last-refresh[data-refreshes]`` goes up),
    until ``selector``'s text is ``text``."""
    got = None
    try:
        async with asyncio.timeout(scaled(within)):
            while (got := await page.text_content(selector)) != text:
                before = int(await page.get_attribute("#last-refresh", "data-refreshes") or 0)
                await page.click("#refresh")
                await page.wait_for_function(
                    "n => Number(document.getElementById('last-refresh').dataset.refreshes || 0) > n", arg=before)
    except TimeoutError:
        raise AssertionError(f"{selector}: {got!r} after refreshing for {scaled(within):g}s, "
                             f"expected {text!r}") from None


def presence_users(page: Page) -> Awaitable[list[list[str]]]:
    return page.eval_on_selector_all(
        "#presence tr[data-testid=presence-row]",
        "rows => rows.map(r => [r.dataset.user, r.dataset.client]).sort()")


# -- the test -------------------------------------------------------------------------------------


async def test_admin_page_sees_publishes_to_and_disconnects_real_clients(admin_server, context, sdk_user) -> None:
    r = admin_server
    ann, ann_events = await sdk_user("ann")
    bob, bob_events = await sdk_user("bob")
    ann_id = ann_events.of("connected")[0].client
    bob_id = bob_events.of("connected")[0].client

    page = await context.new_page()
    response = await page.goto(f"http://127.0.0.1:{r.server.api_port}/admin")
    assert response is not None and response.status == 200
    served = await response.text()
    await expect(page.locator("body")).to_have_attribute("data-state", "login")

    # A wrong password: an error, still the login form.
    await page.fill("#password", "not-the-password")
    await page.click("#login")
    await expect(page.locator("#login-error")).to_be_visible()
    await expect(page.locator("#login-error")).to_have_text("Wrong password.")
    await expect(page.locator("body")).to_have_attribute("data-state", "login")

    # The right one.
    await page.fill("#password", PASSWORD)
    await page.click("#login")
    await expect(page.locator("body")).to_have_attribute("data-state", "app")
    await expect(page.locator("#login-error")).to_be_hidden()

    # The two connections: totals, the node's row, the channel with its two subscribers.
    await expect(page.locator("#total-clients")).to_have_text("2")
    await expect(page.locator("#total-users")).to_have_text("2")
    rows = page.locator("#nodes tr[data-testid=node-row]")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-node", r.node.cluster.me.name)
    await expect(rows.first.locator("td").nth(3)).to_have_text("2")  # connections
    await expect(rows.first.locator("td").nth(4)).to_have_text("2")  # users
    channel_row = page.locator(f'#channels tr[data-testid=channel-row][data-channel="{CHANNEL}"]')
    await expect(channel_row.locator("td").nth(1)).to_have_text("2")

    # Selecting the channel shows its presence: both clients.
    await channel_row.click()
    await expect(page.locator("#selected-channel")).to_have_text(CHANNEL)
    await expect(page.locator("#presence tr[data-testid=presence-row]")).to_have_count(2)
    assert await presence_users(page) == sorted([["ann", ann_id], ["bob", bob_id]])
    await expect(page.locator("#history-note")).to_have_text("No publications in history.")

    # Publish from the page: both clients get it, and the page's history shows it.
    await expect(page.locator("#pub-channel")).to_have_value(CHANNEL)  # filled in by the selection
    await page.fill("#pub-data", '{"text":"from admin"}')
    await page.click("#publish")
    await expect(page.locator("#pub-result")).to_have_attribute("data-state", "ok")
    await expect(page.locator("#pub-result")).to_have_text("Published at offset 1.")
    for events in (ann_events, bob_events):
        (pub,) = await events.wait("publication")
        assert pub.pub.data == {"text": "from admin"}
        assert pub.pub.offset == 1
    history = page.locator("#history tr[data-testid=history-row]")
    await expect(history).to_have_count(1)
    await expect(history.first).to_have_attribute("data-offset", "1")
    await expect(history.first.locator("td").nth(1)).to_have_text('{"text":"from admin"}')

    # Disconnect bob from the page: his connection closes for good (no reconnect); ann stays.
    await page.fill("#disc-user", "bob")
    await page.click("#disconnect")
    await expect(page.locator("#disc-result")).to_have_attribute("data-state", "ok")
    await expect(page.locator("#disc-result")).to_have_text('Disconnected user "bob".')
    (gone,) = await bob_events.wait("disconnected")
    assert gone.code == 3503, gone  # force disconnect, no reconnect
    assert bob.state == ClientState.DISCONNECTED
    assert ann.state == ClientState.CONNECTED and not ann_events.of("disconnected")

    # ... and the page sees him go.
    await refreshed_until(page, "#total-clients", "1")
    await expect(page.locator("#total-users")).to_have_text("1")
    await expect(rows.first.locator("td").nth(3)).to_have_text("1")
    await expect(channel_row.locator("td").nth(1)).to_have_text("1")
    await expect(page.locator("#presence tr[data-testid=presence-row]")).to_have_count(1)
    assert await presence_users(page) == [["ann", ann_id]]
    assert int(await page.get_attribute("#last-refresh", "data-refreshes") or 0) >= 2

    # No cookie, and no secret in what the page serves or shows.
    assert await context.cookies() == []
    assert await page.evaluate("document.cookie") == ""
    html = await page.content()
    for secret in (PASSWORD, API_KEY):
        assert secret not in served, "a secret in the served page"
        assert secret not in html, "a secret in the page's HTML"
    assert await page.input_value("#password") == ""  # cleared once logged in
    stored = await page.evaluate("JSON.stringify({...sessionStorage, ...localStorage})")
    assert PASSWORD not in stored and API_KEY not in stored
