"""A token bucket for the agent's status writes. Pure: the clock is passed in.

Routes and charon follow SA events at once; the API server hears about them at a
bounded rate. A burst (one tunnel flapping, a handful going down together) is written
straight away; 200 tunnels flapping at once are written `rate` per second, each
deferred tunnel again as soon as the budget allows, with its newest state (a pass
recomputes it), so no intermediate state is written late.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Status writes per second, sustained, and in one burst. A client-go default is 5/10;
#: the agent writes only on change, so a larger burst keeps single failovers instant.
DEFAULT_STATUS_QPS = 20.0
DEFAULT_STATUS_BURST = 40


class WriteBudget:
    """`take()` a write if the bucket holds a token; `wait()` says when one will."""

    def __init__(
        self,
        rate: float = DEFAULT_STATUS_QPS,
        burst: int = DEFAULT_STATUS_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("status write budget: rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait(self) -> float:
        """Seconds until a token is there (0 when one is)."""
        self._refill()
        return max(0.0, (1.0 - self.tokens) / self.rate)
