"""The internal HTTP port: the server API (Centrifugo's format, so `cent` works), its
OpenAPI document, Prometheus /metrics, /health and /ready.

Errors follow Centrifugo: 401 with an empty body for a missing or wrong key, 404 for an
unknown method, 400 (plain text) for a body that is not a JSON object, 413 over
``http_api.max_body_size``, and HTTP 200 ``{"error": {"code", "message"}}`` for a command
that failed.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic.json_schema import models_json_schema

from livegate.api import commands
from livegate.api.models import MODELS
from livegate.errors import ClientError
from livegate.metrics import merge_snapshots
from livegate.node import Node

__all__ = ["make_api_app", "openapi_document", "MetricsFiles"]

log = logging.getLogger("livegate.http_api")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


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

    def authorized(request: web.Request) -> bool:
        if cfg.insecure:
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

    async def body_of(request: web.Request) -> Any:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise web.HTTPBadRequest(text=f"body is not JSON: {exc.msg}\n") from None

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
        body = await body_of(request)
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return web.Response(status=400, text='body must be {"method": ..., "params": {...}}\n')
        if body["method"] not in MODELS:
            return web.Response(status=404, text="not found\n")
        return await run(body["method"], body.get("params") or {})

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(openapi_document(prefix)), content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={
            "Content-Type": CONTENT_TYPE_LATEST, "X-Content-Type-Options": "nosniff"})

    async def health(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"status": "ready" if node.ready else ("draining" if node.draining else "engine unavailable")}
        if node.persistence is not None:
            # PostgreSQL trouble does not stop real-time traffic: reported, not a 503.
            body.update(node.persistence.status())
        return _json(body, status=200 if node.ready else 503)

    app = web.Application(client_max_size=cfg.max_body_size)
    app.router.add_get(f"{prefix}/openapi.json", openapi)
    app.router.add_post(f"{prefix}/{{method}}", api_method)
    app.router.add_post(prefix, api_legacy)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app
