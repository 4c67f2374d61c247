"""Node-to-node control: user-level operations, node info and surveys across instances.

On the redis engine, messages travel over the ``{prefix}.node`` pub/sub channel as msgpack
maps ``{"t": type, "from": node uid, ...}`` (``"v"``: envelope version). Each node applies an
operation to its own connections; the origin applies it locally at once and skips its own
echo. On the memory engine there is one node and everything is local.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgpack

from livegate.handlers import server_ops

if TYPE_CHECKING:
    from livegate.node import Node

__all__ = ["Control", "ENVELOPE_VERSION"]

log = logging.getLogger("livegate.control")

ENVELOPE_VERSION = 1
HEARTBEAT = 3.0
SURVEY_TIMEOUT = 1.0


class Control:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self._surveys: dict[str, tuple[list[Any], asyncio.Event, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        engine = node.broker
        self._publish = getattr(engine, "publish_node", None)
        if self._publish is not None:
            engine.on_node_message = self.handle  # type: ignore[attr-defined]

    @property
    def clustered(self) -> bool:
        return self._publish is not None

    async def start(self) -> None:
        if self.clustered:
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat_forever())

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        for task in list(self._tasks):
            task.cancel()

    def local_info(self) -> dict[str, Any]:
        node, hub = self.node, self.node.hub
        return {
            "uid": node.uid, "name": node.name, "version": node.version,
            "num_clients": hub.num_clients, "num_users": hub.num_users,
            "num_channels": len(hub.channels()), "num_subs": hub.num_subscriptions,
            "uptime": int(time.time() - node.started_at),
        }

    def cluster_info(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for uid in [uid for uid, (expires, _) in self.nodes.items() if expires <= now]:
            del self.nodes[uid]  # a node that stopped beating is gone
        others = [info for uid, (expires, info) in self.nodes.items() if expires > now and uid != self.node.uid]
        return [self.local_info(), *sorted(others, key=lambda i: i["name"])]

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self._send_remote({"t": "info", "info": self.local_info()})
            except Exception as exc:  # engine down: the next beat will tell the others
                log.debug("heartbeat not sent: %s", exc)
            await asyncio.sleep(HEARTBEAT)

    async def _send_remote(self, message: dict[str, Any]) -> None:
        if self._publish is not None:
            await self._publish(msgpack.packb({**message, "v": ENVELOPE_VERSION, "from": self.node.uid}))

    # -- operations -------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        """Apply an operation on this node and on every other node."""
        await self._apply(message)
        await self._send_remote(message)

    async def _apply(self, m: dict[str, Any]) -> None:
        node, kind = self.node, m["t"]
        if kind == "disconnect":
            server_ops.disconnect_local(node, m["user"], m.get("client"), m.get("whitelist"), m["code"], m["reason"])
        elif kind == "unsubscribe":
            await server_ops.unsubscribe_local(node, m["user"], m["channel"], m.get("client"))
        elif kind == "subscribe":
            since = m.get("recover_since")
            await server_ops.subscribe_local(
                node, m["user"], m["channel"], m.get("client"), info=m.get("info"), data=m.get("data"),
                recover_since=tuple(since) if since else None, override=m.get("override"),
                expire_at=float(m.get("expire_at") or 0))
        elif kind == "refresh":
            server_ops.refresh_local(node, m["user"], m.get("client"), expired=bool(m.get("expired")),
                                     expire_at=m.get("expire_at"), info=m.get("info"))

    def handle(self, data: bytes) -> None:
        """A message from the node channel (called by the engine's reader; never awaits)."""
        try:
            m = msgpack.unpackb(data, raw=False)
            if not isinstance(m, dict) or m.get("v") != ENVELOPE_VERSION:
                return
            if m.get("from") == self.node.uid:
                return
            kind = m.get("t")
            if kind == "info":
                self.nodes[m["from"]] = (time.monotonic() + HEARTBEAT * 3, m["info"])
            elif kind == "survey":
                self._spawn(self._answer(m))
            elif kind == "survey_reply":
                if m.get("to") == self.node.uid and m.get("id") in self._surveys:
                    replies, done, expected = self._surveys[m["id"]]
                    replies.append(m["data"])
                    if len(replies) >= expected:
                        done.set()
            elif kind in ("disconnect", "unsubscribe", "subscribe", "refresh"):
                self._spawn(self._apply_logged(m))
        except Exception:
            log.exception("bad control message")

    async def _apply_logged(self, m: dict[str, Any]) -> None:
        try:
            await self._apply(m)
        except Exception:
            log.exception("control message failed", extra={"type": m.get("t")})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- surveys ----------------------------------------------------------------------

    def _survey_local(self, op: str) -> Any:
        if op == "channels":
            return self.node.hub.channels()
        raise ValueError(f"unknown survey {op!r}")

    async def _answer(self, m: dict[str, Any]) -> None:
        await self._send_remote({"t": "survey_reply", "id": m["id"], "to": m["from"],
                                 "data": self._survey_local(m["op"])})

    async def survey(self, op: str) -> list[Any]:
        """Ask every node (this one included) and collect the answers that arrive in time."""
        results = [self._survey_local(op)]
        now = time.monotonic()
        expected = sum(1 for uid, (exp, _) in self.nodes.items() if exp > now and uid != self.node.uid)
        if not self.clustered or expected == 0:
            return results
        sid = uuid.uuid4().hex
        replies: list[Any] = []
        done = asyncio.Event()
        self._surveys[sid] = (replies, done, expected)
        try:
            await self._send_remote({"t": "survey", "id": sid, "op": op})
            try:
                async with asyncio.timeout(SURVEY_TIMEOUT):
                    await done.wait()
            except TimeoutError:
                log.warning("survey incomplete", extra={"op": op, "expected": expected, "got": len(replies)})
        finally:
            del self._surveys[sid]
        return results + replies
