"""The agent's BGP step with an in-memory BIRD: config applied once, status and metrics.

The real BIRD behind the same client is driven in tests/netns/test_bird_netns.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace
from datetime import UTC
from pathlib import Path

from prometheus_client import generate_latest

from routevpn.agent.bgp import NodeBird, report
from routevpn.agent.metrics import Metrics
from routevpn.dataplane.bird import BirdConfigError, BirdUnreachableError
from routevpn.dataplane.bird_config import BirdSettings
from routevpn.dataplane.bird_facts import BgpSessionFacts, parse_since
from routevpn.dataplane.plan import BgpPlan

SETTINGS = BirdSettings(router_id=ipaddress.IPv4Address("192.0.2.10"))
PLAN = BgpPlan(
    ref="tenant-a/site-b",
    protocol="bgp4_vti7",
    interface="vti7",
    local_address=ipaddress.ip_address("169.254.10.1"),
    peer_address=ipaddress.ip_address("169.254.10.2"),
    local_asn=64512,
    peer_asn=65001,
    accept=(ipaddress.ip_network("198.51.100.0/24"),),
)
_SINCE = parse_since("2026-12-01 15:09:44")
assert _SINCE is not None
SINCE = _SINCE
UP = BgpSessionFacts(
    protocol="bgp4_vti7",
    state="up",
    bgp_state="Established",
    since=SINCE,
    since_text="2026-12-01 15:09:44",
    imported=2,
    filtered=3,
    exported=1,
)


class FakeBird:
    """Counts configures; `sessions` is what `show protocols all` returns."""

    def __init__(self, sessions: list[BgpSessionFacts] | None = None) -> None:
        self.sessions = sessions or []
        self.configured = 0
        self.refuse = False
        self.down = False

    async def configure_check(self, path: Path | str) -> None:
        if self.down:
            raise BirdUnreachableError("no socket")
        if self.refuse:
            raise BirdConfigError("configure check", 8002, "bird.conf:3:1 syntax error")

    async def configure(self, path: Path | str) -> None:
        self.configured += 1

    async def protocols(self) -> list[BgpSessionFacts]:
        if self.down:
            raise BirdUnreachableError("no socket")
        return self.sessions

    async def close(self) -> None:
        return None


def test_no_bgp_tunnels_never_touch_bird(tmp_path: Path) -> None:
    bird = FakeBird()
    node = NodeBird(bird, tmp_path)
    view = asyncio.run(node.sync([], SETTINGS))
    assert bird.configured == 0 and not (tmp_path / "bird.conf").exists()
    assert report("tenant-a/site-b", [], view) is None
    # and without a BIRD at all, only BGP tunnels hear of it
    assert asyncio.run(NodeBird(None, tmp_path).sync([], SETTINGS)).problem is None


def test_established_session_reported_and_config_applied_once(tmp_path: Path) -> None:
    bird = FakeBird([UP])
    node = NodeBird(bird, tmp_path)
    view = asyncio.run(node.sync([PLAN], SETTINGS))
    asyncio.run(node.sync([PLAN], SETTINGS))
    assert bird.configured == 1
    assert "protocol bgp bgp4_vti7" in (tmp_path / "bird.conf").read_text()
    got = report(PLAN.ref, [PLAN], view)
    assert got is not None and got.established and got.reason == "Established"
    assert got.sessions == (
        {
            "peerAddress": "169.254.10.2",
            "state": "Established",
            "prefixes": {"received": 5, "accepted": 2, "advertised": 1},
            "refused": 3,
            # BIRD prints local time; status carries UTC
            "since": SINCE.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    # the last BGP tunnel gone: BIRD is given the empty configuration
    asyncio.run(node.sync([], SETTINGS))
    assert bird.configured == 2
    assert "protocol bgp" not in (tmp_path / "bird.conf").read_text()


def test_reasons_when_not_established(tmp_path: Path) -> None:
    active = replace(UP, state="start", bgp_state="Active", last_error="Socket: Connection refused")
    limit = replace(
        UP, state="down", bgp_state="Down", last_error="Automatic shutdown: Route limit exceeded"
    )
    for facts, reason, text in (
        (active, "Active", "Socket: Connection refused"),
        (limit, "PrefixLimit", "more than 100 prefixes"),
    ):
        view = asyncio.run(NodeBird(FakeBird([facts]), tmp_path).sync([PLAN], SETTINGS))
        got = report(PLAN.ref, [PLAN], view)
        assert got is not None and got.status == "False" and got.reason == reason
        assert text in got.message and got.message.startswith("tunnel tenant-a/site-b: ")
        assert got.sessions[0]["state"] == reason


def test_missing_or_unreachable_bird_and_a_refused_config(tmp_path: Path) -> None:
    got = report(PLAN.ref, [PLAN], asyncio.run(NodeBird(None, tmp_path).sync([PLAN], SETTINGS)))
    assert got is not None and got.reason == "DaemonUnreachable" and "bgp.enabled" in got.message
    down = FakeBird()
    down.down = True
    got = report(PLAN.ref, [PLAN], asyncio.run(NodeBird(down, tmp_path).sync([PLAN], SETTINGS)))
    assert got is not None and got.reason == "DaemonUnreachable"
    refusing = FakeBird([])
    refusing.refuse = True
    view = asyncio.run(NodeBird(refusing, tmp_path).sync([PLAN], SETTINGS))
    got = report(PLAN.ref, [PLAN], view)
    assert got is not None and got.reason == "ConfigRejected" and "syntax error" in got.message
    assert refusing.configured == 0


def test_metrics_per_session_and_forgotten_with_the_tunnel() -> None:
    m = Metrics("node-1")
    m.bgp("tenant-a", "site-b", [("169.254.10.2", UP), ("2001:db8:ff::2", None)])
    text = generate_latest(m.registry).decode()
    assert (
        'routevpn_tunnel_bgp_session_up{name="site-b",namespace="tenant-a",node="node-1",'
        'peer="169.254.10.2"} 1.0'
    ) in text
    assert 'peer="2001:db8:ff::2"} 0.0' in text
    assert (
        'routevpn_tunnel_bgp_prefixes{kind="accepted",name="site-b",namespace="tenant-a",'
        'node="node-1",peer="169.254.10.2"} 2.0'
    ) in text
    m.bgp("tenant-a", "site-b", [("169.254.10.2", UP)])
    assert "2001:db8:ff::2" not in generate_latest(m.registry).decode()
    m.forget("tenant-a", "site-b")
    assert "site-b" not in generate_latest(m.registry).decode()
