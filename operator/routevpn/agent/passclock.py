"""Two small helpers of a reconcile pass: run its API writes side by side, time its phases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from typing import Any


async def every(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run `coros` side by side, let all finish, then raise the first failure if any."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


class PassClock:
    """Seconds spent in each phase of a pass (for the debug log)."""

    def __init__(self) -> None:
        self.laps: list[tuple[str, float]] = []
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.laps.append((phase, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{phase} {seconds:.3f}s" for phase, seconds in self.laps)
