"""The demo chat page of the client port (``http_server.demo = true``; never in production).

Routes, on the client port's aiohttp app:

- ``GET /``: the page (``static/demo/index.html``), a chat on ``chat:lobby``;
- ``GET /demo/app.js``, ``GET /demo/demo.css``: its script and style;
- ``GET /demo/centrifuge.js`` (and its ``.map``): the browser bundle of centrifuge-js, from the
  npm package that ``make web`` installs under ``web/node_modules`` (``make run`` depends on
  it); ``$LIVEGATE_DEMO_CENTRIFUGE_JS`` names another copy. Without one it is a 404 and the
  page says that the bundle is missing;
- ``GET /demo/config``: what the page needs to connect (the channel, and the paths of the
  enabled transports, in the order the page tries them: websocket, http_stream, sse);
- ``POST /demo/token``: ``{"name": "..."}`` → ``{"token": "...", "user": "..."}``, a connection
  token for anyone who asks, signed with ``client.token.hmac_secret_key``: which is why all of
  this exists only while ``http_server.demo`` is on.

Every response of the page carries a strict Content-Security-Policy (scripts and styles from
the page's origin only, nothing inline, connections to the page's origin only), and
``X-Frame-Options: DENY``. The page writes what it receives as text, never as HTML.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import unicodedata
from pathlib import Path

import orjson
from aiohttp import web

from livegate.auth import make_hmac_token
from livegate.node import Node
from livegate.server.websocket import origin_allowed

__all__ = ["add_demo_routes", "sdk_bundle", "DEMO_CHANNEL", "TOKEN_TTL", "NAME_MAX"]

log = logging.getLogger("livegate.demo")

STATIC = Path(__file__).resolve().parent / "static" / "demo"
#: The repository root when livegate runs from a checkout (``pip install -e``, ``make run``).
_CHECKOUT = Path(__file__).resolve().parents[2]
#: Where the centrifuge-js browser bundle is looked for, in order (``make web`` installs the first;
#: ``make js`` the second, for the tests).
SDK_CANDIDATES = (
    _CHECKOUT / "web" / "node_modules" / "centrifuge" / "dist" / "centrifuge.js",
    _CHECKOUT / "tests" / "js" / "node_modules" / "centrifuge" / "dist" / "centrifuge.js",
)
SDK_ENV = "LIVEGATE_DEMO_CENTRIFUGE_JS"

DEMO_CHANNEL = "chat:lobby"
TOKEN_TTL = 3600
NAME_MAX = 32
_TOKEN_BODY_MAX = 1024

_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def sdk_bundle() -> Path | None:
    """The centrifuge-js browser bundle to serve, or None when there is none (looked up on
    every request, so ``make web`` while the server runs is enough)."""
    env = os.environ.get(SDK_ENV)
    for path in (Path(env),) if env else SDK_CANDIDATES:
        if path.is_file():
            return path
    return None


def _security_headers(request: web.Request) -> dict[str, str]:
    # connect-src: 'self' covers ws:/wss: to the same host in CSP 3, which not every browser
    # implements; the page's host is named for them (only when it is a plain host[:port]).
    connect = "'self'"
    if _HOST.fullmatch(request.host or ""):
        connect += f" ws://{request.host} wss://{request.host}"
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
           f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store"}


def validate_name(value: object) -> str | None:
    """The display name, or None when it is not 1 to NAME_MAX characters of printable text
    (surrounding white space removed first)."""
    if not isinstance(value, str):
        return None
    name = value.strip()
    if not 1 <= len(name) <= NAME_MAX:
        return None
    if any(unicodedata.category(ch)[0] == "C" for ch in name):  # control, format, unassigned, surrogates
        return None
    return name


def user_for(name: str) -> str:
    """The user id of a display name: the same name is the same user (its connections share
    presence), and no name can make an id with a meaning (``#``, ``,``) in channel names."""
    return "demo-" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _json(status: int, payload: object, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json",
                        headers=headers)


def add_demo_routes(app: web.Application, node: Node) -> None:
    cfg = node.config
    pages = {name: (STATIC / name).read_bytes() for name in ("index.html", "app.js", "demo.css")}
    settings = {
        "channel": DEMO_CHANNEL,
        "websocket": None if cfg.websocket.disabled else cfg.websocket.handler_prefix,
        "http_stream": cfg.http_stream.handler_prefix if cfg.http_stream.enabled else None,
        "sse": cfg.sse.handler_prefix if cfg.sse.enabled else None,
        "emulation": cfg.emulation.handler_prefix if cfg.http_stream.enabled or cfg.sse.enabled else None,
    }
    settings_body = orjson.dumps(settings)

    def static(name: str, content_type: str) -> web.RouteDef:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=pages[name], content_type=content_type, charset="utf-8",
                                headers=_security_headers(request))
        return web.get("/" if name == "index.html" else f"/demo/{name}", handler)

    async def sdk(request: web.Request) -> web.StreamResponse:
        bundle = sdk_bundle()
        if request.path.endswith(".map") and bundle is not None:
            bundle = bundle.with_name(bundle.name + ".map")
        if bundle is None or not bundle.is_file():
            return web.Response(status=404, text="// the centrifuge-js bundle is not installed: run `make web` (needs npm)\n",
                                content_type="application/javascript", headers=_security_headers(request))
        return web.FileResponse(bundle, headers={**_security_headers(request), "Cache-Control": "no-cache",
                                                 "Content-Type": "application/javascript; charset=utf-8"})

    async def favicon(request: web.Request) -> web.Response:
        return web.Response(status=204, headers=_security_headers(request))  # no icon, and no 404 in the console

    async def config(request: web.Request) -> web.Response:
        return web.Response(body=settings_body, content_type="application/json", headers=_security_headers(request))

    async def token(request: web.Request) -> web.Response:
        headers = _security_headers(request)
        secret = cfg.client.token.hmac_secret_key
        if not secret:
            return _json(503, {"error": "the demo needs client.token.hmac_secret_key to sign tokens"}, headers)
        if not origin_allowed(request.headers.get("Origin"), request.host, cfg.client.allowed_origins):
            # The client port's rule (client.allowed_origins, else the same host). No CORS
            # headers are sent, so another site's page could not read a token anyway.
            return _json(403, {"error": "origin not allowed"}, headers)
        if request.content_type != "application/json":
            return _json(415, {"error": "the body must be JSON (Content-Type: application/json)"}, headers)
        if request.content_length is not None and request.content_length > _TOKEN_BODY_MAX:
            return _json(413, {"error": "request body too large"}, headers)
        body = await request.content.read(_TOKEN_BODY_MAX + 1)
        if len(body) > _TOKEN_BODY_MAX:
            return _json(413, {"error": "request body too large"}, headers)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _json(400, {"error": "the body is not JSON"}, headers)
        name = validate_name(data.get("name")) if isinstance(data, dict) else None
        if name is None:
            return _json(400, {"error": f"name: 1 to {NAME_MAX} characters of text"}, headers)
        user = user_for(name)
        tok = make_hmac_token(secret, user, ttl=TOKEN_TTL, info={"name": name})
        return _json(200, {"token": tok, "user": user}, headers)

    app.router.add_routes([
        static("index.html", "text/html"),
        static("app.js", "application/javascript"),
        static("demo.css", "text/css"),
        web.get("/demo/centrifuge.js", sdk),
        web.get("/demo/centrifuge.js.map", sdk),
        web.get("/demo/config", config),
        web.get("/favicon.ico", favicon),
        web.post("/demo/token", token),
    ])
    if sdk_bundle() is None:
        log.warning("demo page: the centrifuge-js bundle is not installed (run `make web`, which needs npm); "
                    "the page will say so")
    log.warning("demo page enabled: it hands out connection tokens to anyone; never enable it in production",
                extra={"url": f"http://{cfg.http_server.address}:{cfg.http_server.port}/"})
