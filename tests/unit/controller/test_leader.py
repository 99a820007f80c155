"""Which replica acts: read from kopf's peering status, the same way kopf decides."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from routevpn.controller.leader import GRANT, Leader, is_active, live_peers

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def peer(priority: int, ago: float = 1.0, lifetime: int = 30) -> dict[str, object]:
    seen = (NOW - timedelta(seconds=ago)).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen}


def test_alone_is_active_and_unregistered_is_not() -> None:
    assert is_active({"me": peer(5)}, "me", 5, NOW)
    assert not is_active({}, "me", 5, NOW)
    assert not is_active({"other": peer(1)}, "me", 5, NOW)


def test_higher_or_equal_live_peer_wins() -> None:
    assert not is_active({"me": peer(5), "b": peer(9)}, "me", 5, NOW)
    assert not is_active({"me": peer(5), "b": peer(5)}, "me", 5, NOW)  # kopf pauses both
    assert is_active({"me": peer(5), "b": peer(4)}, "me", 5, NOW)


def test_a_dead_peer_does_not_count() -> None:
    status = {"me": peer(5), "b": peer(9, ago=31)}
    assert live_peers(status, NOW) == {"me": 5}
    assert is_active(status, "me", 5, NOW)
    # Malformed entries are ignored rather than trusted.
    assert live_peers({"x": "junk", "y": {"priority": 1, "lastseen": "never"}}, NOW) == {}


# --- the lease: who may act, from the reads' timing ------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def live(**prios: int) -> dict[str, object]:
    """A peering status as read now: every named peer seen a moment ago."""
    seen = datetime.now(UTC).isoformat()
    return {k: {"priority": p, "lifetime": 30, "lastseen": seen} for k, p in prios.items()}


def steps(leader: Leader, clock: Clock, reads: list[tuple[float, dict[str, object]]]) -> list[str]:
    """Feed reads (seconds since the last one, status); what `active` was after each, and
    every catch-up, in order."""
    seen: list[str] = []

    async def body() -> None:
        for gap, status in reads:
            clock.t += gap

            async def read(status: dict[str, object] = status) -> dict[str, object]:
                return status

            async def caught_up() -> None:
                seen.append("resync")

            await leader.step(read, caught_up)
            seen.append("active" if leader.active else "standby")

    asyncio.run(body())
    return seen


def test_alone_leads_after_one_catch_up_and_one_confirming_read() -> None:
    clock = Clock()
    leader = Leader("me", 5, clock)
    got = steps(leader, clock, [(0, live(me=5)), (0, live(me=5)), (1, live(me=5))])
    assert got == ["resync", "standby", "active", "active"]


def test_a_new_leader_waits_out_the_old_leaders_grant() -> None:
    clock = Clock()
    leader = Leader("me", 9, clock)
    both = live(me=9, old=5)
    got = steps(leader, clock, [(0, both), (1, both), (GRANT - 1, both), (0, both)])
    # No catch-up (hence no decision) until a whole GRANT after the first read naming us.
    assert got == ["standby", "standby", "resync", "standby", "active"]


def test_a_lower_priority_replica_never_acts_and_a_higher_one_stops_the_leader() -> None:
    clock = Clock()
    low = Leader("me", 5, clock)
    assert steps(low, clock, [(0, live(me=5, top=9)), (10, live(me=5, top=9))]) == [
        "standby",
        "standby",
    ]
    leader = Leader("me", 5, clock)
    steps(leader, clock, [(0, live(me=5)), (0, live(me=5))])
    assert leader.active
    assert steps(leader, clock, [(1, live(me=5, top=9))]) == ["standby"]


def test_a_stalled_leader_stops_acting_by_itself_and_catches_up_again() -> None:
    clock = Clock()
    leader = Leader("me", 5, clock)
    steps(leader, clock, [(0, live(me=5)), (0, live(me=5))])
    assert leader.active
    clock.t += GRANT  # no read for a whole grant (a stalled loop, a slow API server)
    assert not leader.active
    # The next read finds the grant lapsed: catch up as a new leader (alone: no wait).
    assert steps(leader, clock, [(0, live(me=5)), (0, live(me=5))]) == [
        "resync",
        "standby",
        "active",
    ]


def test_an_unreadable_peering_stands_by() -> None:
    clock = Clock()
    leader = Leader("me", 5, clock)
    steps(leader, clock, [(0, live(me=5)), (0, live(me=5))])

    async def broken() -> dict[str, object]:
        raise OSError("connection refused")

    async def nothing() -> None:
        return None

    asyncio.run(leader.step(broken, nothing))
    assert not leader.active
