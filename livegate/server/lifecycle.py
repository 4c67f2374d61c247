"""Serving a node: the WebSocket listener and the internal HTTP port, the timer sweep, and
graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import resource
import signal
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from livegate.api.stream import ApiStreamConsumer
from livegate.app import App
from livegate.clock import SYSTEM_CLOCK, Clock
from livegate.config import Config
from livegate.errors import BrokerError
from livegate.handlers import HANDLERS
from livegate.metrics import NodeCollector
from livegate.node import PRESENCE_REFRESH, PRESENCE_TTL, build_node
from livegate.persistence.store import Persistence
from livegate.protocol import codes
from livegate.server.client_http import make_client_app
from livegate.server.front import front_door_class
from livegate.server.http_api import ApiSite, MetricsFiles, api_connection_factory, api_runner, start_api
from livegate.server.poll_http import HttpPoller
from livegate.server.websocket import WebSocketConnection, WsContext
from livegate.session import Session
from livegate.session.subscriptions import refresh_map_presence
from livegate.tasks import STOP_TIMEOUT, cancel_and_wait

__all__ = ["Server", "sweep_interval", "raise_open_files_limit"]

log = logging.getLogger("livegate.server")


#: Clients whose presence entries one refresh step writes (one pipelined round trip per shard).
PRESENCE_CHUNK = 64


def sweep_interval(config: Config) -> float:
    """How often connection timers are checked (pings, pong deadlines, stale and expired
    connections): a quarter of the pong timeout, at most once a second (the default)."""
    return min(1.0, max(0.05, config.client.pong_timeout / 4))


#: Young-object collections run every this many allocations (Python's default: 700).
GC_THRESHOLD = (10_000, 20, 20)


def tune_gc() -> None:
    """Once the server is up: what exists now (modules, config, the node) lives as long as the
    process, so it moves out of the collector's sight (``gc.freeze``), and young objects are
    collected less often. Measured in S4 (3,000 connects): collections took 130 ms with the
    defaults (two full ones of 35 ms each: pauses every connection feels), about 60 ms after
    this, with no full collection."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files (RLIMIT_NOFILE) to its hard limit, so
    that every connection, on both ports, and every Redis/PostgreSQL socket can have a
    descriptor: the usual soft default of 1024 is reached by a few hundred clients. A failure
    (a hard limit the kernel refuses as a soft one) keeps the old value. Returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit", extra={"soft": soft, "hard": hard, "error": str(exc)})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


class Server:
    """One livegate instance: the WebSocket listener, the engine and the timers."""

    def __init__(self, config: Config, app: App | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.node = build_node(config, app, clock=clock)
        self._poller = self.node.http_poller = HttpPoller()
        self.clock = clock
        self.clients: set[Session] = set()
        self.api_stream: ApiStreamConsumer | None = None
        self.persistence: Persistence | None = None
        self._ws: asyncio.Server | None = None  # the client port's listener
        self._ws_context: WsContext | None = None
        self._api_runner: web.AppRunner | None = None
        self._client_runner: web.AppRunner | None = None
        self._front: Any = None  # the client port's connection class (front.py)
        self._api_site: ApiSite | None = None
        self.metrics_files = MetricsFiles(os.environ.get("LIVEGATE_WORKER_METRICS_DIR"))
        self.metrics_registry = CollectorRegistry(auto_describe=False)
        self.metrics_registry.register(NodeCollector(self.metrics_snapshot))
        self._sweeper: asyncio.Task[None] | None = None
        self._presence_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._next_presence = clock.monotonic() + PRESENCE_REFRESH
        self._next_metrics = 0.0

    @property
    def port(self) -> int:
        assert self._ws is not None
        return self._ws.sockets[0].getsockname()[1]

    @property
    def api_port(self) -> int:
        if self.config.one_port:
            return self.port
        assert self._api_runner is not None
        return self._api_runner.addresses[0][1]

    async def _start_api(self) -> None:
        self._api_runner, self._api_site = await start_api(self.node, self.metrics_registry,
                                                           reuse_port=self.config.http_server.workers > 1)

    async def start(self, *, sock: Any = None) -> None:
        soft, hard = raise_open_files_limit()
        log.info("open files limit", extra={"soft": soft, "hard": hard})
        node = self.node
        await node.start()
        if self.config.persistence.dsn:
            self.persistence = Persistence(self.config, node)
            try:
                await self.persistence.start()
            except BaseException:
                await node.close()
                raise
        if node.engine.shards:
            rcfg = self.config.engine.redis
            self.api_stream = ApiStreamConsumer(node, node.engine.shards[0].client, rcfg.prefix,
                                                max_length=rcfg.api_stream_max_length)
            self.api_stream.start()
        cfg = self.config
        client_app, self.streams = make_client_app(node, self.clients)
        # Plain HTTP on the client port (fallback transports, /health, pages): aiohttp, behind
        # the front door; handler_cancellation ends a stream's handler when its client leaves.
        self._client_runner = web.AppRunner(client_app, access_log=None, handle_signals=False,
                                            handler_cancellation=True, shutdown_timeout=cfg.websocket.write_timeout)
        await self._client_runner.setup()
        assert self._client_runner.server is not None
        ws_paths = [] if cfg.websocket.disabled else [cfg.websocket.handler_prefix]
        if cfg.uni_websocket.enabled:
            ws_paths.append(cfg.uni_websocket.handler_prefix)
        ws = self._ws_context = WsContext(node, HANDLERS, self.clients)
        api: dict[str, Any] = {}
        if cfg.one_port:  # the server API, /metrics and the admin page on the client port too
            self._api_runner = await api_runner(node, self.metrics_registry)
            api["api_factory"] = api_connection_factory(node, self._api_runner)
            api["api_prefixes"] = [cfg.http_api.handler_prefix.rstrip("/"), "/metrics"] + (
                [cfg.admin.handler_prefix.rstrip("/")] if cfg.admin.enabled else [])
        self._front = front_door_class(ws_paths, lambda transport: WebSocketConnection(ws, transport),
                                       self._client_runner.server, **api)
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._ws = await loop.create_server(self._front, sock=sock, backlog=2048)
        else:
            # backlog: reconnect waves; a short accept queue turns them into resets
            self._ws = await loop.create_server(self._front, cfg.http_server.address, cfg.http_server.port,
                                                reuse_port=cfg.http_server.workers > 1 or None, backlog=2048)
        if not cfg.one_port:
            await self._start_api()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        log.info("listening", extra={"address": cfg.http_server.address, "port": self.port,
                                     "path": cfg.websocket.handler_prefix, "engine": cfg.engine.type,
                                     "api_port": self.api_port})

    def local_metrics(self) -> dict[str, Any]:
        """This process's counters and gauges, as plain data."""
        node, hub, persistence = self.node, self.node.hub, self.persistence
        snap = node.metrics.snapshot()
        by_transport: dict[str, int] = {}
        for client in self.clients:
            label = client.wire.name.replace("/", "|")  # "<transport>/<codec>"
            by_transport[label] = by_transport.get(label, 0) + 1
        snap.update(connections=hub.num_clients, subscriptions=hub.num_subscriptions, channels=len(hub.channels()),
                    transport_connections=by_transport,
                    engine_up=1 if node.engine.healthy else 0,
                    postgres_up=1 if persistence is not None and persistence.healthy else 0)
        if persistence is not None and persistence.archive is not None:
            archive = persistence.archive
            snap.update(archive_buffered=len(archive.buffer), archive_written=archive.written,
                        archive_dropped=archive.dropped)
        if persistence is not None and persistence.outbox is not None:
            snap.update(outbox_executed=persistence.outbox.executed, outbox_dead=persistence.outbox.dead_lettered)
        return snap

    def metrics_snapshot(self) -> dict[str, Any]:
        """What /metrics shows: this process, plus the other workers' latest snapshots."""
        return self.metrics_files.collect(self.local_metrics())

    async def _sweep_forever(self) -> None:
        interval = sweep_interval(self.config)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed")

    async def sweep(self) -> None:
        """One pass of the timers at ``self.clock``'s now: pings, pong deadlines, stale and
        expired connections, expired subscriptions, the presence refresh and (with workers)
        the metrics snapshot. The sweep loop calls it; tests call it with a moved clock."""
        now_mono, now_wall = self.clock.monotonic(), self.clock.time()
        if self._front is not None:
            self._front.close_stalled(time.monotonic())  # real time: it is about sockets
        if self.metrics_files.mine is not None and now_mono >= self._next_metrics:
            self._next_metrics = now_mono + 1.0
            self.metrics_files.write(self.local_metrics())
        expired: list[tuple[Session, str]] = []
        for client in list(self.clients):
            client.tick(now_mono, now_wall)
            if client.sub_expiry and client.closing is None:
                expired.extend((client, ch) for ch in client.expired_subscriptions(now_wall))
        for client, channel in expired:
            await client.expire_subscription(channel)
        if now_mono >= self._next_presence and (self._presence_task is None or self._presence_task.done()):
            # Its own task: Redis round trips never delay pings and deadlines.
            self._next_presence = now_mono + PRESENCE_REFRESH
            self._presence_task = asyncio.get_running_loop().create_task(self._refresh_presence())

    async def _refresh_presence(self) -> None:
        """Refresh this node's presence entries in pipelined chunks of PRESENCE_CHUNK clients,
        yielding to the loop between chunks, so a large refresh never stalls other connections
        for more than a chunk's work; an error skips one entry only."""
        presence = self.node.presence
        clients = list(self.clients)
        failed = total = 0
        for start in range(0, len(clients), PRESENCE_CHUNK):
            # Checked per chunk, right before writing: a client that left meanwhile (and
            # removed its entries) must not be brought back.
            entries = [(channel, sub.info) for client in clients[start:start + PRESENCE_CHUNK]
                       if client.closing is None for channel, sub in client.presence_subscriptions()]
            total += len(entries)
            if entries:
                failed += await presence.add_presence_many(entries, PRESENCE_TTL)
            # Map presence entries: one engine call each (a Redis function), run concurrently.
            subs = [sub for client in clients[start:start + PRESENCE_CHUNK] if client.closing is None
                    for sub in client.map_presence_subscriptions()]
            total += len(subs)
            outcomes = await asyncio.gather(*(refresh_map_presence(self.node, sub) for sub in subs),
                                            return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BrokerError):
                    failed += 1
                elif isinstance(outcome, BaseException):
                    raise outcome
            await asyncio.sleep(0)
        if failed:
            log.warning("presence refresh incomplete", extra={"failed": failed, "entries": total})

    async def drain(self, window: float | None = None) -> None:
        """Stop accepting, then close every client with 3001 spread over ``window`` seconds."""
        node = self.node
        node.draining = True
        if self._ws is not None and not self.config.one_port:
            # Stops accepting; open connections stay. (With the API on the same port the listener
            # stays open until stop, so that the API, /ready and /metrics answer while draining;
            # new WebSocket handshakes get 503 "shutting down" meanwhile.)
            self._ws.close()
        window = self.config.http_server.shutdown_drain if window is None else window
        clients = list(self.clients)
        random.shuffle(clients)
        log.info("draining", extra={"clients": len(clients), "window_s": window})
        step = window / len(clients) if clients else 0.0
        batch = max(1, int(len(clients) / (window / 0.01))) if window > 0 else len(clients)
        for i, client in enumerate(clients):
            client.close(codes.SHUTDOWN)
            if step and (i + 1) % batch == 0:
                await asyncio.sleep(step * batch)

    async def stop(self) -> None:
        await cancel_and_wait(self._presence_task)
        if self.api_stream is not None:
            await self.api_stream.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._ws is not None:
            self._ws.close()
            try:
                # Clients closed by the drain answer (or are cut off after write_timeout);
                # their sessions are released in tasks of their own.
                async with asyncio.timeout(self.config.websocket.write_timeout + 1):
                    while self.clients or (self._ws_context is not None and self._ws_context.releasing):
                        await asyncio.sleep(0.01)
            except TimeoutError:
                pass
        if self._api_runner is not None:
            await self._api_runner.cleanup()
            self._api_runner = None
        if self._client_runner is not None:
            await self._client_runner.cleanup()
            self._client_runner = None
        if self._front is not None:
            self._front.close_stalled(time.monotonic(), timeout=-1.0)  # connections still sending their head
        if self.persistence is not None:
            await self.persistence.stop()
        await self.node.close()
        await self._poller.close()
        self._stopped.set()

    async def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        tune_gc()
        await stop.wait()
        log.info("shutdown requested")
        await self.drain()
        # Bounded: a step that hangs (a client library stuck in a cancelled call) must not
        # keep the process alive; exiting closes what is left.
        try:
            async with asyncio.timeout(self.config.websocket.write_timeout + STOP_TIMEOUT * 2 + 5):
                await self.stop()
        except TimeoutError:
            log.error("shutdown did not finish in time; exiting anyway")
            return
        log.info("stopped")
