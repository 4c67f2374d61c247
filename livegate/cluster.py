"""The cluster as one node sees it: the other nodes (heartbeats), operations on users'
connections on every node, surveys, and the inter-node envelope version.

On the redis engine, messages travel over the engine's node channel as msgpack maps
``{"t": type, "from": node uid, "v": control message version, ...}``. Each node applies an
operation to its own connections; the origin applies it locally at once and skips its own
echo. On an engine without a node channel (memory) there is one node and everything is local.

Envelope negotiation: every heartbeat announces the newest engine envelope version its node
reads (a node that announces none reads version 1). Once a node has listened for a full
heartbeat window, it tells its engine to write the newest version every live node reads, so
old and new instances on one Redis prefix (a rolling upgrade) always understand each other.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import msgpack

from livegate.channels.broker import Engine
from livegate.channels.hub import Hub, Subscriber
from livegate.channels.names import ChannelRules, ResolvedChannel
from livegate.limits import CommandLimiter
from livegate.protocol.codes import Disconnect

__all__ = ["Cluster", "Connection", "Identity", "CONTROL_VERSION", "HEARTBEAT"]

log = logging.getLogger("livegate.cluster")

CONTROL_VERSION = 1
HEARTBEAT = 3.0
SURVEY_TIMEOUT = 1.0
#: A node that has not beaten for this long is gone.
NODE_TTL = HEARTBEAT * 3


class Connection(Subscriber, Protocol):
    """What a node does to one of its client connections on behalf of the server API, the
    cluster and the engine (the session implements it)."""

    closing: Disconnect | None
    limiter: CommandLimiter | None  # its command budget (client.rate_limit)

    def close(self, disconnect: Disconnect) -> None: ...

    async def server_subscribe(self, resolved: ResolvedChannel, *, info: bytes | None, data: bytes | None,
                               recover_since: tuple[int, str] | None, override: dict[str, Any] | None,
                               expire_at: float) -> bool:
        """Subscribe the connection (a server-side subscription); False when it was not done."""
        ...

    async def server_unsubscribe(self, channel: str) -> bool:
        """Unsubscribe and tell the client (code 2000); False when it was not subscribed."""
        ...

    def server_refresh(self, *, expired: bool, expire_at: float | None, info: bytes | None) -> None: ...

    def server_message(self, data: bytes) -> None:
        """Push a message (the SDK's ``message`` event) with ``data``."""
        ...

    async def recover_channel(self, channel: str) -> bool:
        """Publications of the channel may have been missed: have the client recover them
        (resubscribe, or reconnect for a server-side subscription). False when the
        subscription cannot recover and nothing was done."""
        ...

    async def restart_subscription(self, channel: str) -> None:
        """The channel's state started over (a map cleared): unsubscribe with 2500 so the client
        subscribes again."""
        ...


class Identity(Protocol):
    """Who this node is."""

    uid: str
    name: str
    version: str
    started_at: float


def _reads(info: dict[str, Any]) -> int:
    """The newest envelope version a node announced it reads; 1 when it announced none (a
    release before versioned envelopes) or something unreadable."""
    value = info.get("envelope")
    return value if type(value) is int and value >= 1 else 1


class Cluster:
    def __init__(self, me: Identity, engine: Engine, hub: Hub[Connection], rules: ChannelRules, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.me = me
        self.engine = engine
        self.hub = hub
        self.rules = rules
        self._clock = clock
        self.nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self._surveys: dict[str, tuple[list[Any], asyncio.Event, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._listening_since = 0.0
        self.envelope_version = 1  # what the engine writes; raised once every node reads more
        #: Operations other nodes may ask this one for (``ask``): name -> handler(data) -> answer.
        self.operations: dict[str, Callable[[Any], Any]] = {}
        #: Message types the node applies itself ("shared_poll": a version another node
        #: published; "map_clear": a map channel cleared on another node): type -> handler.
        self.node_handlers: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, None]]] = {}

    @property
    def clustered(self) -> bool:
        return self.engine.nodes is not None

    async def start(self) -> None:
        self._listening_since = self._clock()
        if self.clustered:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat_forever())

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for task in list(self._tasks):
            task.cancel()

    def local_info(self) -> dict[str, Any]:
        me, hub = self.me, self.hub
        return {
            "uid": me.uid, "name": me.name, "version": me.version,
            "num_clients": hub.num_clients, "num_users": hub.num_users,
            "num_channels": len(hub.channels()), "num_subs": hub.num_subscriptions,
            "uptime": int(time.time() - me.started_at),
        }

    def _live_nodes(self) -> dict[str, dict[str, Any]]:
        now = self._clock()
        for uid in [uid for uid, (expires, _) in self.nodes.items() if expires <= now]:
            del self.nodes[uid]  # a node that stopped beating is gone
        return {uid: info for uid, (_, info) in self.nodes.items() if uid != self.me.uid}

    def cluster_info(self) -> list[dict[str, Any]]:
        others = [{k: v for k, v in info.items() if k != "envelope"} for info in self._live_nodes().values()]
        return [self.local_info(), *sorted(others, key=lambda i: i["name"])]

    def negotiate(self) -> int:
        """The envelope version to write: the newest every live node reads; 1 until this node
        has listened to a full heartbeat window (it may not have heard an old node yet), and
        again while the engine is unreachable and for a full window after (heartbeats were
        lost meanwhile, so the nodes this one knows are not all there are)."""
        engine = self.engine
        now = self._clock()
        if not engine.healthy:
            self._listening_since = now
        if now - self._listening_since < NODE_TTL:
            version = 1
        else:
            version = min([engine.envelope_version, *(_reads(info) for info in self._live_nodes().values())])
        if version != self.envelope_version:
            log.info("engine envelope version", extra={"version": version, "previous": self.envelope_version})
            self.envelope_version = version
        engine.use_envelope_version(version)
        return version

    async def _beat_forever(self) -> None:
        while True:
            try:
                self.negotiate()
                info = {**self.local_info(), "envelope": self.engine.envelope_version}
                await self._send_remote({"t": "info", "info": info})
            except Exception as exc:  # engine down: the next beat will tell the others
                log.debug("heartbeat not sent: %s", exc)
            await asyncio.sleep(HEARTBEAT)

    async def _send_remote(self, message: dict[str, Any]) -> None:
        channel = self.engine.nodes
        if channel is not None:
            await channel.publish_node(msgpack.packb({**message, "v": CONTROL_VERSION, "from": self.me.uid}))

    # -- operations on users' connections ---------------------------------------------

    async def send_to_nodes(self, kind: str, message: dict[str, Any]) -> None:
        """A message for the other nodes' ``node_handlers[kind]`` (nodes of an older release
        ignore types they do not know)."""
        await self._send_remote({**message, "t": kind})

    async def send(self, message: dict[str, Any]) -> None:
        """Apply an operation on this node and on every other node."""
        await self._apply(message)
        await self._send_remote(message)

    def _targets(self, user: str, client_id: str | None) -> list[Connection]:
        conns = self.hub.user_connections(user)
        return [c for c in conns if c.client_id == client_id] if client_id else conns

    async def _apply(self, m: dict[str, Any]) -> None:
        kind = m["t"]
        targets = self._targets(m["user"], m.get("client"))
        if kind == "disconnect":
            keep = set(m.get("whitelist") or ())
            for conn in targets:
                if conn.client_id not in keep:
                    conn.close(Disconnect(m["code"], m["reason"]))
        elif kind == "unsubscribe":
            for conn in targets:
                await conn.server_unsubscribe(m["channel"])
        elif kind == "subscribe":
            resolved = self.rules.resolve(m["channel"])
            since = m.get("recover_since")
            for conn in targets:
                await conn.server_subscribe(
                    resolved, info=m.get("info"), data=m.get("data"), recover_since=tuple(since) if since else None,
                    override=m.get("override"), expire_at=float(m.get("expire_at") or 0))
        elif kind == "refresh":
            for conn in targets:
                conn.server_refresh(expired=bool(m.get("expired")), expire_at=m.get("expire_at"), info=m.get("info"))

    def handle(self, data: bytes) -> None:
        """A message from the node channel (called by the engine's reader; never awaits)."""
        try:
            m = msgpack.unpackb(data, raw=False)
            if not isinstance(m, dict) or m.get("v") != CONTROL_VERSION:
                return
            if m.get("from") == self.me.uid:
                return
            kind = m.get("t")
            if kind == "info":
                info = m.get("info")
                if not isinstance(info, dict) or not isinstance(m.get("from"), str):
                    return
                self.nodes[m["from"]] = (self._clock() + NODE_TTL, info)
                if _reads(info) < self.envelope_version:
                    self.negotiate()  # a node that reads less: write what it reads from now on
            elif kind == "survey":
                self._spawn(self._answer(m))
            elif kind == "survey_reply":
                if m.get("to") == self.me.uid and m.get("id") in self._surveys:
                    replies, done, expected = self._surveys[m["id"]]
                    replies.append(m["data"])
                    if len(replies) >= expected:
                        done.set()
            elif kind in ("disconnect", "unsubscribe", "subscribe", "refresh"):
                self._spawn(self._apply_logged(m))
            elif isinstance(kind, str) and kind in self.node_handlers:
                self._spawn(self.node_handlers[kind](m))
        except Exception:
            log.exception("bad control message")

    async def _apply_logged(self, m: dict[str, Any]) -> None:
        try:
            await self._apply(m)
        except Exception:
            log.exception("control message failed", extra={"type": m.get("t")})

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- surveys ----------------------------------------------------------------------

    def _survey_local(self, op: str, data: Any = None) -> Any:
        if op == "channels":
            return self.hub.channels()
        handler = self.operations.get(op)
        if handler is not None:
            return handler(data)
        raise ValueError(f"unknown survey {op!r}")

    async def _answer(self, m: dict[str, Any]) -> None:
        to = m.get("to")
        if to is not None and to != self.me.uid:
            return  # asked of another node
        await self._send_remote({"t": "survey_reply", "id": m["id"], "to": m["from"],
                                 "data": self._survey_local(m["op"], m.get("data"))})

    def knows(self, node_uid: str) -> bool:
        """A live node of the cluster (this one included)."""
        return node_uid == self.me.uid or node_uid in self._live_nodes()

    async def _gather(self, message: dict[str, Any], expected: int) -> tuple[list[Any], bool]:
        """Send a survey message and collect up to ``expected`` replies for SURVEY_TIMEOUT:
        (the replies, whether all came)."""
        sid = uuid.uuid4().hex
        replies: list[Any] = []
        done = asyncio.Event()
        self._surveys[sid] = (replies, done, expected)
        try:
            await self._send_remote({**message, "t": "survey", "id": sid})
            try:
                async with asyncio.timeout(SURVEY_TIMEOUT):
                    await done.wait()
            except TimeoutError:
                return replies, False
        finally:
            del self._surveys[sid]
        return replies, True

    async def ask(self, node_uid: str, op: str, data: Any) -> Any:
        """Ask one other node to run ``op`` (one of its ``operations``) on ``data``; its
        answer, or None when it did not answer within SURVEY_TIMEOUT."""
        replies, complete = await self._gather({"op": op, "to": node_uid, "data": data}, 1)
        if not complete:
            log.warning("node did not answer", extra={"op": op, "node": node_uid})
            return None
        return replies[0]

    async def survey(self, op: str) -> list[Any]:
        """Ask every node (this one included) and collect the answers that arrive in time."""
        results = [self._survey_local(op)]
        expected = len(self._live_nodes())
        if not self.clustered or expected == 0:
            return results
        replies, complete = await self._gather({"op": op}, expected)
        if not complete:
            log.warning("survey incomplete", extra={"op": op, "expected": expected, "got": len(replies)})
        return results + replies
