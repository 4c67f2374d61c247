"""The admin web page on the API port (Centrifugo's admin UI), under ``admin.handler_prefix``.

``GET /admin`` serves one page (its script and style are files under ``static/admin``, served
from here; nothing comes from elsewhere). The operator logs in with ``admin.password`` or
``http_api.key``: ``POST /admin/login`` answers a session token, an HMAC-SHA256 signature over
its expiry (``ADMIN_TOKEN_TTL``), which the page keeps in ``sessionStorage`` and sends as
``Authorization: token <t>`` on its calls of the server API (``/api/<method>``), the only
thing the page calls. No cookie: a request carries the token only when the page's own script
put it there, so another site cannot make a browser send an authorized request (no CSRF).

Failed logins are limited per remote address (``LOGIN_FAILURES`` in ``LOGIN_WINDOW`` seconds,
then 429) and logged with the address, never with what was typed. The page is off unless
``admin.enabled``, and also while neither ``admin.password`` nor ``http_api.key`` is set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web

from livegate.config import Config

__all__ = ["AdminPage", "LoginLimiter", "sign_token", "verify_token", "derive_secret", "admin_page",
           "ADMIN_HEADERS", "ADMIN_TOKEN_TTL", "LOGIN_FAILURES", "LOGIN_WINDOW"]

log = logging.getLogger("livegate.admin")

#: How long an admin session token is valid.
ADMIN_TOKEN_TTL = 12 * 3600
#: Failed logins allowed from one address (an IPv6 /64) within LOGIN_WINDOW seconds; more: 429.
LOGIN_FAILURES = 5
LOGIN_WINDOW = 10.0
#: Addresses with recent failures remembered at most (the oldest are forgotten first).
MAX_TRACKED_ADDRESSES = 10_000

STATIC = Path(__file__).with_name("static") / "admin"

#: On every response of the admin page and its login. The page's script and style are files of
#: the page's own origin: no inline script, nothing from another origin, no framing.
ADMIN_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_TOKEN_CONTEXT = b"livegate-admin-token-v1."


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _signature(secret: bytes, expires: str) -> str:
    return _b64(hmac.new(secret, _TOKEN_CONTEXT + expires.encode(), hashlib.sha256).digest())


def sign_token(secret: bytes, expires_at: int) -> str:
    """A session token valid until ``expires_at`` (Unix seconds): ``<expires_at>.<signature>``."""
    expires = str(int(expires_at))
    return f"{expires}.{_signature(secret, expires)}"


def verify_token(secret: bytes, token: str, now: float, *, ttl: float = ADMIN_TOKEN_TTL) -> bool:
    """Whether ``token`` was signed with ``secret`` and is valid at ``now``: not expired, and
    not valid for longer than ``ttl`` from now (no token signed here is)."""
    expires, dot, signature = token.partition(".")
    if not dot or not expires.isascii() or not expires.isdigit() or len(expires) > 12 or not signature.isascii():
        return False
    if not hmac.compare_digest(signature.encode(), _signature(secret, expires).encode()):
        return False
    return now < int(expires) <= now + ttl + 60  # a minute of slack for a clock that stepped back


def derive_secret(config: Config) -> bytes:
    """The HMAC key of session tokens: ``admin.secret``, else derived from ``admin.password`` and
    ``http_api.key`` with scrypt (the same in every worker and after a restart; a new password
    or key ends every session; a captured token is slow to turn into a guess of the password)."""
    if config.admin.secret:
        return config.admin.secret.encode()
    material = b"\0".join([config.admin.password.encode(), config.http_api.key.encode()])
    return hashlib.scrypt(material, salt=b"livegate admin session tokens v1", n=2**14, r=8, p=1, dklen=32)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def _address_key(remote: str | None) -> str:
    """Who a failed login is counted for: the address, or its /64 for IPv6 (one host has many)."""
    if not remote:
        return "?"
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginLimiter:
    """At most ``failures`` failed logins per address within ``window`` seconds: past that,
    every login from the address is refused (429, the password not even compared) until the
    oldest failure is ``window`` old. A successful login forgets the address's failures."""

    def __init__(self, failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW, *,
                 clock: Callable[[], float] = time.monotonic, max_tracked: int = MAX_TRACKED_ADDRESSES) -> None:
        self.failures = failures
        self.window = window
        self.clock = clock
        self.max_tracked = max_tracked
        self._seen: dict[str, deque[float]] = {}  # address -> times of its recent failures, oldest first

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._seen.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._seen[address]
            return None
        return times

    def retry_after(self, remote: str | None) -> float:
        """0 when a login from ``remote`` may be tried now, else the seconds until one may."""
        now = self.clock()
        times = self._recent(_address_key(remote), now)
        if times is None or len(times) < self.failures:
            return 0.0
        return max(times[-self.failures] + self.window - now, 0.001)

    def failed(self, remote: str | None) -> None:
        now = self.clock()
        address = _address_key(remote)
        times = self._recent(address, now)
        if times is None:
            if len(self._seen) >= self.max_tracked:
                for stale in list(self._seen):  # forget whoever has no recent failure, then the oldest
                    self._recent(stale, now)
                while len(self._seen) >= self.max_tracked:
                    del self._seen[next(iter(self._seen))]
            times = self._seen[address] = deque(maxlen=self.failures)
        times.append(now)

    def succeeded(self, remote: str | None) -> None:
        self._seen.pop(_address_key(remote), None)

    def __len__(self) -> int:
        return len(self._seen)


def admin_page(config: Config) -> AdminPage | None:
    """The admin page for ``config``, or None when it is off (logged once, with why, when it
    was enabled but has nothing to log in with)."""
    admin = config.admin
    if not admin.enabled:
        return None
    if not admin.password and not config.http_api.key:
        log.warning("admin page disabled: admin.enabled is true but neither admin.password nor "
                    "http_api.key is set, so there is nothing to log in with",
                    extra={"handler_prefix": admin.handler_prefix})
        return None
    return AdminPage(config)


class AdminPage:
    """The page's routes, and the check of an ``Authorization: token <t>`` header for the API."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.prefix = config.admin.handler_prefix.rstrip("/")
        self.clock = clock
        self._secret = derive_secret(config)
        # Digests of what logs in: comparing them takes as long whatever was typed.
        self._passwords = [_digest(p) for p in (config.admin.password, config.http_api.key) if p]
        self.limiter = LoginLimiter()
        self.on_limited: Callable[[], None] = lambda: None  # counts a refused login (metrics)
        api_prefix = config.http_api.handler_prefix.rstrip("/")
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        page = page.replace("{{admin_prefix}}", html.escape(self.prefix)).replace("{{api_prefix}}", html.escape(api_prefix))
        self._files: dict[str, tuple[bytes, str]] = {
            "index": (page.encode(), "text/html"),
            "admin.js": ((STATIC / "admin.js").read_bytes(), "text/javascript"),
            "admin.css": ((STATIC / "admin.css").read_bytes(), "text/css"),
        }

    # -- the API's check -----------------------------------------------------------------

    def authorizes(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header holds a valid session token (``token <t>``)."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "token" and verify_token(self._secret, value.strip(), self.clock())

    def issue(self) -> tuple[str, int]:
        expires_at = math.floor(self.clock()) + ADMIN_TOKEN_TTL
        return sign_token(self._secret, expires_at), expires_at

    # -- routes --------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        prefix = self.prefix
        app.router.add_get(prefix, self.page)
        app.router.add_get(f"{prefix}/", self.page)
        app.router.add_get(f"{prefix}/static/admin.js", self.static)
        app.router.add_get(f"{prefix}/static/admin.css", self.static)
        app.router.add_post(f"{prefix}/login", self.login)

    @staticmethod
    def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(body=orjson.dumps(data), status=status, content_type="application/json",
                            headers={**ADMIN_HEADERS, **(headers or {})})

    def _file(self, name: str) -> web.Response:
        body, content_type = self._files[name]
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=ADMIN_HEADERS)

    async def page(self, request: web.Request) -> web.Response:
        return self._file("index")

    async def static(self, request: web.Request) -> web.Response:
        return self._file(request.path.rsplit("/", 1)[1])

    async def login(self, request: web.Request) -> web.Response:
        remote = request.remote
        wait = self.limiter.retry_after(remote)
        if wait:
            self.on_limited()
            log.debug("admin login refused: too many failures", extra={"remote": remote})
            return self._json({"error": "too many failed logins, try again later"}, 429,
                              {"Retry-After": str(math.ceil(wait))})
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        given = body.get("password") if isinstance(body, dict) else None
        if not isinstance(given, str):
            return self._json({"error": 'body must be {"password": "..."}'}, 400)
        typed = _digest(given)
        matched = False
        for digest in self._passwords:  # every one compared, whichever matches
            matched |= hmac.compare_digest(typed, digest)
        if not matched:
            self.limiter.failed(remote)
            log.warning("admin login failed", extra={"remote": remote})
            return self._json({"error": "wrong password"}, 401)
        self.limiter.succeeded(remote)
        token, expires_at = self.issue()
        log.info("admin login", extra={"remote": remote, "expires_at": expires_at})
        return self._json({"token": token, "expires_at": expires_at})
