"""The Redis API stream door: backends ``XADD {prefix}.api.stream * method <m> payload <p>``.

All instances read the stream through one consumer group (``livegate``), so each entry is
executed once; an entry is acknowledged after it succeeded. Entries left pending by a dead
instance (or failed with a temporary error) are claimed again after ``CLAIM_IDLE`` seconds.
An entry that cannot succeed (unknown method, payload that is not a JSON or msgpack object,
invalid params, or ``MAX_DELIVERIES`` failed attempts) is moved to ``{prefix}.api.dead``
with its error and acknowledged: it is never retried forever and never stops the consumer.

Both streams stay bounded: entries every consumer of the group is done with are trimmed every
``TRIM_INTERVAL`` (XTRIM MINID: below the oldest pending entry, else past the last delivered
one); when the consumers fall behind, the stream is cut to ``engine.redis.api_stream_max_length``
entries, oldest first, with a warning (backends may also bound their XADDs with MAXLEN). The
dead-letter stream keeps about ``DEAD_MAXLEN`` entries.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import msgpack
from redis.exceptions import RedisError, ResponseError

from livegate.api.commands import execute, keep_raw_data
from livegate.errors import ClientError
from livegate.node import Node
from livegate.protocol.jsontext import loads_with_spans
from livegate.sharding import API_STREAM_GROUP
from livegate.tasks import cancel_and_wait

__all__ = ["ApiStreamConsumer", "GROUP", "decode_payload"]

log = logging.getLogger("livegate.api.stream")

GROUP = API_STREAM_GROUP  # shared with livegate.publisher (livegate.sharding)
CLAIM_IDLE = 15.0
MAX_DELIVERIES = 5
DEAD_MAXLEN = 10000
TRIM_INTERVAL = 5.0


def decode_payload(raw: bytes | None) -> Any:
    """The params of an entry: JSON (its ``data`` kept as written) or msgpack."""
    if not raw:
        return {}
    if raw[:1] in (b"{", b" ", b"\n", b"\t", b"\r"):
        return keep_raw_data(*loads_with_spans(raw))
    return msgpack.unpackb(raw, raw=False)


class ApiStreamConsumer:
    def __init__(self, node: Node, client: Any, prefix: str, *, max_length: int = 100_000) -> None:
        self.node = node
        self.client = client  # redis.asyncio.Redis of the first shard
        self.max_length = max_length
        self.stream = f"{prefix}.api.stream"
        self.dead = f"{prefix}.api.dead"
        self.consumer = node.uid
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _run(self) -> None:
        delay = 0.1
        next_claim = next_trim = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._ensure_group()
                while True:
                    if loop.time() >= next_claim:
                        await self._claim_stale()
                        next_claim = loop.time() + CLAIM_IDLE / 3
                    if loop.time() >= next_trim:
                        await self.trim()
                        next_trim = loop.time() + TRIM_INTERVAL
                    reply = await self.client.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=100, block=1000)
                    for _, entries in reply or ():
                        for entry_id, fields in entries:
                            await self._process(entry_id, fields, deliveries=1)
                    delay = 0.1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("api stream unavailable: %s", exc, extra={"retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 3.0)

    async def trim(self) -> int:
        """Drop the entries the group is done with; bound what is left. Returns how many went."""
        summary = await self.client.xpending(self.stream, GROUP)
        if summary["pending"]:
            floor = summary["min"]  # the oldest entry still being worked on stays
        else:
            groups = await self.client.xinfo_groups(self.stream)
            last = next((g["last-delivered-id"] for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
            if last is None:
                return 0
            ms, _, seq = (last.decode() if isinstance(last, bytes) else last).partition("-")
            floor = f"{ms}-{int(seq or 0) + 1}"  # everything delivered is acknowledged
        removed = int(await self.client.xtrim(self.stream, minid=floor, approximate=False))
        if await self.client.xlen(self.stream) > self.max_length:
            cut = int(await self.client.xtrim(self.stream, maxlen=self.max_length, approximate=False))
            removed += cut
            log.warning("api stream over its bound: oldest unprocessed entries dropped",
                        extra={"dropped": cut, "max_length": self.max_length})
        return removed

    async def _claim_stale(self) -> None:
        pending = await self.client.xpending_range(
            self.stream, GROUP, min="-", max="+", count=100, idle=int(CLAIM_IDLE * 1000))
        for item in pending:
            entry_id = item["message_id"]
            deliveries = int(item["times_delivered"]) + 1
            claimed = await self.client.xclaim(self.stream, GROUP, self.consumer, int(CLAIM_IDLE * 1000), [entry_id])
            for cid, fields in claimed:
                if fields is None:
                    await self.client.xack(self.stream, GROUP, cid)  # deleted from the stream meanwhile
                    continue
                await self._process(cid, fields, deliveries)

    async def _process(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> None:
        method = fields.get(b"method", b"").decode(errors="replace")
        try:
            params = decode_payload(fields.get(b"payload"))
        except Exception as exc:
            await self._dead(entry_id, fields, f"payload is neither JSON nor msgpack: {exc}")
            return
        try:
            await execute(self.node, method, params)
        except ClientError as err:
            if err.temporary and deliveries < MAX_DELIVERIES:
                log.warning("api stream entry failed, will retry",
                            extra={"entry": entry_id.decode(), "method": method, "error": err.message})
                return  # stays pending; claimed again later
            await self._dead(entry_id, fields, f"{err.code}: {err.message}")
            return
        except (TypeError, ValueError) as exc:  # e.g. msgpack bytes or int keys where JSON is needed
            await self._dead(entry_id, fields, f"107: bad request: {exc}")
            return
        except Exception as exc:
            log.exception("api stream entry crashed", extra={"entry": entry_id.decode(), "method": method})
            if deliveries >= MAX_DELIVERIES:
                await self._dead(entry_id, fields, f"internal error: {exc}")
            return
        await self.client.xack(self.stream, GROUP, entry_id)

    async def _dead(self, entry_id: bytes, fields: dict[bytes, bytes], error: str) -> None:
        log.warning("api stream entry dead-lettered", extra={"entry": entry_id.decode(), "error": error})
        record = {b"id": entry_id, b"error": error.encode(), **fields}
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead, record, maxlen=DEAD_MAXLEN, approximate=True)
            pipe.xack(self.stream, GROUP, entry_id)
            await pipe.execute()
