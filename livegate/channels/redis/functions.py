"""livegate's Redis function library (livegate.lua): loading and upgrading it."""

from __future__ import annotations

import logging
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

__all__ = ["LIBRARY", "FUNCTION_VERSION", "load_functions"]

log = logging.getLogger("livegate.redis")

LIBRARY = resources.files("livegate.channels.redis").joinpath("livegate.lua").read_text(encoding="utf-8")
FUNCTION_VERSION = int(next(line for line in LIBRARY.splitlines() if line.startswith("local VERSION")).split("=")[1])


async def load_functions(client: aioredis.Redis) -> None:
    """Load the livegate function library unless the same or a newer version is there."""
    try:
        current = int(await client.fcall_ro("livegate_version", 0))
    except ResponseError:
        current = 0
    if current < FUNCTION_VERSION:
        await client.function_load(LIBRARY, replace=True)
        log.info("loaded redis functions", extra={"version": FUNCTION_VERSION, "previous": current})
    elif current > FUNCTION_VERSION:
        log.warning("redis has newer livegate functions; keeping them",
                    extra={"version": current, "ours": FUNCTION_VERSION})
