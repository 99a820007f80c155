"""The lab's hand-written BIRD configurations (support.birdconf) on real BIRD daemons in
namespaces: the lab tests and docs/ospf.md rely on them, and a lab run is too slow a
place to find a typo in one. The BGP far end peers with what the agent renders.

The link is a veth with multicast off (a VTI has no IFF_MULTICAST either; this kernel has
no VTI): OSPF point-to-point must still form its adjacency, and the node's BIRD must put
the far prefix into the kernel at the user's own metric, not the tunnel's inside prefix.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from routevpn.api import naming
from routevpn.dataplane.bird_config import BirdSettings, render
from routevpn.dataplane.plan import BgpPlan
from support import birdconf
from support.bird import BIRD, running
from support.kube import wait_until
from support.netns import Netns, netns, veth
from support.tiers import missing

pytestmark = pytest.mark.timeout(180)

NODE4, FAR4, INSIDE4 = "169.254.40.1", "169.254.40.2", "169.254.40.0/30"
NODE6, FAR6, BEHIND6 = "2001:db8:40::", "2001:db8:40::1", "2001:db8:b::/64"
BEHIND4, BEHIND_GW = "203.0.113.128/25", "203.0.113.2"  # the far network, its router


@pytest.fixture
def link(node_ns: Netns) -> Iterator[tuple[Netns, Netns]]:
    """node ─tun0── far ─lan── behind (the far network's router); tun0 without multicast
    at both ends, like a VTI."""
    if not BIRD.exists():
        missing("BIRD 2 (Debian bird2)")
    with (
        netns("rvbf") as far,
        netns("rvbb") as behind,
        veth(node_ns, "tun0", far, "tun0"),
        veth(far, "lan", behind, "lan"),
    ):
        for ns, addr in ((node_ns, NODE4), (far, FAR4)):
            ns.ip("link", "set", "tun0", "multicast", "off")
            ns.add_address("tun0", f"{addr}/30")
        far.add_address("lan", "203.0.113.1/30")
        behind.add_address("lan", f"{BEHIND_GW}/30")
        yield node_ns, far


def test_ospf_templates_form_an_adjacency_and_the_user_route_lands(
    link: tuple[Netns, Netns], tmp_path: Path
) -> None:
    node, far = link
    far_conf = birdconf.ospf_far_end(FAR4, "tun0", [(BEHIND4, BEHIND_GW)])
    user_conf = birdconf.ospf_user_node(NODE4, "tun0", INSIDE4)
    with (
        running(far, tmp_path / "far", far_conf),
        running(node, tmp_path / "node", user_conf) as user,
    ):
        wait_until(lambda: birdconf.ospf_full(user), timeout=90, interval=0.5, what="OSPF Full")

        def learned() -> str:
            return node.ip("route", "show", BEHIND4, "proto", "bird")

        wait_until(lambda: bool(learned()), timeout=60, interval=0.5, what=BEHIND4)
        route = learned()
        assert f"via {FAR4} dev tun0" in route, route
        assert f"metric {birdconf.USER_KERNEL_METRIC}" in route, route
        # the tunnel's own prefix stays the kernel's connected route only
        assert node.ip("route", "show", INSIDE4, "proto", "bird") == ""


def _agent_config(iface: str) -> str:
    """What the agent renders for one tunnel over `iface` with both families, BFD on."""
    sessions = (
        (NODE4, FAR4, BEHIND4),
        (NODE6, FAR6, BEHIND6),
    )
    plans = [
        BgpPlan(
            ref="lab/t",
            protocol=naming.bgp_protocol(iface, ip_address(peer).version),
            interface=iface,
            local_address=ip_address(local),
            peer_address=ip_address(peer),
            local_asn=64512,
            peer_asn=65001,
            accept=(ip_network(accept),),
            bfd=True,
            hold_time=9,
        )
        for local, peer, accept in sessions
    ]
    return render(plans, BirdSettings(router_id=ip_address(NODE4)))  # type: ignore[arg-type]


def test_bgp_far_end_template_peers_with_the_agents_config(
    link: tuple[Netns, Netns], tmp_path: Path
) -> None:
    """The lab's far end (eBGP, BFD, both families) against routevpn's rendered config:
    sessions and BFD up, the far networks in the node's kernel via the peer."""
    node, far = link
    for ns, addr in ((node, NODE6), (far, FAR6)):
        ns.add_address("tun0", f"{addr}/127")
    far.add_address("lan", "2001:db8:f1::1/64")
    far_conf = birdconf.bgp_far_end(
        FAR4,
        65001,
        64512,
        [birdconf.BgpPeer(FAR4, NODE4), birdconf.BgpPeer(FAR6, NODE6)],
        [(BEHIND4, BEHIND_GW), (BEHIND6, "2001:db8:f1::2")],
    )
    with (
        running(far, tmp_path / "far", far_conf),
        running(node, tmp_path / "node", _agent_config("tun0")) as bird,
    ):

        def up() -> bool:
            out = bird.birdc("show protocols")
            return out.count("Established") == 2

        wait_until(up, timeout=90, interval=0.5, what="both sessions Established")
        for prefix, via in ((BEHIND4, FAR4), (BEHIND6, FAR6)):
            fam = "-6" if ":" in prefix else "-4"

            def learned(fam: str = fam, prefix: str = prefix) -> str:
                return node.ip(fam, "route", "show", prefix, "proto", "bird")

            wait_until(learned, timeout=30, interval=0.5, what=prefix)
            assert f"via {via} dev tun0" in learned(), prefix
        sessions = bird.birdc("show bfd sessions")
        assert sessions.count(" Up ") == 2, sessions
