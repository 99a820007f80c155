"""Exponential backoff with jitter: one for a loop (a watch), one per key (write retries).

A fixed retry interval forever is what controller-runtime's workqueue avoids: a broken
object would be retried every 2 s for ever, and an API server that is down would be hit
by every client in lock step. Here each failure doubles the delay up to a cap, a success
resets it, and "full jitter" (a uniform draw below the delay) spreads the clients out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Backoff:
    """Delays for one thing that keeps failing: base·2ⁿ, capped, jittered; reset on success."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        draw: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.base = base
        self.cap = cap
        self._draw = draw
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next try (and count one more failure)."""
        ceiling = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        # Never below half the ceiling: a burst of failures must still slow down.
        return self._draw(ceiling / 2, ceiling)

    def reset(self) -> None:
        """A success: the next failure starts from `base` again."""
        self.failures = 0


class KeyedBackoff(Generic[K]):
    """One `Backoff` per key (a tunnel), forgotten when that key succeeds."""

    def __init__(
        self,
        base: float = 0.05,
        cap: float = 300.0,
        draw: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.base = base
        self.cap = cap
        self._draw = draw
        self._by_key: dict[K, Backoff] = {}

    def failed(self, key: K) -> float:
        """`key` failed: the delay before it is tried again."""
        got = self._by_key.get(key)
        if got is None:
            got = self._by_key[key] = Backoff(self.base, self.cap, self._draw)
        return got.next_delay()

    def succeeded(self, key: K) -> None:
        """`key` succeeded: its next failure starts from `base`."""
        self._by_key.pop(key, None)

    def failures(self, key: K) -> int:
        """How many times in a row `key` has failed."""
        got = self._by_key.get(key)
        return got.failures if got is not None else 0
