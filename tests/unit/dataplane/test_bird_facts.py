"""`show protocols all` of a real BIRD 2.0.12 (captured in tests/data/bird) parsed to facts.

The captures come from two BIRDs peering over a veth in network namespaces: sessions
established with routes accepted and refused (``import keep filtered on``), the import
limit hit, the peer's protocols disabled, the peer's daemon gone.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from routevpn.dataplane.bird import parse_reply
from routevpn.dataplane.bird_facts import BgpSessionFacts, by_protocol, parse_protocols, parse_since

DATA = Path(__file__).resolve().parents[2] / "data" / "bird"


def captured(name: str) -> dict[str, BgpSessionFacts]:
    reply = parse_reply((DATA / f"show-protocols-all-{name}.txt").read_text())
    assert reply.code == 0 and not reply.error
    return by_protocol(parse_protocols((line.code, line.text) for line in reply.lines))


def test_established_sessions_with_counts() -> None:
    sessions = captured("established")
    # device, kernel and static protocols are not sessions
    assert sorted(sessions) == ["t_a4", "t_a6"]
    v4, v6 = sessions["t_a4"], sessions["t_a6"]
    assert v4.established and v4.state == "up" and v4.bgp_state == "Established"
    assert v4.neighbor == "169.254.10.2%tA"
    assert (v4.received, v4.accepted, v4.refused, v4.advertised) == (4, 2, 2, 1)
    assert (v6.received, v6.accepted, v6.refused, v6.advertised) == (2, 1, 1, 0)
    assert v4.last_error == "" and not v4.prefix_limit
    assert v4.since == datetime.fromisoformat("2026-12-01 15:09:44").astimezone()
    assert v4.since_text == "2026-12-01 15:09:44"


def test_import_limit_hit_stops_the_session() -> None:
    v4 = captured("limit-hit")["t_a4"]
    assert v4.state == "down" and v4.bgp_state == "Down" and not v4.established
    assert v4.prefix_limit and v4.limit_hit
    assert v4.last_error == "Automatic shutdown: Route limit exceeded"
    assert (v4.received, v4.accepted) == (0, 0)


def test_peer_disabled_and_peer_gone() -> None:
    disabled = captured("peer-disabled")["t_a6"]
    assert (disabled.state, disabled.bgp_state) == ("start", "Active")
    assert disabled.last_error == "Received: Administrative shutdown"
    assert not disabled.prefix_limit
    gone = captured("peer-gone")
    for name in ("t_a4", "t_a6"):
        assert gone[name].bgp_state == "Active"
        assert gone[name].last_error == "Socket: Connection refused"


def test_short_listing_rows_are_continuations() -> None:
    # `show protocols` sends one 1002 code and the other rows as continuation lines
    text = (
        "2002-Name       Proto      Table      State  Since         Info\n"
        "1002-device1    Device     ---        up     2026-12-01 15:07:48  \n"
        " p4         BGP        ---        up     2026-12-01 15:07:52  Established   \n"
        " p6         BGP        ---        start  2026-12-01 15:07:52  Connect\n"
        "0000 \n"
    )
    reply = parse_reply(text)
    sessions = parse_protocols((line.code, line.text) for line in reply.lines)
    assert [(s.protocol, s.bgp_state) for s in sessions] == [
        ("p4", "Established"),
        ("p6", "Connect"),
    ]


@pytest.mark.parametrize(
    ("text", "has_date"),
    [("2026-12-01 15:07:52", True), ("2026-12-01 15:07:52.512", True), ("15:07:52.512", False)],
)
def test_since_needs_a_date(text: str, has_date: bool) -> None:
    assert (parse_since(text) is not None) is has_date
