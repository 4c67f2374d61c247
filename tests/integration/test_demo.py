"""The demo page's HTTP side (``http_server.demo``): its routes exist only with the flag, its
headers, its settings, and the token endpoint's validation. What the page does in a browser
is tested in tests/browser/test_browser.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from conftest import SECRET, RawPeer

from livegate.config import load_config
from livegate.server import demo

DEMO = {"http_server": {"demo": True}}
ROOT = Path(__file__).resolve().parents[2]


def base(running: Any) -> str:
    return f"http://127.0.0.1:{running.server.port}"


async def get(url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def post_token(running: Any, body: Any = None, *, data: bytes | None = None,
                     headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        kw: dict[str, Any] = {"data": data} if data is not None else {"json": body}
        async with s.post(base(running) + "/demo/token", headers=headers, **kw) as resp:
            text = await resp.text()
            return resp.status, jsonish(text.encode()) if resp.content_type == "application/json" else {"text": text}


async def test_off_by_default(start_server) -> None:
    r = await start_server()
    assert (await get(base(r) + "/"))[0] == 404
    assert (await get(base(r) + "/demo/app.js"))[0] == 404
    assert (await post_token(r, {"name": "Ann"}))[0] == 404
    assert (await get(base(r) + "/health"))[0] == 200


def test_embedded_config_turns_the_demo_on() -> None:
    cfg = load_config(ROOT / "config.toml", environ={})
    assert cfg.http_server.demo and cfg.http_stream.enabled and cfg.sse.enabled
    assert not cfg.websocket.disabled
    assert [ns.name for ns in cfg.channel.namespaces if ns.name == "chat"], "the demo channel chat:lobby needs it"


async def test_page_and_headers(start_server) -> None:
    r = await start_server(DEMO)
    status, headers, body = await get(base(r) + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script src="/demo/app.js"' in body and b'id="recovered"' in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert f"ws://127.0.0.1:{r.server.port}" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path, kind in (("/demo/app.js", "application/javascript"), ("/demo/demo.css", "text/css"),
                       ("/demo/centrifuge.js", "application/javascript")):
        status, headers, body = await get(base(r) + path)
        assert status == 200 and headers["Content-Type"].startswith(kind), path
        assert headers["X-Frame-Options"] == "DENY"
    assert b"globalThis.Centrifuge" in body  # the SDK's browser bundle (make web, or make js)
    assert (await get(base(r) + "/demo/centrifuge.js.map"))[0] == 200
    assert (await get(base(r) + "/favicon.ico"))[0] == 204


async def test_settings_follow_the_config(start_server) -> None:
    r = await start_server({**DEMO, "http_stream": {"enabled": False}, "sse": {"enabled": False}})
    status, _, body = await get(base(r) + "/demo/config")
    assert status == 200
    assert jsonish(body) == {"channel": "chat:lobby", "websocket": "/connection/websocket", "http_stream": None,
                             "sse": None, "emulation": None}
    r = await start_server({**DEMO, "websocket": {"disabled": True}, "http_stream": {"enabled": False},
                            "sse": {"enabled": True}})
    _, _, body = await get(base(r) + "/demo/config")
    assert jsonish(body) == {"channel": "chat:lobby", "websocket": None, "http_stream": None,
                             "sse": "/connection/sse", "emulation": "/emulation"}


def jsonish(body: bytes) -> Any:
    import orjson
    return orjson.loads(body)


async def test_missing_sdk_bundle(start_server, monkeypatch, tmp_path) -> None:
    r = await start_server(DEMO)
    monkeypatch.setenv(demo.SDK_ENV, str(tmp_path / "missing.js"))
    status, headers, body = await get(base(r) + "/demo/centrifuge.js")
    assert status == 404 and b"make web" in body
    bundle = tmp_path / "centrifuge.js"
    bundle.write_text("globalThis.Centrifuge = function () {};\n")
    monkeypatch.setenv(demo.SDK_ENV, str(bundle))
    status, _, body = await get(base(r) + "/demo/centrifuge.js")
    assert status == 200 and body == bundle.read_bytes()
    assert (await get(base(r) + "/demo/centrifuge.js.map"))[0] == 404


async def test_token(start_server, peer_factory) -> None:
    r = await start_server(DEMO)
    status, body = await post_token(r, {"name": "  Zoë the tester  "})
    assert status == 200, body
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == body["user"] == demo.user_for("Zoë the tester")
    assert claims["info"] == {"name": "Zoë the tester"}
    assert abs(claims["exp"] - (time.time() + demo.TOKEN_TTL)) < 60
    # The same name is the same user; another name another one.
    assert (await post_token(r, {"name": "Zoë the tester"}))[1]["user"] == body["user"]
    assert (await post_token(r, {"name": "Zoe the tester"}))[1]["user"] != body["user"]
    # The token connects, as that user, with the name as connection info.
    peer: RawPeer = await peer_factory(r.url)
    reply = await peer.call("connect", {"token": body["token"]})
    assert "error" not in reply, reply
    assert "error" not in await peer.call("subscribe", {"channel": "chat:lobby"})
    clients = (await peer.call("presence", {"channel": "chat:lobby"}))["presence"]["presence"]
    assert [(c["user"], c["conn_info"]) for c in clients.values()] == [(body["user"], {"name": "Zoë the tester"})]


@pytest.mark.parametrize("body", [
    {"name": ""}, {"name": "   "}, {"name": "x" * 33}, {"name": 7}, {"name": None}, {}, ["Ann"], "Ann",
    {"name": "bell\x07"}, {"name": "new\nline"}, {"name": "zero\u200bwidth"},
])
async def test_token_refuses_bad_names(start_server, body: Any) -> None:
    r = await start_server(DEMO)
    status, answer = await post_token(r, body)
    assert status == 400 and "name" in answer["error"]


async def test_token_name_limits(start_server) -> None:
    r = await start_server(DEMO)
    assert (await post_token(r, {"name": "x" * 32}))[0] == 200
    assert (await post_token(r, {"name": "é" * 32}))[0] == 200  # characters, not bytes
    assert (await post_token(r, {"name": "A"}))[0] == 200


async def test_token_request_checks(start_server) -> None:
    r = await start_server(DEMO)
    assert (await post_token(r, data=b"{nope", headers={"Content-Type": "application/json"}))[0] == 400
    assert (await post_token(r, data=b'{"name": "Ann"}', headers={"Content-Type": "text/plain"}))[0] == 415
    big = b'{"name": "Ann", "pad": "' + b"x" * 2000 + b'"}'
    assert (await post_token(r, data=big, headers={"Content-Type": "application/json"}))[0] == 413
    other = {"Origin": "https://evil.example"}
    assert (await post_token(r, {"name": "Ann"}, headers=other))[0] == 403
    same = {"Origin": base(r)}
    assert (await post_token(r, {"name": "Ann"}, headers=same))[0] == 200
    async with aiohttp.ClientSession() as s, s.get(base(r) + "/demo/token") as resp:
        assert resp.status == 405


async def test_token_needs_an_hmac_secret(start_server) -> None:
    r = await start_server({**DEMO, "client": {"token": {"hmac_secret_key": ""}}})
    status, body = await post_token(r, {"name": "Ann"})
    assert status == 503 and "hmac_secret_key" in body["error"]


def test_name_rules() -> None:
    assert demo.validate_name(" Ann ") == "Ann"
    assert demo.validate_name("Ann\tB") is None
    assert demo.validate_name("😀" * 32) == "😀" * 32
    assert demo.user_for("Ann").startswith("demo-") and demo.user_for("Ann") == demo.user_for("Ann")
    assert all(ch not in demo.user_for("a#b,c") for ch in "#,")
