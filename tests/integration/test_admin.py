"""The admin page on the API port, against real servers: off by default, login with the admin
password or the API key (401, 429 past the failure limit), the session token authorizing the
server API and nothing forged or expired doing so, security headers, no secret in what the page
serves, and publish / disconnect through the API with the token reaching real SDK clients."""

from __future__ import annotations

import logging
import re
import time

import aiohttp
import orjson
import pytest
from conftest import token, unique_prefix
from sdk import sdk_subscription

from livegate.server.admin import ADMIN_TOKEN_TTL, LOGIN_FAILURES, derive_secret, sign_token

PASSWORD = "admin-password-0123456789"
HMAC_SECRET = "admin-hmac-secret-abcdefghijklmnop"
API_KEY = "test-api-key"  # conftest.BASE_CONFIG's http_api.key
ADMIN = {"admin": {"enabled": True, "password": PASSWORD, "secret": HMAC_SECRET}}


async def http(r, method: str, path: str, *, body: bytes | None = None, headers=None,  # noqa: ANN001
               json_body=None) -> tuple[int, dict[str, str], bytes]:  # noqa: ANN001
    hdrs = dict(headers or {})
    if json_body is not None:
        body = orjson.dumps(json_body)
        hdrs.setdefault("Content-Type", "application/json")
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"http://127.0.0.1:{r.server.api_port}{path}", data=body,
                                   headers=hdrs, allow_redirects=False) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def login(r, password: str, prefix: str = "/admin") -> tuple[int, dict[str, str], dict]:  # noqa: ANN001
    status, headers, body = await http(r, "POST", f"{prefix}/login", json_body={"password": password})
    return status, headers, orjson.loads(body) if headers.get("Content-Type") == "application/json" else {}


async def admin_token(r, password: str = PASSWORD) -> str:  # noqa: ANN001
    status, _, body = await login(r, password)
    assert status == 200, body
    return body["token"]


async def api(r, method: str, params: dict, tok: str) -> tuple[int, bytes]:  # noqa: ANN001
    status, _, body = await http(r, "POST", f"/api/{method}", json_body=params, headers={"Authorization": f"token {tok}"})
    return status, body


# -- on and off ------------------------------------------------------------------------------


async def test_the_page_is_off_by_default(start_server):
    r = await start_server()
    for method, path in [("GET", "/admin"), ("GET", "/admin/"), ("GET", "/admin/static/admin.js")]:
        assert (await http(r, method, path))[0] == 404, path
    assert (await login(r, "anything"))[0] == 404
    assert (await http(r, "POST", "/api/info", headers={"X-API-Key": API_KEY}))[0] == 200


async def test_enabled_without_any_secret_the_page_stays_off_and_says_why(start_server, caplog):
    caplog.set_level(logging.WARNING, logger="livegate.admin")
    r = await start_server({"admin": {"enabled": True}, "http_api": {"key": ""}})
    assert (await http(r, "GET", "/admin"))[0] == 404
    assert (await login(r, ""))[0] == 404
    warnings = [rec.getMessage() for rec in caplog.records if rec.name == "livegate.admin"]
    assert len(warnings) == 1 and "admin page disabled" in warnings[0]


async def test_a_token_from_a_page_that_is_off_authorizes_nothing(start_server):
    """The same secret, but admin.enabled is false: the API takes only its key."""
    r = await start_server({"admin": {"enabled": False, "password": PASSWORD, "secret": HMAC_SECRET}})
    tok = sign_token(HMAC_SECRET.encode(), int(time.time()) + 600)
    assert await api(r, "info", {}, tok) == (401, b"")


# -- login -----------------------------------------------------------------------------------


async def test_login_with_the_password_or_the_api_key(start_server):
    r = await start_server(ADMIN)
    for secret in (PASSWORD, API_KEY):
        status, headers, body = await login(r, secret)
        assert status == 200, body
        assert set(body) == {"token", "expires_at"}
        assert abs(body["expires_at"] - (time.time() + ADMIN_TOKEN_TTL)) < 60
        assert headers["Content-Type"].startswith("application/json")
        assert "Set-Cookie" not in headers  # the page keeps the token itself: no cookie, no CSRF
        assert secret not in body["token"] and HMAC_SECRET not in body["token"]


async def test_a_wrong_password_is_401_with_a_small_json_error(start_server):
    r = await start_server(ADMIN)
    wrong = ["nope", "", PASSWORD + "x", PASSWORD.upper(), HMAC_SECRET]  # LOGIN_FAILURES of them: none is 429
    assert len(wrong) <= LOGIN_FAILURES
    for guess in wrong:
        status, headers, body = await login(r, guess)
        assert status == 401 and body == {"error": "wrong password"}, guess
        assert "token" not in body and "WWW-Authenticate" not in headers


async def test_an_empty_password_never_logs_in_when_only_the_api_key_is_set(start_server):
    r = await start_server({"admin": {"enabled": True}})
    assert (await login(r, ""))[0] == 401
    assert (await login(r, API_KEY))[0] == 200


async def test_with_only_a_password_and_no_api_key_the_token_still_authorizes(start_server):
    r = await start_server({"admin": {"enabled": True, "password": PASSWORD}, "http_api": {"key": ""}})
    tok = await admin_token(r)
    status, body = await api(r, "info", {}, tok)
    assert status == 200 and "nodes" in orjson.loads(body)["result"]
    assert (await http(r, "POST", "/api/info", headers={"X-API-Key": ""}))[0] == 401


async def test_failed_logins_are_limited_per_address(start_server):
    r = await start_server(ADMIN)
    for _ in range(LOGIN_FAILURES):
        assert (await login(r, "wrong"))[0] == 401
    status, headers, body = await login(r, "wrong")
    assert status == 429 and "error" in body
    assert 1 <= int(headers["Retry-After"]) <= 10
    assert headers["X-Frame-Options"] == "DENY"
    # While blocked, even the right password is not compared: guessing stays blocked.
    assert (await login(r, PASSWORD))[0] == 429
    status, _, metrics = await http(r, "GET", "/metrics")
    assert re.search(rb'livegate_limited_total\{limit="admin_login"\} 2\.0', metrics), metrics[-2000:]


@pytest.mark.parametrize(("content_type", "body", "status"), [
    ("text/plain", b'{"password": "x"}', 415),
    ("application/x-www-form-urlencoded", b"password=x", 415),
    ("multipart/form-data; boundary=x", b"--x--", 415),
    ("application/json", b"password=x", 400),
    ("application/json", b'["x"]', 400),
    ("application/json", b'{"password": 5}', 400),
    ("application/json", b'{"pass": "x"}', 400),
])
async def test_a_login_body_must_be_a_json_object_with_a_password(start_server, content_type, body, status):
    r = await start_server(ADMIN)
    got, headers, answer = await http(r, "POST", "/admin/login", body=body, headers={"Content-Type": content_type})
    assert got == status, answer
    if status == 400:
        assert orjson.loads(answer) == {"error": 'body must be {"password": "..."}'}
        assert headers["X-Frame-Options"] == "DENY"
    assert (await login(r, PASSWORD))[0] == 200  # none of these counted as a failed login


async def test_logins_are_logged_with_the_address_and_never_the_password(start_server, caplog):
    caplog.set_level(logging.DEBUG, logger="livegate")
    r = await start_server(ADMIN)
    await login(r, "a-wrong-guess-xyz")
    await admin_token(r)
    records = [rec for rec in caplog.records if rec.name == "livegate.admin"]
    failed = [rec for rec in records if rec.getMessage() == "admin login failed"]
    ok = [rec for rec in records if rec.getMessage() == "admin login"]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING and failed[0].remote == "127.0.0.1"
    assert len(ok) == 1 and ok[0].levelno == logging.INFO and ok[0].remote == "127.0.0.1"
    everything = " ".join(f"{rec.getMessage()} {vars(rec)}" for rec in caplog.records)
    for secret in ("a-wrong-guess-xyz", PASSWORD, HMAC_SECRET):
        assert secret not in everything


# -- the token and the API ---------------------------------------------------------------------


async def test_the_token_authorizes_the_api_and_forged_or_expired_ones_do_not(start_server):
    r = await start_server(ADMIN)
    tok = await admin_token(r)
    status, body = await api(r, "info", {}, tok)
    assert status == 200 and orjson.loads(body)["result"]["nodes"][0]["num_clients"] == 0
    # The legacy endpoint takes it too.
    status, _, body = await http(r, "POST", "/api", json_body={"method": "info", "params": {}},
                                 headers={"Authorization": f"Token {tok}"})
    assert status == 200 and b"nodes" in body

    expires, signature = tok.split(".")
    now = int(time.time())
    forged = [
        f"{int(expires) + 3600}.{signature}",                                    # longer life, old signature
        f"{expires}.{signature[:-2]}AA" if not signature.endswith("AA") else f"{expires}.{signature[:-2]}BB",
        sign_token(b"a-guessed-secret", now + 600),                              # another secret
        sign_token(PASSWORD.encode(), now + 600),                                # the password as the key
        sign_token(API_KEY.encode(), now + 600),                                 # the API key as the key
        sign_token(HMAC_SECRET.encode(), now - 1),                               # expired
        sign_token(HMAC_SECRET.encode(), now + 10 * ADMIN_TOKEN_TTL),            # longer than any it issues
        "", "token", PASSWORD, API_KEY,
    ]
    for bad in forged:
        assert await api(r, "info", {}, bad) == (401, b""), bad
    # The right token in another scheme or header is not the API key, and the key is no token.
    for headers in ({"Authorization": f"apikey {tok}"}, {"X-API-Key": tok}, {"Authorization": f"Bearer {tok}"}):
        assert (await http(r, "POST", "/api/info", headers=headers))[::2] == (401, b"")
    assert (await http(r, "POST", f"/api/info?api_key={tok}"))[0] == 401
    # A token the server signs with its secret, valid for a minute more: taken.
    assert (await api(r, "info", {}, sign_token(HMAC_SECRET.encode(), now + 60)))[0] == 200


async def test_the_api_key_works_as_before_with_the_page_on(start_server):
    r = await start_server(ADMIN)
    for headers, path in [({"X-API-Key": API_KEY}, "/api/info"), ({"Authorization": f"apikey {API_KEY}"}, "/api/info"),
                          ({}, f"/api/info?api_key={API_KEY}")]:
        status, resp_headers, _ = await http(r, "POST", path, headers=headers)
        assert status == 200
        assert "X-Frame-Options" not in resp_headers  # API answers are as they were
    assert (await http(r, "POST", "/api/info", headers={"X-API-Key": "wrong"}))[::2] == (401, b"")
    assert (await http(r, "POST", "/api/info", headers={"Authorization": f"token {API_KEY}"}))[::2] == (401, b"")


async def test_the_token_needs_no_secret_set_when_derived(start_server):
    """Without admin.secret the key is derived from password and API key: tokens work, and a
    token signed with the password or key itself does not."""
    cfg = {"admin": {"enabled": True, "password": PASSWORD}}
    r = await start_server(cfg)
    tok = await admin_token(r)
    assert (await api(r, "info", {}, tok))[0] == 200
    # A second server with the same config (another worker) takes it.
    r2 = await start_server(cfg)
    assert (await api(r2, "info", {}, tok))[0] == 200
    assert (await api(r2, "info", {}, sign_token(derive_secret(r2.config), int(time.time()) + 60)))[0] == 200
    # Another password: another key.
    r3 = await start_server({"admin": {"enabled": True, "password": PASSWORD + "-new"}})
    assert (await api(r3, "info", {}, tok))[0] == 401


# -- what the page serves --------------------------------------------------------------------------


async def test_security_headers_on_everything_the_page_serves(start_server):
    r = await start_server(ADMIN)
    answers = [await http(r, "GET", path) for path in ("/admin", "/admin/", "/admin/static/admin.js",
                                                       "/admin/static/admin.css")]
    answers.append(await http(r, "POST", "/admin/login", json_body={"password": PASSWORD}))
    answers.append(await http(r, "POST", "/admin/login", json_body={"password": "wrong"}))
    assert [a[0] for a in answers] == [200, 200, 200, 200, 200, 401]
    for _, headers, _ in answers:
        assert headers["X-Frame-Options"] == "DENY"
        csp = headers["Content-Security-Policy"]
        for directive in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "object-src 'none'",
                          "base-uri 'none'"):
            assert directive in csp, (directive, csp)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Server"] == "livegate"
    types = [a[1]["Content-Type"] for a in answers[:4]]
    assert types == ["text/html; charset=utf-8", "text/html; charset=utf-8", "text/javascript; charset=utf-8",
                     "text/css; charset=utf-8"]


async def test_the_page_holds_no_secret_and_loads_nothing_from_elsewhere(start_server):
    r = await start_server(ADMIN)
    served = b"".join([(await http(r, "GET", p))[2] for p in ("/admin", "/admin/static/admin.js",
                                                               "/admin/static/admin.css")])
    for secret in (PASSWORD, API_KEY, HMAC_SECRET):
        assert secret.encode() not in served
    derived = derive_secret(r.config)
    assert derived not in served and derived.hex().encode() not in served
    page = (await http(r, "GET", "/admin"))[2].decode()
    assert not re.search(r"(https?:)?//[a-z0-9]", page.replace("<!doctype html>", ""), re.I)  # no other origin
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S)
    assert scripts == [""]  # one script, from a file (CSP: script-src 'self'); none inline
    assert 'src="/admin/static/admin.js"' in page and 'href="/admin/static/admin.css"' in page
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers either
    js = (await http(r, "GET", "/admin/static/admin.js"))[2].decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "document.cookie"):
        assert sink not in js, sink  # server data is written as text only
    for needed in ('id="password"', 'id="login"', 'id="pub-channel"', 'id="pub-data"', 'id="publish"',
                   'id="disc-user"', 'id="disconnect"', 'id="nodes"', 'id="channels"', 'id="presence"',
                   'id="history"', 'id="logout"'):
        assert needed in page, needed
    assert 'data-api-prefix="/api"' in page


async def test_another_handler_prefix(start_server):
    r = await start_server({"admin": {"enabled": True, "password": PASSWORD, "handler_prefix": "/ops/console/"}})
    assert (await http(r, "GET", "/admin"))[0] == 404
    status, _, page = await http(r, "GET", "/ops/console")
    assert status == 200 and b'src="/ops/console/static/admin.js"' in page
    assert b'data-admin-prefix="/ops/console"' in page
    assert (await http(r, "GET", "/ops/console/static/admin.css"))[0] == 200
    status, _, body = await login(r, PASSWORD, "/ops/console")
    assert status == 200 and (await api(r, "info", {}, body["token"]))[0] == 200


# -- what the page does, through the API with the token, end to end ---------------------------------


async def test_publish_and_disconnect_with_the_token_reach_real_clients(start_server, clients):
    r = await start_server(ADMIN)
    tok = await admin_token(r)
    channel = f"chat:{unique_prefix()}"
    sdk, events = clients(r.url, token("alice"))
    sub, sub_events = sdk_subscription(sdk, channel)
    await sdk.connect()
    await sub.subscribe()
    await sub_events.wait("subscribed")

    # What the page shows: nodes, channels, presence and history.
    info = orjson.loads((await api(r, "info", {}, tok))[1])["result"]
    assert info["nodes"][0]["num_clients"] == 1 and info["nodes"][0]["num_users"] == 1
    chans = orjson.loads((await api(r, "channels", {}, tok))[1])["result"]["channels"]
    assert chans[channel] == {"num_clients": 1}
    presence = orjson.loads((await api(r, "presence", {"channel": channel}, tok))[1])["result"]["presence"]
    assert [p["user"] for p in presence.values()] == ["alice"]

    # The page sends the data as typed: big integers keep every digit.
    body = b'{"channel":"' + channel.encode() + b'","data":{"text":"from the admin page","n":12345678901234567890}}'
    status, _, answer = await http(r, "POST", "/api/publish", body=body,
                                   headers={"Authorization": f"token {tok}", "Content-Type": "application/json"})
    assert status == 200 and orjson.loads(answer)["result"]["offset"] == 1
    (pub,) = await sub_events.wait("publication")
    assert pub.pub.data == {"text": "from the admin page", "n": 12345678901234567890}

    history = orjson.loads((await api(r, "history", {"channel": channel, "limit": 20, "reverse": True}, tok))[1])
    assert [p["data"]["text"] for p in history["result"]["publications"]] == ["from the admin page"]

    status, answer = await api(r, "disconnect", {"user": "alice"}, tok)
    assert status == 200 and orjson.loads(answer) == {"result": {}}
    (ctx,) = await events.wait("disconnected")
    assert ctx.code == 3503  # force disconnect (no reconnect)
