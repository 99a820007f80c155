"""routevpn's BIRD client and config writer against real BIRDs in network namespaces.

This host's kernel has no VTI/ESP, so a veth joins the node's namespace and each far
end's, carrying the tunnel's inside /30 and /126 as the tunnel interface would. The
node's BIRD is driven only through `dataplane.bird` (control socket) and
`dataplane.bird_writer` (the file it runs); the far ends are configured by hand.

Tenant 1 (interface rvt1) accepts 198.51.100.0/24 and 2001:db8:100::/48; its far end
also advertises a default route, the node's own network (192.0.2.0/24) and tenant 2's
prefix (203.0.113.0/24): all must be refused. Tenant 2 (rvt2) accepts 203.0.113.0/24.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from routevpn.api import naming
from routevpn.dataplane.bird import BirdClient
from routevpn.dataplane.bird_config import BirdSettings, render
from routevpn.dataplane.bird_facts import BgpSessionFacts, by_protocol
from routevpn.dataplane.bird_writer import BirdConfigWriter
from routevpn.dataplane.plan import BgpPlan
from support import bird_configs as cfg
from support.bird import BIRD, Bird, running
from support.netns import Netns, have_root, netns, veth
from support.tiers import missing

#: BGP comes up in a few seconds here (connect retry 2 s); generous for a loaded host
SESSION_WAIT_S = 60.0
FORBIDDEN = ("192.0.2.0/24", "169.254.0.0/16", "127.0.0.0/8")
T1_V4 = cfg.Session(
    "bgp4_rvt1", "rvt1", "169.254.10.1", "169.254.10.2", ["198.51.100.0/24"], forbidden=FORBIDDEN
)
T1_V6 = cfg.Session("bgp6_rvt1", "rvt1", "2001:db8:ff::1", "2001:db8:ff::2", ["2001:db8:100::/48"])
T2_V4 = cfg.Session(
    "bgp4_rvt2", "rvt2", "169.254.20.1", "169.254.20.2", ["203.0.113.0/24"], peer_asn=65002
)
T3_V4 = cfg.Session(
    "bgp4_rvt3", "rvt3", "169.254.30.1", "169.254.30.2", ["198.51.100.0/24"], peer_asn=65003
)
FAR1_ROUTES4 = (
    "198.51.100.0/24",
    "198.51.100.128/25",
    "0.0.0.0/0",
    "192.0.2.0/24",
    "203.0.113.0/24",
)


@pytest.fixture(autouse=True)
def _needs_root_and_bird() -> None:
    if not have_root():
        missing("root (network namespaces)")
    if not BIRD.exists():
        missing(f"bird at {BIRD}")


@dataclass
class Site:
    """A far end: its namespace and BIRD."""

    ns: Netns
    bird: Bird


@dataclass
class Node:
    """The node's namespace, its BIRD, and routevpn's client and writer for it."""

    ns: Netns
    bird: Bird
    writer: BirdConfigWriter

    def apply(self, *sessions: cfg.Session, **kw: int) -> bool:
        """Render the hand-written node config and apply it through the writer."""
        return asyncio.run(self.writer_apply(cfg.node(sessions, **kw)))

    async def writer_apply(self, text: str) -> bool:
        """`text` through routevpn's writer (one event loop per call here: a client each)."""
        self.writer.bird = client = BirdClient(self.bird.socket)
        try:
            return await self.writer.apply(text)
        finally:
            await client.close()

    def sessions(self) -> dict[str, BgpSessionFacts]:
        async def read() -> dict[str, BgpSessionFacts]:
            client = BirdClient(self.bird.socket)
            try:
                return by_protocol(await client.protocols())
            finally:
                await client.close()

        return asyncio.run(read())

    def wait(
        self, what: str, ok: Callable[[dict[str, BgpSessionFacts]], bool]
    ) -> dict[str, BgpSessionFacts]:
        deadline = time.monotonic() + SESSION_WAIT_S
        while True:
            seen = self.sessions()
            if ok(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} not within {SESSION_WAIT_S}s: {seen}\n{self.bird.log_tail()}"
                )
            time.sleep(0.2)

    def wait_routes(
        self, version: int, wanted: set[tuple[str, str, str, int]]
    ) -> set[tuple[str, str, str, int]]:
        """The table once it holds `wanted` (BIRD's kernel protocol installs after it counts)."""
        deadline = time.monotonic() + SESSION_WAIT_S
        while not wanted <= (have := self.route_keys(version)):
            assert time.monotonic() < deadline, f"{wanted - have} not installed: {have}"
            time.sleep(0.2)
        return have

    def routes(self, version: int = 4) -> list[dict[str, object]]:
        """Kernel routes of the main table (iproute2's JSON)."""
        out = self.ns.ip("-j", f"-{version}", "route", "show", "table", "main")
        return list(json.loads(out or "[]"))

    def route_keys(self, version: int = 4) -> set[tuple[str, str, str, int]]:
        """(dst, dev, protocol, metric) of every route in the main table."""
        return {
            (
                str(r["dst"]),
                str(r.get("dev", "")),
                str(r.get("protocol", "")),
                int(str(r.get("metric", 0))),
            )
            for r in self.routes(version)
        }


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Node, Site, Site]]:
    """The node with tenants 1 and 2 linked to their far ends, BIRDs started, nothing peered."""
    with (
        netns("bgpn") as node_ns,
        netns("bgpa") as ns1,
        netns("bgpb") as ns2,
        veth(node_ns, "rvt1", ns1, "far0"),
        veth(node_ns, "rvt2", ns2, "far0"),
    ):
        # the node's own address (this host's kernel has no dummy links)
        node_ns.add_address("lo", "192.0.2.10/32")
        for ns, mine, peer, ifname in (
            (ns1, "169.254.10.1/30", "169.254.10.2/30", "rvt1"),
            (ns1, "2001:db8:ff::1/126", "2001:db8:ff::2/126", "rvt1"),
            (ns2, "169.254.20.1/30", "169.254.20.2/30", "rvt2"),
        ):
            node_ns.add_address(ifname, mine)
            ns.add_address("far0", peer)
        far1 = cfg.far_end(
            router_id="169.254.10.2",
            asn=65001,
            peers=[
                ("far0", "169.254.10.2", "169.254.10.1", 64512),
                ("far0", "2001:db8:ff::2", "2001:db8:ff::1", 64512),
            ],
            routes4=FAR1_ROUTES4,
            routes6=("2001:db8:100::/48", "::/0"),
        )
        far2 = cfg.far_end(
            router_id="169.254.20.2",
            asn=65002,
            peers=[("far0", "169.254.20.2", "169.254.20.1", 64512)],
            routes4=("203.0.113.0/24",),
        )
        initial = "router id 192.0.2.10;\nprotocol device {}\n"
        (tmp_path / "node" / "bird").mkdir(parents=True)
        with (
            running(ns1, tmp_path / "far1", far1) as b1,
            running(ns2, tmp_path / "far2", far2) as b2,
            running(node_ns, tmp_path / "node", initial) as nb,
        ):
            writer = BirdConfigWriter(tmp_path / "node" / "bird", BirdClient(nb.socket))
            node = Node(node_ns, nb, writer)
            yield node, Site(ns1, b1), Site(ns2, b2)


def _up(*names: str) -> Callable[[dict[str, BgpSessionFacts]], bool]:
    return lambda s: all(n in s and s[n].established for n in names)


def test_sessions_establish_and_only_allowed_prefixes_reach_the_kernel(
    lab: tuple[Node, Site, Site],
) -> None:
    node, _, _ = lab
    assert node.apply(T1_V4, T1_V6, T2_V4) is True
    # the same text again: nothing written, BIRD not asked
    assert node.apply(T1_V4, T1_V6, T2_V4) is False
    seen = node.wait("sessions Established", _up("bgp4_rvt1", "bgp6_rvt1", "bgp4_rvt2"))
    seen = node.wait(
        "all prefixes counted",
        lambda s: s["bgp4_rvt1"].received == len(FAR1_ROUTES4) and s["bgp6_rvt1"].received == 2,
    )
    t1 = seen["bgp4_rvt1"]
    # accepted: the /24 and the /25; refused: default, the node's network, tenant 2's prefix
    assert (t1.received, t1.accepted, t1.refused) == (5, 2, 3)
    assert (seen["bgp6_rvt1"].accepted, seen["bgp6_rvt1"].refused) == (1, 1)
    assert seen["bgp4_rvt2"].accepted == 1
    routes = node.wait_routes(
        4,
        {
            ("198.51.100.0/24", "rvt1", "bird", cfg.NODE_METRIC),
            ("198.51.100.128/25", "rvt1", "bird", cfg.NODE_METRIC),
            ("203.0.113.0/24", "rvt2", "bird", cfg.NODE_METRIC),
        },
    )
    bird_routes = {(dst, dev) for dst, dev, proto, _ in routes if proto == "bird"}
    for refused in ("default", "192.0.2.0/24"):
        assert not any(dst == refused for dst, _ in bird_routes), routes
    assert ("203.0.113.0/24", "rvt1") not in bird_routes
    routes6 = node.wait_routes(6, {("2001:db8:100::/48", "rvt1", "bird", cfg.NODE_METRIC)})
    assert not any(dst == "default" and proto == "bird" for dst, _, proto, _ in routes6)


def test_adding_a_tunnel_restarts_no_other_session(
    lab: tuple[Node, Site, Site], tmp_path: Path
) -> None:
    node, _, _ = lab
    node.apply(T1_V4, T2_V4)
    before = node.wait("sessions Established", _up("bgp4_rvt1", "bgp4_rvt2"))
    with netns("bgpc") as ns3, veth(node.ns, "rvt3", ns3, "far0"):
        node.ns.add_address("rvt3", "169.254.30.1/30")
        ns3.add_address("far0", "169.254.30.2/30")
        far3 = cfg.far_end(
            router_id="169.254.30.2",
            asn=65003,
            peers=[("far0", "169.254.30.2", "169.254.30.1", 64512)],
            routes4=("198.51.100.64/26",),
        )
        with running(ns3, tmp_path / "far3", far3):
            assert node.apply(T1_V4, T2_V4, T3_V4) is True
            after = node.wait("the new session Established", _up("bgp4_rvt3"))
            for name in ("bgp4_rvt1", "bgp4_rvt2"):
                assert after[name].established
                assert after[name].since == before[name].since is not None
                assert after[name].since_text == before[name].since_text


def test_prefix_limit_stops_only_that_session(lab: tuple[Node, Site, Site]) -> None:
    node, site1, _ = lab
    limited = cfg.Session(**{**T1_V4.__dict__, "max_prefixes": 2})
    node.apply(limited, T2_V4)
    before = node.wait("sessions Established", _up("bgp4_rvt1", "bgp4_rvt2"))
    assert before["bgp4_rvt1"].accepted <= 2
    # the far end now sends a third acceptable prefix: over the limit
    answer = site1.bird.reconfigure(
        site1.bird.config.replace("route 0.0.0.0/0 blackhole;", "route 198.51.100.64/26 blackhole;")
    )
    assert "Reconfigured" in answer, answer
    # the protocol passes through "flush" (its routes withdrawn) on its way to "down"
    after = node.wait(
        "the limit stopping the session",
        lambda s: s["bgp4_rvt1"].prefix_limit and s["bgp4_rvt1"].state == "down",
    )
    t1 = after["bgp4_rvt1"]
    assert t1.state == "down" and t1.bgp_state == "Down" and not t1.established
    assert "Route limit exceeded" in t1.last_error
    # its routes left the kernel; tenant 2's session and route did not move
    deadline = time.monotonic() + SESSION_WAIT_S
    while any(d.startswith("198.51.100.") and p == "bird" for d, _, p, _ in node.route_keys(4)):
        assert time.monotonic() < deadline, node.route_keys(4)
        time.sleep(0.2)
    assert after["bgp4_rvt2"].established
    assert after["bgp4_rvt2"].since == before["bgp4_rvt2"].since
    assert ("203.0.113.0/24", "rvt2", "bird", cfg.NODE_METRIC) in node.route_keys(4)


USER_ROUTES = ("198.51.100.240/28", "203.0.113.200/29")
SCAN_S = 2


def _user_routes(node: Node, metric: int) -> set[str]:
    return {d for d, _, p, m in node.route_keys(4) if p == "bird" and m == metric} & set(
        USER_ROUTES
    )


def _after_scans(node: Node, metric: int) -> set[str]:
    """The user's routes after three kernel scans of routevpn's BIRD (scan time 2 s)."""
    time.sleep(3 * SCAN_S + 1)
    return _user_routes(node, metric)


def test_a_users_bird_with_its_own_metric_is_left_alone(
    lab: tuple[Node, Site, Site], tmp_path: Path
) -> None:
    node, _, _ = lab
    node.apply(T1_V4, scan=SCAN_S)
    node.wait("session Established", _up("bgp4_rvt1"))
    user = cfg.user_bird(USER_ROUTES, metric=100)
    with running(node.ns, tmp_path / "user", user, name="user"):
        deadline = time.monotonic() + SESSION_WAIT_S
        while _user_routes(node, 100) != set(USER_ROUTES):
            assert time.monotonic() < deadline, node.route_keys(4)
            time.sleep(0.2)
        # routevpn's BIRD scans the kernel table and reconfigures (a tunnel added)
        assert _after_scans(node, 100) == set(USER_ROUTES)
        assert node.apply(T1_V4, T2_V4, scan=SCAN_S) is True
        node.wait("the second session Established", _up("bgp4_rvt2"))
        assert _after_scans(node, 100) == set(USER_ROUTES)
        # and routevpn's own routes are where they were
        assert ("198.51.100.0/24", "rvt1", "bird", cfg.NODE_METRIC) in node.route_keys(4)


def test_a_users_bird_at_routevpns_metric_loses_its_routes(
    lab: tuple[Node, Site, Site], tmp_path: Path
) -> None:
    """Why the metric must differ: BIRD's kernel protocol owns every `proto bird` route of
    its own metric in its table and deletes those it did not export at its next scan."""
    node, _, _ = lab
    node.apply(T1_V4, scan=SCAN_S)
    node.wait("session Established", _up("bgp4_rvt1"))
    for dst in USER_ROUTES:
        # what a second BIRD set to routevpn's metric would install
        node.ns.ip(
            "route", "add", "blackhole", dst, "proto", "bird", "metric", str(cfg.NODE_METRIC)
        )
    node.ns.ip("route", "add", "blackhole", "192.0.2.128/25", "proto", "bird")
    assert _after_scans(node, cfg.NODE_METRIC) == set()
    # metric 0 (none given) is not BIRD's metric either: left alone
    assert ("192.0.2.128/25", "", "bird", 0) in {
        (d, dev, p, m) for d, dev, p, m in node.route_keys(4)
    }


def _rendered(*plans: BgpPlan) -> str:
    return render(plans, BirdSettings(router_id=ipaddress.IPv4Address("192.0.2.10"), scan_time=2))


def _plan(s: cfg.Session, forbidden: tuple[str, ...] = FORBIDDEN) -> BgpPlan:
    peer = ipaddress.ip_address(s.peer)
    return BgpPlan(
        ref="tenant-a/site-b",
        protocol=naming.bgp_protocol(s.interface, peer.version),
        interface=s.interface,
        local_address=ipaddress.ip_address(s.local),
        peer_address=peer,
        local_asn=s.local_asn,
        peer_asn=s.peer_asn,
        accept=tuple(ipaddress.ip_network(n) for n in s.accept),
        forbidden=tuple(
            n for n in map(ipaddress.ip_network, forbidden) if n.version == peer.version
        ),
        hold_time=9,
    )


def test_the_rendered_configuration_through_the_writer(lab: tuple[Node, Site, Site]) -> None:
    """routevpn's own config (`bird_config.render`), applied and read back as the agent does."""
    node, _, _ = lab
    plans = (_plan(T1_V4), _plan(T1_V6), _plan(T2_V4, ()))
    assert asyncio.run(node.writer_apply(_rendered(*plans))) is True
    names = [p.protocol for p in plans]
    seen = node.wait("rendered sessions Established", _up(*names))
    seen = node.wait("prefixes counted", lambda s: s[names[0]].received == len(FAR1_ROUTES4))
    v4 = seen[names[0]]
    assert (v4.received, v4.accepted, v4.refused) == (5, 2, 3)
    assert v4.since is not None, "timeformat protocol iso long: since carries its date"
    routes = node.wait_routes(
        4,
        {
            ("198.51.100.0/24", "rvt1", "bird", cfg.NODE_METRIC),
            ("203.0.113.0/24", "rvt2", "bird", cfg.NODE_METRIC),
        },
    )
    assert not any(d in ("default", "192.0.2.0/24") and p == "bird" for d, _, p, _ in routes)
