"""The HTTP door of shared poll backends (``shared_poll.endpoint``): the node's poller, made
by the server so that HTTP clients stay in the transport layer."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import orjson

__all__ = ["HttpPoller", "MAX_ANSWER"]

log = logging.getLogger("livegate.shared_poll")

#: Bytes of one backend answer at most.
MAX_ANSWER = 16 << 20


class HttpPoller:
    """POSTs polls to backends over one connection pool; ``await poller(endpoint, body,
    timeout)`` is the answer's ``result`` (None when the call failed: logged)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, endpoint: str, body: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        channel = body["channel"]
        try:
            async with self._session.post(endpoint, data=orjson.dumps(body),
                                          headers={"Content-Type": "application/json"},
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status != 200:
                    log.warning("shared poll backend answered %s", resp.status, extra={"channel": channel})
                    return None
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > MAX_ANSWER:
                        log.warning("shared poll backend answer over %d bytes", MAX_ANSWER, extra={"channel": channel})
                        return None
                    chunks.append(chunk)
            # The standard parser: integers of any size stay exact (item data is passed on).
            answer = json.loads(b"".join(chunks))
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            log.warning("shared poll backend failed: %s", exc, extra={"channel": channel})
            return None
        if not isinstance(answer, dict) or "error" in answer:
            log.warning("shared poll backend refused the poll", extra={"channel": channel})
            return None
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
