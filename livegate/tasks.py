"""Small asyncio helpers shared by the background workers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["cancel_and_wait", "STOP_TIMEOUT"]

log = logging.getLogger("livegate.tasks")

#: How long a cancelled background task may take to finish before it is left behind.
STOP_TIMEOUT = 5.0


async def cancel_and_wait(task: asyncio.Task[Any] | None, timeout: float = STOP_TIMEOUT) -> None:
    """Cancel a background task and wait until it has finished, whatever it raised, for at
    most ``timeout`` seconds: shutting down must not hang on a task that does not stop (a
    client library stuck in a cancelled network call, say); such a task is logged and left
    to the end of the process."""
    if task is None:
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("background task did not stop", extra={"task": task.get_name(), "timeout_s": timeout})
        return
    if not task.cancelled():
        task.exception()  # retrieved: nothing to report for a task being stopped
