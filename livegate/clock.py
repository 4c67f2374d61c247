"""Time as livegate's timers see it: injectable, so tests drive pings, deadlines and expiry
by moving a clock instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "SYSTEM_CLOCK"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds for intervals and deadlines (never goes back)."""
        ...

    def time(self) -> float:
        """Unix seconds, for comparing with token expiry times."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK = SystemClock()
