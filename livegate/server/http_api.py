"""The internal HTTP port: the server API (Centrifugo's format, so `cent` works), its
OpenAPI document, Prometheus /metrics, /health and /ready.

Errors follow Centrifugo: 401 with an empty body for a missing or wrong key, 404 for an
unknown method, 400 (plain text) for a body that is not a JSON object, 413 over
``http_api.max_body_size``, and HTTP 200 ``{"error": {"code", "message"}}`` for a command
that failed. livegate adds 415 for a POST body that is not declared as JSON.

Limits of the port (``start_api``): a request's head and body must arrive within
``http_api.read_timeout`` (``ApiConnection``: one timer per connection, from the accept or
from the first byte of a request until its body is read), a keep-alive connection waits
``http_api.idle_timeout`` for its next request (aiohttp's ``keepalive_timeout``). Malformed
HTTP is answered by aiohttp with a 400 and logged at debug level without a traceback.

With ``admin.enabled`` the port also serves the admin page (``livegate.server.admin``), and an
admin session token (``Authorization: token <t>``) authorizes API calls as the key does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic.json_schema import models_json_schema

from livegate.api import commands
from livegate.api.models import MODELS
from livegate.errors import ClientError
from livegate.metrics import merge_snapshots
from livegate.node import Node
from livegate.protocol.jsontext import JsonTextError, loads, loads_with_spans
from livegate.server.admin import admin_page

__all__ = ["make_api_app", "openapi_document", "MetricsFiles", "ApiConnection", "ApiSite", "start_api",
           "api_runner", "api_connection_factory",
           "API_HEADERS"]

log = logging.getLogger("livegate.http_api")


#: Errors that are the peer's doing, not a bug here: malformed HTTP, a body that does not
#: decode, a peer that went away.
_PEER_FAULTS = (HttpProcessingError, web.RequestPayloadError, ConnectionError)


def _peer_fault(record: logging.LogRecord) -> bool:
    """A peer's fault logged by aiohttp: one line with the reason instead of a traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, _PEER_FAULTS):
        if isinstance(exc.__cause__, HttpProcessingError):  # RequestPayloadError wraps one
            exc = exc.__cause__
        text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        reason = text.strip().splitlines()[:1] or [""]
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {reason[0].strip(': ')[:200]}"
        record.args = None
        record.exc_info = record.exc_text = None
    return True


#: aiohttp's messages about connections of the API port (malformed requests, at debug level).
http_log = logging.getLogger("livegate.http_api.http")
http_log.addFilter(_peer_fault)

#: On every response of the port, aiohttp's own error pages included. No version in ``Server``.
API_HEADERS = {"Server": "livegate", "X-Content-Type-Options": "nosniff"}

#: Media types a POST body may be declared as. Neither is one a browser may send cross-site
#: without a CORS preflight (which this port never grants), so a web page cannot make a
#: visitor's browser call the API. application/octet-stream is what generic HTTP clients
#: (aiohttp's ``data=bytes``) declare for raw bytes.
_BODY_TYPES = frozenset({"application/json", "application/octet-stream"})


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _json_declared(content_type: str | None) -> bool:
    """Whether a Content-Type header declares a JSON body: ``application/json``, optionally
    with ``charset=utf-8`` (JSON is UTF-8), or ``application/octet-stream``."""
    if content_type is None:
        return False
    media, *params = content_type.split(";")
    if media.strip().lower() not in _BODY_TYPES:
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


class ApiConnection(web.RequestHandler):
    """aiohttp's connection handler with a read deadline, quiet logging of malformed HTTP and
    ``API_HEADERS`` on the error pages aiohttp writes itself.

    The deadline (``read_timeout``) runs from the accept, and later from the first byte of
    each request, until the request's body has been read (``body_read``): a peer that sends
    nothing, trickles a request head or stalls in its body is disconnected when it passes.
    Between requests aiohttp's keep-alive timeout applies instead."""

    __slots__ = ("_read_timeout", "_timer", "_in_request", "_next_begun")

    def __init__(self, manager: web.Server, *, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._read_timeout = read_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = False  # from its head's arrival to its response
        self._next_begun = False  # bytes of the next request came while this one was handled

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._timer is None and data:
            if self._in_request:  # its body is read: these bytes begin the next request
                self._next_begun = True
            else:
                self._arm()  # the first byte of a request: its head and body have read_timeout
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def request_started(self) -> None:
        """A request's head is in (the deadline keeps running for its body)."""
        self._in_request = True
        self._next_begun = False
        if self._timer is None:
            self._arm()  # a pipelined request that arrived during the previous one

    def body_read(self) -> None:
        self._disarm()

    def request_done(self) -> None:
        self._in_request = False
        if self._next_begun:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(self._read_timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        log.debug("api connection closed: request not read within read_timeout",
                  extra={"peer": str(self.peername), "read_timeout_s": self._read_timeout})
        self.force_close()  # a body being read fails with ConnectionResetError: see guard()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        response.headers.update(API_HEADERS)
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if isinstance(kw.get("exc_info"), _PEER_FAULTS):
            self.logger.debug(*args, **kw)  # the peer's doing: debug, and one line (_peer_fault)
            return
        super().log_exception(*args, **kw)


class ApiSite(web.BaseSite):
    """``web.TCPSite`` whose connections are ``ApiConnection``s."""

    __slots__ = ("_host", "_port", "_reuse_port", "_handler_kwargs")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool = False,
                 backlog: int = 128, **handler_kwargs: Any) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._handler_kwargs = handler_kwargs

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        manager = self._runner.server
        assert manager is not None

        def connection() -> ApiConnection:
            return ApiConnection(manager, loop=loop, **self._handler_kwargs)

        self._server = await loop.create_server(connection, self._host, self._port, backlog=self._backlog,
                                                reuse_port=self._reuse_port or None)


async def api_runner(node: Node, registry: CollectorRegistry) -> web.AppRunner:
    """``make_api_app``, set up to be served (by ``start_api``, or on the client port)."""
    cfg = node.config.http_api
    # On shutdown, requests still running get a moment to finish, not aiohttp's default minute.
    runner = web.AppRunner(make_api_app(node, registry), access_log=None, handle_signals=False,
                           shutdown_timeout=min(5.0, cfg.read_timeout))
    await runner.setup()
    return runner


def api_connection_factory(node: Node, runner: web.AppRunner) -> Callable[[], ApiConnection]:
    """Connections of the API with the port's limits (read deadline, keep-alive timeout)."""
    cfg = node.config.http_api
    manager = runner.server
    assert manager is not None
    loop = asyncio.get_running_loop()
    return lambda: ApiConnection(manager, loop=loop, read_timeout=cfg.read_timeout, keepalive_timeout=cfg.idle_timeout,
                                 access_log=None, logger=http_log)


async def start_api(node: Node, registry: CollectorRegistry, *, reuse_port: bool = False
                    ) -> tuple[web.AppRunner, ApiSite]:
    """Serve ``make_api_app`` on ``http_api.address:port`` with the port's limits."""
    cfg = node.config.http_api
    runner = await api_runner(node, registry)
    site = ApiSite(runner, cfg.address, cfg.port, reuse_port=reuse_port,
                   read_timeout=cfg.read_timeout, keepalive_timeout=cfg.idle_timeout, access_log=None,
                   logger=http_log)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


class MetricsFiles:
    """With several workers: each writes its snapshot to a shared folder; /metrics adds them up."""

    def __init__(self, folder: str | None) -> None:
        self.folder = Path(folder) if folder else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.mine = self.folder / f"{os.getpid()}.json" if self.folder else None

    def write(self, own: dict[str, Any]) -> None:
        if self.mine is None:
            return
        tmp = self.mine.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(own))
        tmp.replace(self.mine)

    def collect(self, own: dict[str, Any]) -> dict[str, Any]:
        """``own`` plus the other workers' snapshots written in the last 15 s."""
        if self.folder is None:
            return own
        snaps = [own]
        fresh = time.time() - 15
        for path in self.folder.glob("*.json"):
            if path == self.mine:
                continue
            try:
                if path.stat().st_mtime < fresh:
                    continue
                snaps.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue
        return merge_snapshots(snaps)


def openapi_document(prefix: str = "/api") -> dict[str, Any]:
    """Generated from the pydantic models that validate requests, so it cannot drift."""
    _, schemas = models_json_schema([(model, "validation") for model in MODELS.values()],
                                    ref_template="#/components/schemas/{model}")
    error = {"type": "object", "properties": {
        "error": {"type": "object", "required": ["code", "message"],
                  "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}}}}
    paths: dict[str, Any] = {}
    for method, model in MODELS.items():
        result_schema: dict[str, Any] = {"type": "object", "properties": {"result": {"type": "object"}}}
        if method == "batch":
            result_schema = {"type": "object", "required": ["replies"],
                             "properties": {"replies": {"type": "array", "items": {"type": "object"}}}}
        paths[f"{prefix}/{method}"] = {"post": {
            "operationId": method,
            "summary": f"{method} (Centrifugo-compatible server API)",
            "security": [{"ApiKey": []}, {"AuthorizationApiKey": []}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
            "responses": {
                "200": {"description": "result, or an error object with a stable code",
                        "content": {"application/json": {"schema": {"oneOf": [result_schema, error]}}}},
                "400": {"description": "body is not a JSON object"},
                "401": {"description": "missing or wrong API key"},
                "413": {"description": "body larger than http_api.max_body_size"},
            },
        }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "livegate server API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "AuthorizationApiKey": {"type": "apiKey", "in": "header", "name": "Authorization"},
            },
        },
    }


def make_api_app(node: Node, registry: CollectorRegistry) -> web.Application:
    cfg = node.config.http_api
    prefix = cfg.handler_prefix.rstrip("/")
    key = cfg.key.encode()
    metrics_of = node.metrics
    admin = admin_page(node.config)
    if admin is not None:
        admin.on_limited = lambda: metrics_of.count(metrics_of.limited, "admin_login")

    def authorized(request: web.Request) -> bool:
        if cfg.insecure:
            return True
        if admin is not None and admin.authorizes(request.headers.get("Authorization")):
            return True
        if not key:
            return False
        given = request.headers.get("X-API-Key")
        if given is None:
            auth = request.headers.get("Authorization", "")
            scheme, _, value = auth.partition(" ")
            given = value.strip() if scheme.lower() == "apikey" else request.query.get("api_key")
        # Header bytes that are not UTF-8 arrive as surrogate escapes: compare them as bytes.
        return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key)

    async def body_of(request: web.Request, data_at: tuple[str, ...] = ()) -> Any:
        """The JSON body; a publication's ``data`` (at ``data_at``) kept as the backend wrote it."""
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            params, spans, text = loads_with_spans(raw)
        except JsonTextError as exc:
            try:
                return loads(raw)  # JSON, but not an object: the caller says what it wants
            except JsonTextError:
                raise web.HTTPBadRequest(text=f"body is not JSON: {exc}\n") from None
        return commands.keep_raw_data(params, spans, text, data_at)

    async def run(method: str, params: Any) -> web.Response:
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await commands.execute(node, method, params)
        except ClientError as err:
            outcome = "error"
            return _json({"error": commands.error_body(err)})
        except Exception:
            outcome = "error"
            log.exception("api method failed", extra={"method": method})
            return _json({"error": {"code": 100, "message": "internal server error"}})
        finally:
            metrics_of.count(metrics_of.api_requests, f"{method}|{outcome}")
            metrics_of.api_duration.observe(method, time.perf_counter() - started)
        if method == "batch":
            return _json(result)  # batch answers at the top level: {"replies": [...]}
        return _json({"result": result})

    async def api_method(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if not authorized(request):
            return web.Response(status=401)
        if method not in MODELS:
            return web.Response(status=404, text="not found\n")
        params = await body_of(request)
        if not isinstance(params, dict):
            return web.Response(status=400, text="body must be a JSON object\n")
        return await run(method, params)

    async def api_legacy(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.Response(status=401)
        body = await body_of(request, ("params",))
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return web.Response(status=400, text='body must be {"method": ..., "params": {...}}\n')
        if body["method"] not in MODELS:
            return web.Response(status=404, text="not found\n")
        return await run(body["method"], body.get("params") or {})

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(openapi_document(prefix)), content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"status": "ready" if node.ready else ("draining" if node.draining else "engine unavailable")}
        if node.persistence is not None:
            # PostgreSQL trouble does not stop real-time traffic: reported, not a 503.
            body.update(node.persistence.status())
        return _json(body, status=200 if node.ready else 503)

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        """Every request: the body is declared as JSON, fits ``max_body_size`` and is read
        whole before the handler runs, within the connection's read deadline."""
        conn = request.protocol if isinstance(request.protocol, ApiConnection) else None
        if conn is not None:
            conn.request_started()
        try:
            if request.body_exists:
                if request.method == "POST" and not _json_declared(request.headers.get("Content-Type")):
                    return web.Response(status=415, text="Content-Type must be application/json\n")
                if (request.content_length or 0) > cfg.max_body_size:
                    raise web.HTTPRequestEntityTooLarge(max_size=cfg.max_body_size,
                                                        actual_size=request.content_length or 0)
            try:
                await request.read()
            except (ConnectionError, web.RequestPayloadError):
                # A body that does not decode (Content-Encoding), or a peer gone or past the
                # read deadline (the connection is closed: nobody reads this answer).
                return web.Response(status=400, text="body could not be read\n")
            if conn is not None:
                conn.body_read()
            return await handler(request)
        finally:
            if conn is not None:
                conn.request_done()

    one_port = node.config.one_port

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(API_HEADERS)
        if one_port:
            # On the client port the front door picks a handler per connection, by its first
            # request: a kept-alive connection would take a client path to the API.
            response.force_close()
            response.headers["Connection"] = "close"

    app = web.Application(client_max_size=cfg.max_body_size, middlewares=[guard])
    app.on_response_prepare.append(headers)
    app.router.add_get(f"{prefix}/openapi.json", openapi)
    app.router.add_post(f"{prefix}/{{method}}", api_method)
    app.router.add_post(prefix, api_legacy)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    if admin is not None:
        admin.add_routes(app)
    return app
