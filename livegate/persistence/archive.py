"""The publication archive: publications of namespaces with ``archive = true``, written to
PostgreSQL in batches (by size and by time), idempotently on ``(channel, epoch, offset)``.

``add`` never awaits and never blocks the fan-out: it appends to a bounded buffer. While
PostgreSQL is slow or down the buffer holds up to ``archive_buffer_size`` publications; past
that, new ones are counted and logged as dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Any

import asyncpg
import orjson

from livegate.persistence.migrate import quote_ident
from livegate.protocol.types import Publication

__all__ = ["Archive"]

log = logging.getLogger("livegate.archive")

Row = tuple[str, str, int, str, str | None, str | None]


class Archive:
    def __init__(self, pool: asyncpg.Pool, schema: str, *, batch_size: int, flush_interval: float,
                 buffer_size: int) -> None:
        self.pool = pool
        q = quote_ident(schema)
        self._insert = (
            f'INSERT INTO {q}.publications (channel, epoch, "offset", data, info, tags) '
            "SELECT c, e, o, d::jsonb, i::jsonb, t::jsonb "
            "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) AS u(c, e, o, d, i, t) "
            'ON CONFLICT (channel, epoch, "offset") DO NOTHING')
        self._select = (
            f'SELECT "offset", data::text, info::text, tags::text FROM {q}.publications '
            'WHERE channel = $1 AND epoch = $2 AND "offset" > $3 AND "offset" < $4 ORDER BY "offset" LIMIT $5')
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer: deque[Row] = deque()
        self.buffer_size = buffer_size
        self.written = 0
        self.dropped = 0
        self.healthy = True
        self._last_drop_log = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Try to write what is buffered, then stop."""
        if self._task is None:
            return
        self._wake.set()
        deadline = time.monotonic() + flush_timeout
        while self.buffer and self.healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        self._task = None

    def add(self, channel: str, epoch: str, offset: int, data: bytes, info: bytes | None,
            tags: dict[str, str] | None) -> None:
        if len(self.buffer) >= self.buffer_size:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log > 5:
                self._last_drop_log = now
                log.error("archive buffer full: publications dropped from the archive",
                          extra={"dropped_total": self.dropped, "buffer": len(self.buffer)})
            return
        self.buffer.append((channel, epoch, offset, data.decode(), None if info is None else info.decode(),
                            None if not tags else orjson.dumps(tags).decode()))
        if len(self.buffer) >= self.batch_size:
            self._wake.set()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            if len(self.buffer) < self.batch_size:
                try:
                    async with asyncio.timeout(self.flush_interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            while self.buffer:
                batch = [self.buffer[i] for i in range(min(self.batch_size, len(self.buffer)))]
                try:
                    columns = list(zip(*batch, strict=True))
                    await self.pool.execute(self._insert, *columns)
                except asyncio.CancelledError:
                    raise
                except (asyncpg.DataError, asyncpg.ProgramLimitExceededError):
                    # A row PostgreSQL refuses (e.g. "\u0000" in jsonb, a value too large) must
                    # not block the rest: write the batch row by row and drop what is refused.
                    try:
                        await self._write_one_by_one(len(batch))
                    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError) as exc:
                        log.warning("archive write failed: %s", exc, extra={"buffered": len(self.buffer)})
                        self.healthy = False
                        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                        delay = min(delay * 2, 5.0)
                    continue
                except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError) as exc:
                    if self.healthy:
                        log.warning("archive write failed: %s", exc, extra={"buffered": len(self.buffer)})
                    self.healthy = False
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, 5.0)
                    continue
                for _ in batch:
                    self.buffer.popleft()
                self.written += len(batch)
                if not self.healthy:
                    log.info("archive writes resumed", extra={"buffered": len(self.buffer)})
                self.healthy = True
                delay = 0.1

    async def _write_one_by_one(self, count: int) -> None:
        """Write the first ``count`` buffered rows one at a time, each leaving the buffer as
        soon as it is written or refused; other errors propagate (the caller retries)."""
        for _ in range(count):
            row = self.buffer[0]
            try:
                await self.pool.execute(self._insert, *([value] for value in row))
                self.written += 1
            except (asyncpg.DataError, asyncpg.ProgramLimitExceededError) as exc:
                self.dropped += 1
                log.error("archive refused a publication: %s", exc,
                          extra={"channel": row[0], "epoch": row[1], "offset": row[2]})
            self.buffer.popleft()

    async def read(self, channel: str, epoch: str, after: int, before: int, limit: int) -> list[Publication]:
        """Archived publications with after < offset < before, oldest first."""
        rows = await self.pool.fetch(self._select, channel, epoch, after, before, limit)
        return [Publication(r["data"].encode(), r["offset"], None if r["info"] is None else r["info"].encode(),
                            None if r["tags"] is None else orjson.loads(r["tags"])) for r in rows]

    def stats(self) -> dict[str, Any]:
        return {"buffered": len(self.buffer), "written": self.written, "dropped": self.dropped, "healthy": self.healthy}
