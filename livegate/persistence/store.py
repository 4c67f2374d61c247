"""Persistence: the asyncpg pool, the archive, the outbox consumer and archive retention,
started together when ``persistence.dsn`` is set."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from livegate.channels.broker import HistoryOptions, HistoryResult
from livegate.channels.names import ResolvedChannel
from livegate.config import ChannelOptions, Config
from livegate.errors import LivegateError
from livegate.node import Node
from livegate.persistence.archive import Archive
from livegate.persistence.migrate import LATEST, LOCK_KEY, SchemaTooOld, quote_ident, schema_version
from livegate.persistence.outbox import OutboxConsumer

__all__ = ["Persistence"]

log = logging.getLogger("livegate.persistence")

RETENTION_LOCK = LOCK_KEY + 2
RETENTION_BATCH = 1000


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _delete_in_batches(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    """Run a DELETE limited to RETENTION_BATCH rows until it deletes fewer: short transactions."""
    deleted = 0
    while True:
        n = int((await conn.execute(sql, *args)).split()[-1])
        deleted += n
        if n < RETENTION_BATCH:
            return deleted


class Persistence:
    def __init__(self, config: Config, node: Node) -> None:
        self.config = config
        self.cfg = config.persistence
        self.node = node
        self.schema = self.cfg.schema_name
        self.pool: asyncpg.Pool | None = None
        self.archive: Archive | None = None
        self.outbox: OutboxConsumer | None = None
        self._retention: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return (self.archive is None or self.archive.healthy) and (self.outbox is None or self.outbox.healthy)

    async def start(self) -> None:
        cfg = self.cfg
        try:
            self.pool = await asyncpg.create_pool(
                cfg.dsn, min_size=cfg.pool_min_size, max_size=cfg.pool_max_size, timeout=cfg.connect_timeout,
                command_timeout=cfg.command_timeout)
            async with self.pool.acquire() as conn:
                version = await schema_version(conn, self.schema)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LivegateError(f"PostgreSQL unavailable at start: {exc}") from None
        if version < LATEST:
            await self.pool.close()
            raise SchemaTooOld(f"database schema {self.schema!r} is at version {version}, this livegate needs "
                               f"{LATEST}: run `livegate migrate --config <file>`")
        if any(opts.archive for _, opts in self._namespaces()):
            self.archive = Archive(self.pool, self.schema, batch_size=cfg.archive_batch_size,
                                   flush_interval=cfg.archive_flush_interval, buffer_size=cfg.archive_buffer_size)
            self.archive.start()
            self._retention = asyncio.get_running_loop().create_task(self._retain_forever())
        if cfg.outbox_enabled:
            self.outbox = OutboxConsumer(self.node, self.pool, cfg.dsn, self.schema,
                                         batch_size=cfg.outbox_batch_size, poll_interval=cfg.outbox_poll_interval,
                                         connect_timeout=cfg.connect_timeout)
            self.outbox.start()
        self.node.attach_persistence(self)

    async def stop(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
        if self.outbox is not None:
            await self.outbox.stop()
        if self.archive is not None:
            await self.archive.stop()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), 3)
            except (TimeoutError, Exception):
                self.pool.terminate()

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"postgres": "up" if self.healthy else "down"}
        if self.archive is not None:
            body["archive"] = self.archive.stats()
        return body

    def _namespaces(self) -> list[tuple[str, ChannelOptions]]:
        ch = self.config.channel
        return [("", ch.without_namespace), *((ns.name, ns) for ns in ch.namespaces)]

    # -- the archive as seen by the node -----------------------------------------------

    def archived(self, resolved: ResolvedChannel, epoch: str, offset: int, data: bytes, info: bytes | None,
                 tags: dict[str, str] | None) -> None:
        if self.archive is not None and resolved.options.archive and offset:
            self.archive.add(resolved.name, epoch, offset, data, info, tags)

    async def extend_history(self, resolved: ResolvedChannel, opts: HistoryOptions, result: HistoryResult) -> HistoryResult:
        """Prepend archived publications when the engine no longer holds the start of the range."""
        if (self.archive is None or not resolved.options.archive or opts.since is None or opts.reverse
                or opts.limit == 0):
            return result
        top, pubs, after = result.position, result.publications, opts.since.offset
        if opts.since.epoch and opts.since.epoch != top.epoch:
            return result
        first = pubs[0].offset if pubs else top.offset + 1
        if first <= after + 1:
            return result  # the engine has the whole range
        want = opts.limit if opts.limit > 0 else 1 << 62
        try:
            older = await self.archive.read(resolved.name, top.epoch, after, first, want)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("archive read failed: %s", exc, extra={"channel": resolved.name})
            return result
        # Only a gap-free archive range joins the engine's: a hole (a publication the
        # archive never got) must show as one, so recovery reports recovered: false.
        gap_free = bool(older) and all(p.offset == after + 1 + i for i, p in enumerate(older))
        reaches_engine = len(older) >= want or (bool(older) and older[-1].offset == first - 1)
        if not (gap_free and reaches_engine):
            return result
        merged = older + pubs
        return HistoryResult(merged[:want], top)

    # -- retention -------------------------------------------------------------------------

    async def _retain_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.retention_interval)
            try:
                await self.retain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("archive retention failed: %s", exc)

    async def retain(self) -> int:
        """Delete what the namespaces' archive_ttl / archive_max_size no longer keep, in small
        batches (short transactions, no long locks). One instance at a time does it."""
        assert self.pool is not None
        q = quote_ident(self.schema)
        boundary = self.config.channel.namespace_boundary
        private = self.config.channel.private_prefix
        deleted = 0
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", RETENTION_LOCK, self.schema):
                return 0
            try:
                for name, opts in self._namespaces():
                    if not opts.archive or not (opts.archive_ttl or opts.archive_max_size):
                        continue
                    if name:
                        where = "(channel LIKE $1 OR channel LIKE $2)"
                        args: list[Any] = [_like_prefix(name + boundary) + "%",
                                           _like_prefix(private + name + boundary) + "%"]
                    else:
                        where = "channel NOT LIKE $1 AND channel NOT LIKE $2"
                        args = ["%" + _like_prefix(boundary) + "%", "%" + _like_prefix(boundary) + "%"]
                    if opts.archive_ttl:
                        sql = (f"DELETE FROM {q}.publications WHERE ctid = ANY(ARRAY("
                               f"SELECT ctid FROM {q}.publications WHERE {where} "
                               f"AND created_at < now() - make_interval(secs => $3) LIMIT {RETENTION_BATCH}))")
                        deleted += await _delete_in_batches(conn, sql, *args, opts.archive_ttl)
                    if opts.archive_max_size:
                        sql = (f"DELETE FROM {q}.publications WHERE ctid = ANY(ARRAY("
                               f"SELECT x.ctid FROM {q}.publications x JOIN (SELECT channel, epoch, "
                               f'max("offset") AS top FROM {q}.publications WHERE {where} GROUP BY channel, epoch) m '
                               f'USING (channel, epoch) WHERE x."offset" <= m.top - $3 LIMIT {RETENTION_BATCH}))')
                        deleted += await _delete_in_batches(conn, sql, *args, opts.archive_max_size)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", RETENTION_LOCK, self.schema)
        if deleted:
            log.info("archive retention", extra={"deleted": deleted})
        return deleted
