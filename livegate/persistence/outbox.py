"""The transactional outbox: backends insert ``(method, payload[, partition])`` into
``outbox`` inside their own transaction; livegate executes the server API command once the
transaction committed.

Consumers wake on ``LISTEN`` (the insert trigger NOTIFYs on commit) and poll every
``outbox_poll_interval`` in case a notification was missed. A batch runs in one transaction:
it takes an advisory lock per partition (so one instance at a time works a partition, in id
order), claims rows with ``FOR UPDATE SKIP LOCKED``, executes each command with the same
``livegate.api`` code as HTTP, and deletes what succeeded. At-least-once: a crash between the
command and the commit repeats the command. A row whose method or payload is invalid moves
to ``outbox_dead`` with its error; a temporary failure (engine down) stops that partition
until the next round, keeping its order.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import asyncpg
import orjson

from livegate.api.commands import execute
from livegate.errors import ClientError
from livegate.node import Node
from livegate.persistence.migrate import LOCK_KEY, quote_ident
from livegate.tasks import cancel_and_wait

__all__ = ["OutboxConsumer"]

log = logging.getLogger("livegate.outbox")

PARTITION_LOCK = LOCK_KEY + 1


class OutboxConsumer:
    def __init__(self, node: Node, pool: asyncpg.Pool, dsn: str, schema: str, *,
                 batch_size: int, poll_interval: float, connect_timeout: float) -> None:
        self.node = node
        self.pool = pool
        self.dsn = dsn
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.connect_timeout = connect_timeout
        q = quote_ident(schema)
        self.channel = f"{schema}.outbox"
        self._partitions = f"SELECT DISTINCT partition FROM {q}.outbox"
        self._claim = (f"SELECT id, method, payload::text AS payload, partition, created_at FROM {q}.outbox "
                       "WHERE partition = ANY($1::int[]) ORDER BY partition, id LIMIT $2 FOR UPDATE SKIP LOCKED")
        self._delete = f"DELETE FROM {q}.outbox WHERE id = ANY($1::bigint[])"
        self._dead = (f"INSERT INTO {q}.outbox_dead (id, method, payload, partition, error, created_at) "
                      "VALUES ($1, $2, $3::jsonb, $4, $5, $6) ON CONFLICT (id) DO NOTHING")
        self.executed = 0
        self.dead_lettered = 0
        self.healthy = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._close_listener()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                await self._listener.close(timeout=1)
            except Exception:
                self._listener.terminate()
            self._listener = None

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
        await self._listener.add_listener(self.channel, self._notified)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen()
                while await self.run_once():
                    pass
                self.healthy = True
                delay = 0.1
                try:
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
            except asyncio.CancelledError:
                raise
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                if self.healthy:
                    log.warning("outbox unavailable: %s", exc)
                self.healthy = False
                await self._close_listener()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)

    async def run_once(self) -> int:
        """Process one batch; returns how many rows were finished (executed or dead-lettered)."""
        async with self.pool.acquire() as conn, conn.transaction():
            partitions = [r["partition"] for r in await conn.fetch(self._partitions)]
            mine = [p for p in partitions
                    if await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", PARTITION_LOCK, p)]
            if not mine:
                return 0
            rows = await conn.fetch(self._claim, mine, self.batch_size)
            done: list[int] = []
            blocked: set[int] = set()
            for row in rows:
                if row["partition"] in blocked:
                    continue
                error = await self._execute(row)
                if error is None:
                    done.append(row["id"])
                elif error == "":
                    blocked.add(row["partition"])  # temporary: keep the partition's order, retry later
                else:
                    await conn.execute(self._dead, row["id"], row["method"], row["payload"], row["partition"],
                                       error, row["created_at"])
                    done.append(row["id"])
                    self.dead_lettered += 1
                    log.warning("outbox row dead-lettered", extra={"id": row["id"], "error": error})
            if done:
                await conn.execute(self._delete, done)
            return len(done)

    async def _execute(self, row: asyncpg.Record) -> str | None:
        """None: done; "": temporary failure; otherwise the error that makes the row dead."""
        started = time.perf_counter()
        try:
            params = orjson.loads(row["payload"])
            await execute(self.node, row["method"], params)
        except orjson.JSONDecodeError as exc:
            return f"payload is not JSON: {exc}"
        except ClientError as err:
            if err.temporary:
                return ""
            return f"{err.code}: {err.message}"
        except Exception as exc:
            log.exception("outbox command crashed", extra={"id": row["id"]})
            return f"internal error: {exc}"
        self.executed += 1
        log.debug("outbox row executed", extra={"id": row["id"], "method": row["method"],
                                                "ms": round((time.perf_counter() - started) * 1000, 2)})
        return None
