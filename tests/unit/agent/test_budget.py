"""The status write budget (agent.budget): a token bucket on an injected clock."""

from __future__ import annotations

import pytest

from routevpn.agent.budget import WriteBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_writes_follow_at_the_rate() -> None:
    clock = Clock()
    budget = WriteBudget(rate=4.0, burst=3, clock=clock)
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    assert budget.wait() == 0.25
    clock.now += 0.25
    assert budget.take() is True
    assert budget.take() is False
    clock.now += 60.0  # idle: the bucket refills to the burst, not beyond
    assert [budget.take() for _ in range(4)] == [True, True, True, False]


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        WriteBudget(rate=0.0, burst=1)
    with pytest.raises(ValueError):
        WriteBudget(rate=1.0, burst=0)
