"""Backoff: doubling with a cap, jitter within [delay/2, delay], reset on success, per key."""

from __future__ import annotations

from routevpn.kube.backoff import Backoff, KeyedBackoff


def _top(lo: float, hi: float) -> float:
    return hi


def _bottom(lo: float, hi: float) -> float:
    return lo


def test_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(base=0.5, cap=4.0, draw=_top)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_jitter_never_falls_below_half_the_delay() -> None:
    b = Backoff(base=1.0, cap=60.0, draw=_bottom)
    assert [b.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]
    real = Backoff(base=1.0, cap=60.0)
    for step in range(8):
        ceiling = min(60.0, 2.0**step)
        assert ceiling / 2 <= real.next_delay() <= ceiling


def test_each_key_backs_off_on_its_own() -> None:
    k: KeyedBackoff[str] = KeyedBackoff(base=0.05, cap=300.0, draw=_top)
    assert [k.failed("a") for _ in range(3)] == [0.05, 0.1, 0.2]
    assert k.failed("b") == 0.05  # another key starts from the base
    assert k.failures("a") == 3
    k.succeeded("a")
    assert k.failures("a") == 0 and k.failed("a") == 0.05
