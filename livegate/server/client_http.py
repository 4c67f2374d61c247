"""The plain-HTTP side of the client port (see ``front``): /health, /ready, the HTTP
fallback transports and the emulation endpoint, and the demo page when enabled."""

from __future__ import annotations

import logging

from aiohttp import web

from livegate.node import Node
from livegate.server.http_transports import EMULATION_OP, Streams, add_stream_routes
from livegate.session import Session

__all__ = ["make_client_app", "CLIENT_HEADERS"]

log = logging.getLogger("livegate.client_http")

#: On every plain-HTTP response of the client port. No version in ``Server``.
CLIENT_HEADERS = {"Server": "livegate", "X-Content-Type-Options": "nosniff"}


async def _prepare_headers(request: web.Request, resp: web.StreamResponse) -> None:
    resp.headers.update(CLIENT_HEADERS)
    # One request per connection: the front door decides per connection between websockets and
    # aiohttp, so a WebSocket upgrade reusing a kept-alive connection (a proxy pooling its
    # upstream connections) would otherwise reach aiohttp; and no idle connection outlives its
    # request (the front's head timeout covers only a connection's first request).
    resp.force_close()
    resp.headers["Connection"] = "close"  # said, so that clients do not pool the connection


def make_client_app(node: Node, registry: set[Session]) -> tuple[web.Application, Streams]:
    app = web.Application(client_max_size=node.config.http_stream.max_request_body_size + 1024)
    app.on_response_prepare.append(_prepare_headers)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text='{"status":"ok"}\n')

    async def ready(request: web.Request) -> web.Response:
        if not node.ready:
            status = "draining" if node.draining else "engine unavailable"
            return web.Response(status=503, text=f'{{"status":"{status}"}}\n')
        return web.Response(text='{"status":"ready"}\n')

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    streams = Streams(node, registry)
    add_stream_routes(app, streams)
    node.cluster.operations[EMULATION_OP] = streams.deliver_remote
    if node.config.http_server.demo:
        from livegate.server.demo import add_demo_routes
        add_demo_routes(app, node)
    return app, streams
