"""Which replica acts: read from kopf's peering status, the same way kopf decides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from routevpn.controller.leader import is_active, live_peers

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
