"""The lab's hand-written BIRD configurations (support.birdconf) on real BIRD daemons in
namespaces: the lab tests and docs/ospf.md rely on them, and a lab run is too slow a
place to find a typo in one.

The link is a veth with multicast off (a VTI has no IFF_MULTICAST either; this kernel has
no VTI): OSPF point-to-point must still form its adjacency, and the node's BIRD must put
the far prefix into the kernel at the user's own metric, not the tunnel's inside prefix.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import birdconf
from support.bird import BIRD, running
from support.kube import wait_until
from support.netns import Netns, netns, veth
from support.tiers import missing

pytestmark = pytest.mark.timeout(180)

NODE4, FAR4, INSIDE4 = "169.254.40.1", "169.254.40.2", "169.254.40.0/30"
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


def test_bgp_far_end_template_parses(tmp_path: Path) -> None:
    if not BIRD.exists():
        missing("BIRD 2 (Debian bird2)")
    conf = birdconf.bgp_far_end(
        FAR4,
        65001,
        64512,
        [birdconf.BgpPeer(FAR4, NODE4), birdconf.BgpPeer("2001:db8:40::1", "2001:db8:40::")],
        [(BEHIND4, BEHIND_GW), ("2001:db8:b::/64", "2001:db8:f1::2")],
    )
    path = tmp_path / "bird.conf"
    path.write_text(conf)
    out = subprocess.run([str(BIRD), "-p", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + conf
