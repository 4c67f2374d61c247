"""Node: one livegate instance's services (engine, hub, rules, tokens, app) and the
operations that the client handlers and the server API share."""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from livegate import __version__
from livegate.app import App
from livegate.auth import TokenVerifier
from livegate.channels.broker import (
    Broker,
    HistoryOptions,
    HistoryResult,
    PresenceManager,
    PublishOptions,
    PublishResult,
)
from livegate.channels.hub import Hub
from livegate.channels.names import ChannelRules, ResolvedChannel
from livegate.config import Config
from livegate.metrics import METRICS
from livegate.protocol.types import ClientInfo

__all__ = ["Node", "PRESENCE_TTL", "PRESENCE_REFRESH"]

#: A presence entry lives this long after its last refresh (seconds) ...
PRESENCE_TTL = 60.0
#: ... and the owning node refreshes it this often.
PRESENCE_REFRESH = 25.0


@dataclass(slots=True)
class Node:
    config: Config
    app: App
    broker: Broker
    presence: PresenceManager
    hub: Hub
    rules: ChannelRules
    verifier: TokenVerifier
    uid: str = ""
    name: str = ""
    started_at: float = 0.0
    draining: bool = False
    persistence: Any = None  # persistence.store.Persistence when PostgreSQL is configured

    def __post_init__(self) -> None:
        self.uid = self.uid or str(uuid.uuid4())
        self.name = self.name or f"{socket.gethostname()}_{self.config.http_server.port}"
        self.started_at = self.started_at or time.time()

    @property
    def version(self) -> str:
        return __version__

    @property
    def engine_healthy(self) -> bool:
        return bool(getattr(self.broker, "healthy", True))

    @property
    def ready(self) -> bool:
        """Accepting traffic: not draining and the engine is reachable."""
        return not self.draining and self.engine_healthy

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
            info=info, tags=tags, idempotency_key=idempotency_key,
        )

    def meta_ttl(self, resolved: ResolvedChannel) -> float:
        return resolved.options.history_meta_ttl or self.config.channel.history_meta_ttl

    async def publish(
        self, channel: str, data: bytes, *, info: ClientInfo | None = None, tags: dict[str, str] | None = None,
        idempotency_key: str = "", skip_history: bool = False,
    ) -> PublishResult:
        """Publish raw JSON ``data`` into a channel.

        Every message on the wire is one line: raw newlines, which JSON allows only as
        whitespace between tokens, are removed here so pretty-printed JSON is safe.
        """
        if b"\n" in data or b"\r" in data:
            data = data.replace(b"\r", b"").replace(b"\n", b"")
        resolved = self.rules.resolve(channel)
        opts = self.publish_options(
            resolved, info=info, tags=tags, idempotency_key=idempotency_key, skip_history=skip_history,
        )
        started = time.perf_counter()
        try:
            result = await self.broker.publish(channel, data, opts)
        finally:
            METRICS.broker_publish.observe((self.config.engine.type,), time.perf_counter() - started)
        if self.persistence is not None and result.position.offset and not result.suppressed:
            self.persistence.archived(resolved, result.position.epoch, result.position.offset, data,
                                  None if info is None else info.to_json(), tags)
        return result

    async def history(self, resolved: ResolvedChannel, opts: HistoryOptions) -> HistoryResult:
        """The engine's history, extended from the PostgreSQL archive when the engine no
        longer holds the start of the requested range (namespaces with archive = true)."""
        result = await self.broker.history(resolved.name, opts)
        if self.persistence is not None:
            result = await self.persistence.extend_history(resolved, opts, result)
        return result
