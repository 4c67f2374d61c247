"""Node: one livegate instance's services wired together (engine, hub, rules, tokens, app,
cluster, metrics) and the operations that the client handlers and the server API share.

A Node does no network I/O of its own beyond its engine's; ``build_node`` gives tests and
embedders a complete one without the transport layer. The Node is the engine's
``EngineEvents``: publications, joins and leaves go to the hub, gaps to the subscribed
connections, node messages to the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from livegate import __version__
from livegate.app import App
from livegate.auth import TokenVerifier
from livegate.channels.broker import (
    Broker,
    Engine,
    EngineEvents,
    HistoryOptions,
    HistoryResult,
    MapSettings,
    MapUpdateResult,
    MapWriteOptions,
    PresenceManager,
    PublishOptions,
    PublishResult,
)
from livegate.channels.hub import Hub
from livegate.channels.memory import MemoryEngine
from livegate.channels.names import ChannelRules, ResolvedChannel
from livegate.channels.redis import RedisEngine
from livegate.channels.shared_poll import Backend, SharedPollManager
from livegate.clock import SYSTEM_CLOCK, Clock
from livegate.cluster import Cluster, Connection
from livegate.config import Config
from livegate.errors import BrokerError
from livegate.limits import NodeLimits
from livegate.metrics import NodeMetrics
from livegate.protocol.codes import ErrBadRequest
from livegate.protocol.jsontext import is_json
from livegate.protocol.types import ClientInfo, Publication, StreamPosition

__all__ = ["Node", "build_node", "make_engine", "EngineFactory", "PersistenceView", "PRESENCE_TTL", "PRESENCE_REFRESH",
           "USER_CONNECTION_TTL", "USER_CONNECTION_REFRESH"]

log = logging.getLogger("livegate.node")

#: A presence entry lives this long after its last refresh (seconds) ...
PRESENCE_TTL = 60.0
#: ... and the owning node refreshes it this often.
PRESENCE_REFRESH = 25.0
#: With client.user_connection_limit, a connection counts for its user on every node this long
#: after its node last refreshed it (so the connections of a node that died stop counting) ...
USER_CONNECTION_TTL = 30.0
#: ... and its node refreshes it this often.
USER_CONNECTION_REFRESH = 10.0

EngineFactory = Callable[[Config, EngineEvents], Engine]


def make_engine(config: Config, events: EngineEvents) -> Engine:
    """The engine ``engine.type`` names, reporting to ``events``."""
    if config.engine.type == "memory":
        return MemoryEngine(events)
    return RedisEngine(config, events)


class PersistenceView(Protocol):
    """What the node needs of persistence (PostgreSQL): the archive that keeps publications
    beyond the engine's history, and its health for /ready."""

    @property
    def healthy(self) -> bool: ...

    def status(self) -> dict[str, Any]:
        """For /ready: how PostgreSQL and the archive are doing."""
        ...

    def archived(self, resolved: ResolvedChannel, epoch: str, offset: int, data: bytes, info: bytes | None,
                 tags: dict[str, str] | None) -> None: ...

    async def extend_history(self, resolved: ResolvedChannel, opts: HistoryOptions,
                             result: HistoryResult) -> HistoryResult: ...


class Node:
    def __init__(self, config: Config, app: App | None = None, *, engine_factory: EngineFactory = make_engine,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self.app = app or App()
        self.verifier = TokenVerifier(config.client.token)  # raises ConfigError naming a bad key
        # Subscription tokens: client.subscription_token's keys and options when enabled (as Centrifugo).
        sub_token = config.client.subscription_token
        self.sub_verifier = (TokenVerifier(sub_token, section="client.subscription_token")
                             if sub_token.enabled else self.verifier)
        self.rules = ChannelRules(config.channel)
        self.metrics = NodeMetrics()
        self.limits = NodeLimits(config, self.metrics)
        self.hub: Hub[Connection] = Hub(self.metrics)
        self.uid = str(uuid.uuid4())
        self.name = f"{socket.gethostname()}_{config.http_server.port}"
        self.version = __version__
        self.started_at = time.time()
        self.draining = False
        self.persistence: PersistenceView | None = None
        self.engine = engine_factory(config, self)
        self.broker: Broker = self.engine.broker
        self.presence: PresenceManager = self.engine.presence
        self.cluster = Cluster(self, self.engine, self.hub, self.rules, clock=clock.monotonic)
        self.shared_poll = SharedPollManager(self._poll_backend, concurrency=config.shared_poll.concurrency_limit)
        self.cluster.node_handlers["shared_poll"] = self._shared_poll_from_node
        self.cluster.node_handlers["map_clear"] = self._map_clear_from_node
        #: Polls shared poll backends that have an HTTP endpoint (set by the server: livegate.server.poll_http).
        self.http_poller: Backend | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._user_refresher: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.engine.start()
        await self.cluster.start()
        if self.config.client.user_connection_limit:
            self._user_refresher = asyncio.get_running_loop().create_task(self._refresh_users_forever())

    async def close(self) -> None:
        if self._user_refresher is not None:
            self._user_refresher.cancel()
            self._user_refresher = None
        await self.cluster.stop()
        await self.shared_poll.close()
        for task in list(self._tasks):
            task.cancel()
        await self.engine.close()

    def attach_persistence(self, persistence: PersistenceView) -> None:
        self.persistence = persistence

    @property
    def ready(self) -> bool:
        """Accepting traffic: not draining and the engine is reachable."""
        return not self.draining and self.engine.healthy

    # -- connections per user on every node (client.user_connection_limit) ---------------------

    async def add_user_connection(self, user: str, client_id: str) -> bool:
        """Count a connection of ``user`` on every node; False when the user already has
        ``client.user_connection_limit`` connections. Anonymous connections pass, and so does
        every connection while the limit is 0. A connection the engine cannot count right now
        (Redis unreachable) passes too: the limit guards against abuse and must not lock users
        out during an outage; the next refresh counts it."""
        limit = self.config.client.user_connection_limit
        if not limit or not user:
            return True
        try:
            return await self.engine.users.add_user_connection(user, client_id, limit, USER_CONNECTION_TTL)
        except BrokerError as exc:
            log.warning("connection not counted for the user connection limit: %s", exc,
                        extra={"user": user, "client": client_id})
            return True

    async def remove_user_connection(self, user: str, client_id: str) -> None:
        if not self.config.client.user_connection_limit or not user:
            return
        try:
            await self.engine.users.remove_user_connection(user, client_id)
        except BrokerError as exc:  # its entry expires after USER_CONNECTION_TTL
            log.info("connection not uncounted: %s", exc, extra={"user": user, "client": client_id})

    async def refresh_user_connections(self) -> int:
        """Refresh the entries of this node's connections, 32 users at a time; connections
        whose entry is gone (it expired while the engine was unreachable) are counted again
        when still open. Returns how many users failed."""
        by_user: dict[str, list[Connection]] = {}
        for conn in self.hub.connections():
            if conn.user:
                by_user.setdefault(conn.user, []).append(conn)
        users = list(by_user.items())
        failed = 0
        for start in range(0, len(users), 32):
            results = await asyncio.gather(*(self._refresh_user(user, conns) for user, conns in users[start:start + 32]),
                                           return_exceptions=True)
            failed += sum(isinstance(r, BrokerError) for r in results)
        if failed:
            log.warning("user connection refresh incomplete", extra={"failed_users": failed, "users": len(users)})
        return failed

    async def _refresh_user(self, user: str, conns: list[Connection]) -> None:
        # Checked right before writing: a connection that left meanwhile removed its entry.
        open_ids = [c.client_id for c in conns if c.closing is None]
        if not open_ids:
            return
        missing = await self.engine.users.refresh_user_connections(user, open_ids, USER_CONNECTION_TTL)
        by_id = {c.client_id: c for c in conns}
        for client_id in missing:
            if by_id[client_id].closing is None:
                await self.engine.users.add_user_connection(user, client_id, 0, USER_CONNECTION_TTL)

    async def _refresh_users_forever(self) -> None:
        while True:
            await asyncio.sleep(USER_CONNECTION_REFRESH)
            try:
                await self.refresh_user_connections()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("user connection refresh failed")

    # -- engine events ---------------------------------------------------------------------

    def handle_publications(self, batch: list[tuple[str, Publication]]) -> None:
        self.hub.handle_publications(batch)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.hub.handle_join(channel, info)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.hub.handle_leave(channel, info)

    def handle_node_message(self, data: bytes) -> None:
        self.cluster.handle(data)

    def handle_gap(self, channels: list[str]) -> None:
        self.hub.forget_delta_bases(channels)
        task = asyncio.get_running_loop().create_task(self.recover_gap(channels))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recover_gap(self, channels: list[str]) -> int:
        """Publications may have been missed while the engine was unreachable: every
        recoverable subscription of those channels is told to recover (the SDK resubscribes
        and recovers from history; a server-side subscription reconnects)."""
        told = 0
        for channel in channels:
            for conn in self.hub.subscribers(channel):
                told += await conn.recover_channel(channel)
        log.warning("engine gap: subscriptions told to recover", extra={"channels": len(channels), "subscriptions": told})
        return told

    # -- publishing and history --------------------------------------------------------------

    def publish_options(
        self, resolved: ResolvedChannel, *, info: ClientInfo | None = None, tags: dict[str, str] | None = None,
        idempotency_key: str = "", skip_history: bool = False,
    ) -> PublishOptions:
        opts = resolved.options
        keep = opts.history_enabled and not skip_history
        return PublishOptions(
            history_size=opts.history_size if keep else 0,
            history_ttl=opts.history_ttl if keep else 0.0,
            history_meta_ttl=self.meta_ttl(resolved),
            info=info, tags=tags, idempotency_key=idempotency_key, data_format=opts.publication_data_format,
        )

    def meta_ttl(self, resolved: ResolvedChannel) -> float:
        return resolved.options.history_meta_ttl or self.config.channel.history_meta_ttl

    def _checked_data(self, resolved: ResolvedChannel, data: bytes, data_is_json: bool) -> bytes:
        """``data`` as the namespace's publication_data_format takes it, within
        channel.max_publication_size (ErrBadRequest otherwise)."""
        data = publication_data(data, resolved.options.publication_data_format, data_is_json)
        limit = self.config.channel.max_publication_size
        if len(data) > limit:
            raise ErrBadRequest(message=f"bad request: data is {len(data)} bytes, over channel.max_publication_size "
                                        f"({limit})")
        return data

    async def publish(
        self, channel: str, data: bytes, *, info: ClientInfo | None = None, tags: dict[str, str] | None = None,
        idempotency_key: str = "", skip_history: bool = False, data_is_json: bool = False,
    ) -> PublishResult:
        """Publish ``data`` into a channel, checked against the namespace's
        ``publication_data_format``: JSON text (``json``, the default), a JSON object
        (``json_object``), or any bytes, empty included (``binary``). ``data_is_json`` says the
        caller parsed it as JSON already (the check is then only the object test).

        In JSON namespaces every message on the wire is one line: raw newlines, which JSON
        allows only as whitespace between tokens, are removed here so pretty-printed JSON is
        safe. Binary data is published byte for byte.

        Raises:
            ErrBadRequest: data of the wrong format, or over ``channel.max_publication_size``.
        """
        resolved = self.rules.resolve(channel)
        if resolved.options.subscription_type != "stream":
            raise ErrBadRequest(message=f"bad request: {channel!r} is a {resolved.options.subscription_type} channel "
                                        "(map channels take map_publish, shared poll channels shared_poll_publish)")
        data = self._checked_data(resolved, data, data_is_json)
        opts = self.publish_options(
            resolved, info=info, tags=tags, idempotency_key=idempotency_key, skip_history=skip_history,
        )
        started = time.perf_counter()
        try:
            result = await self.broker.publish(channel, data, opts)
        finally:
            self.metrics.broker_publish.observe(self.engine.name, time.perf_counter() - started)
        if self.persistence is not None and result.position.offset and not result.suppressed:
            self.persistence.archived(resolved, result.position.epoch, result.position.offset, data,
                                  None if info is None else info.to_json(), tags)
        return result

    # -- shared poll channels --------------------------------------------------------------------

    async def _poll_backend(self, endpoint: str, body: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """One poll of a shared poll channel: its HTTP endpoint, else the app's hook."""
        if endpoint:
            if self.http_poller is None:
                log.warning("no HTTP client for shared poll endpoints here", extra={"channel": body["channel"]})
                return None
            return await self.http_poller(endpoint, body, timeout)
        hook = self.app.shared_poll_refresh_hook
        if hook is None:
            log.warning("shared poll channel without endpoint or shared_poll_refresh hook",
                        extra={"channel": body["channel"]})
            return None
        try:
            result = await asyncio.wait_for(hook(body["channel"], body["items"]), timeout)
        except Exception:
            log.exception("shared_poll_refresh hook failed", extra={"channel": body["channel"]})
            return None
        return result if isinstance(result, dict) else None

    async def shared_poll_publish(self, channel: str, key: str, data: bytes, version: int, epoch: str) -> None:
        """A key's new version from the application, to the trackers on every node."""
        opts = self.rules.resolve(channel).options.shared_poll
        await self.shared_poll.publish(channel, opts, key, data, version, epoch)
        await self.cluster.send_to_nodes("shared_poll", {"channel": channel, "key": key, "data": data,
                                                         "version": version, "epoch": epoch})

    async def _shared_poll_from_node(self, m: dict[str, Any]) -> None:
        channel, key, data = m.get("channel"), m.get("key"), m.get("data")
        version, epoch = m.get("version"), m.get("epoch", "")
        if (isinstance(channel, str) and isinstance(key, str) and isinstance(data, bytes)
                and isinstance(version, int) and isinstance(epoch, str)):
            opts = self.rules.resolve(channel).options.shared_poll
            await self.shared_poll.publish(channel, opts, key, data, version, epoch)

    # -- map channels --------------------------------------------------------------------------

    async def map_clear(self, channel: str) -> None:
        """Forget a map (entries, stream, position); its subscribers on every node start over."""
        await self.broker.map_clear(channel)
        await self._restart_map_subscribers(channel)
        await self.cluster.send_to_nodes("map_clear", {"channel": channel})

    async def _map_clear_from_node(self, m: dict[str, Any]) -> None:
        if isinstance(m.get("channel"), str):
            await self._restart_map_subscribers(m["channel"])

    async def _restart_map_subscribers(self, channel: str) -> None:
        for conn in self.hub.subscribers(channel):
            await conn.restart_subscription(channel)

    def map_settings(self, resolved: ResolvedChannel) -> MapSettings:
        """How a map channel keeps its entries (the namespace's ``map`` options, defaults applied).

        Raises:
            ErrBadRequest: the channel's namespace is not a map namespace.
        """
        opts = resolved.options
        if not opts.is_map:
            raise ErrBadRequest(message=f"bad request: {resolved.name!r} is not a map channel "
                                        "(its namespace has no subscription_type = \"map\")")
        m = opts.map
        return MapSettings(stream_size=m.stream_size_or_default, stream_ttl=m.stream_ttl_or_default,
                           meta_ttl=m.meta_ttl_or_default, key_ttl=m.key_ttl)

    def _map_options(self, resolved: ResolvedChannel, key: str, *, info: ClientInfo | None,
                     tags: dict[str, str] | None, idempotency_key: str, key_mode: str,
                     expected: StreamPosition | None, refresh_ttl_on_suppress: bool = False) -> MapWriteOptions:
        settings = self.map_settings(resolved)
        if not key:
            raise ErrBadRequest(message="bad request: a map entry needs a key")
        if len(key.encode()) > MAX_MAP_KEY:
            raise ErrBadRequest(message=f"bad request: a map key is at most {MAX_MAP_KEY} bytes")
        if key_mode not in ("", "if_new", "if_exists"):
            raise ErrBadRequest(message='bad request: key_mode must be "", "if_new" or "if_exists"')
        if expected is not None and not settings.stream_size:
            raise ErrBadRequest(message="bad request: compare-and-set needs a map mode with a stream "
                                        "(recoverable or persistent)")
        return MapWriteOptions(settings=settings, info=info, tags=tags or None, idempotency_key=idempotency_key,
                               data_format=resolved.options.publication_data_format, key_mode=key_mode,
                               expected=expected, refresh_ttl_on_suppress=refresh_ttl_on_suppress)

    async def map_publish(
        self, channel: str, key: str, data: bytes, *, info: ClientInfo | None = None,
        tags: dict[str, str] | None = None, idempotency_key: str = "", key_mode: str = "",
        expected: StreamPosition | None = None, data_is_json: bool = False, refresh_ttl_on_suppress: bool = False,
    ) -> MapUpdateResult:
        """Write the entry ``key`` of a map channel (checked as ``publish`` checks data).

        Raises:
            ErrBadRequest: not a map channel, no key, a bad key_mode, data of the wrong format.
        """
        resolved = self.rules.resolve(channel)
        opts = self._map_options(resolved, key, info=info, tags=tags, idempotency_key=idempotency_key,
                                 key_mode=key_mode, expected=expected, refresh_ttl_on_suppress=refresh_ttl_on_suppress)
        data = self._checked_data(resolved, data, data_is_json)
        return await self.broker.map_publish(channel, key, data, opts)

    async def map_remove(self, channel: str, key: str, *, info: ClientInfo | None = None,
                         idempotency_key: str = "", expected: StreamPosition | None = None) -> MapUpdateResult:
        resolved = self.rules.resolve(channel)
        opts = self._map_options(resolved, key, info=info, tags=None, idempotency_key=idempotency_key, key_mode="",
                                 expected=expected)
        return await self.broker.map_remove(channel, key, opts)

    async def map_presence_add(self, presence_channel: str, key: str, info: ClientInfo | None) -> None:
        """Add (or keep alive: only its key_ttl is renewed) a map presence entry. Its value is
        empty; ``info`` (map_clients) travels as the publication's client info."""
        resolved = self.rules.resolve(presence_channel)
        if not resolved.options.is_map:
            log.warning("map presence channel is not a map channel", extra={"channel": presence_channel})
            return
        await self.broker.map_publish(presence_channel, key, b"", MapWriteOptions(
            settings=self.map_settings(resolved), info=info, data_format="binary", key_mode="if_new",
            refresh_ttl_on_suppress=True))

    async def map_presence_remove(self, presence_channel: str, key: str) -> None:
        resolved = self.rules.resolve(presence_channel)
        if resolved.options.is_map:
            await self.broker.map_remove(presence_channel, key, MapWriteOptions(
                settings=self.map_settings(resolved), data_format="binary"))

    async def history(self, resolved: ResolvedChannel, opts: HistoryOptions) -> HistoryResult:
        """The engine's history, extended from the PostgreSQL archive when the engine no
        longer holds the start of the requested range (namespaces with archive = true). A
        channel nobody has published in keeps its position only as long as its history would
        keep a publication (history_ttl), not history_meta_ttl."""
        if not opts.unpublished_ttl:
            opts = replace(opts, unpublished_ttl=resolved.options.history_ttl)
        result = await self.broker.history(resolved.name, opts)
        if self.persistence is not None:
            result = await self.persistence.extend_history(resolved, opts, result)
        return result


#: Bytes of a map entry's key at most.
MAX_MAP_KEY = 1024


def publication_data(data: bytes, fmt: str, data_is_json: bool = False) -> bytes:
    """``data`` as a namespace of format ``fmt`` takes it (see Node.publish).

    Raises:
        ErrBadRequest: it is not what the format asks for.
    """
    if fmt == "binary":
        return data
    if not data:
        raise ErrBadRequest(message="bad request: publication data is empty")
    if not data_is_json and not is_json(data):
        raise ErrBadRequest(message="bad request: publication data must be JSON in this namespace "
                                    "(publication_data_format = \"binary\" takes any bytes)")
    if fmt == "json_object" and not data.lstrip(b" \t\r\n").startswith(b"{"):
        raise ErrBadRequest(message="bad request: publication data must be a JSON object in this namespace "
                                    "(publication_data_format = \"json_object\")")
    if 10 in data or 13 in data:  # b"\n", b"\r"
        data = data.replace(b"\r", b"").replace(b"\n", b"")
    return data


def build_node(config: Config, app: App | None = None, *, engine_factory: EngineFactory = make_engine,
               clock: Clock = SYSTEM_CLOCK) -> Node:
    """A complete Node (not started: ``await node.start()``), without the transport layer."""
    return Node(config, app, engine_factory=engine_factory, clock=clock)
