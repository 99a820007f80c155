"""The rendered BIRD configuration against a real BIRD and a real far end, in throwaway
namespaces: what the import filter lets into the kernel, what the export filter sends, and
another daemon's routes left alone.

Two namespaces joined by a veth pair standing in for the tunnel (`vti1`, inside addresses
169.254.10.1/30 and .2). The node runs BIRD on `render()`'s file; the far end runs a BIRD
configured by hand that advertises a mix of acceptable and hostile prefixes. Then the
node's kernel table is read: only what the plan allows is there, via the far end on
`vti1`, with BIRD's own metric.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from routevpn.api import naming
from routevpn.dataplane.bird_config import BirdSettings, render
from routevpn.dataplane.plan import BgpPlan
from routevpn.dataplane.safety import HostAddress, bgp_forbidden
from support.kube import wait_until
from support.netns import Netns, have_root, netns, veth
from support.tiers import missing

pytestmark = pytest.mark.netns

NET = ipaddress.ip_network
IP = ipaddress.ip_address
#: What the far end advertises, and whether the node must install it.
FAR_END_ROUTES = {
    "198.51.100.0/26": True,  # within accept
    "198.51.100.128/26": False,  # within accept, inside a protected network
    "192.0.2.128/25": True,  # within accept
    "192.0.2.0/25": False,  # within accept, but holds the node's own address 192.0.2.1
    "203.0.113.0/24": False,  # outside accept
    "0.0.0.0/0": False,  # a default route, not listed in accept
}
ADVERTISED = "203.0.113.64/26"
FAR_END_CONF = """
router id 169.254.10.2;
protocol device {{ }}
protocol static far_routes {{
  ipv4;
{routes}
}}
protocol bgp node {{
  local 169.254.10.2 as 65001;
  neighbor 169.254.10.1 as 64512;
  direct;
  hold time 9;
  connect retry time 1;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
protocol kernel {{
  ipv4 {{ export where source = RTS_BGP; }};
}}
"""


def bird_binary() -> str:
    if not have_root():
        missing("root (network namespaces)")
    found = shutil.which("bird") or ("/usr/sbin/bird" if Path("/usr/sbin/bird").exists() else "")
    if not found:
        missing("bird (Debian bird2): apt-get install bird2")
    return found


@contextmanager
def bird(ns: Netns, conf: Path) -> Iterator[None]:
    """BIRD in `ns` on `conf` (foreground; `ip netns exec` execs it, so the PID is BIRD's),
    stopped by its PID on exit."""
    log = (conf.parent / f"{conf.stem}.log").open("w")
    sock = conf.parent / f"{conf.stem}.ctl"
    proc = subprocess.Popen(
        ns.argv(bird_binary(), "-f", "-c", str(conf), "-s", str(sock)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


def bird_routes(ns: Netns) -> dict[str, str]:
    """IPv4 routes in `ns`'s main table installed by a BIRD: destination → the rest."""
    out = ns.ip("-4", "route", "show", "proto", "bird")
    routes = {}
    for line in out.splitlines():
        dst, _, rest = line.partition(" ")
        routes["0.0.0.0/0" if dst == "default" else dst] = rest
    return routes


def holding(routes: dict[str, str], wanted: set[str]) -> dict[str, str] | None:
    """`routes` once they hold every destination of `wanted`, else None (poll again)."""
    return routes if wanted <= set(routes) else None


def node_plan() -> BgpPlan:
    forbidden = bgp_forbidden(
        [HostAddress("uplink", ipaddress.ip_interface("192.0.2.1/32"))],
        protected=[NET("198.51.100.128/25")],  # a "pod network" the agent was told about
    )
    return BgpPlan(
        ref="team-a/far",
        protocol=naming.bgp_protocol("vti1", 4),
        interface="vti1",
        local_address=IP("169.254.10.1"),
        peer_address=IP("169.254.10.2"),
        local_asn=64512,
        peer_asn=65001,
        accept=(NET("198.51.100.0/24"), NET("192.0.2.0/24")),
        advertise=(NET(ADVERTISED),),
        forbidden=tuple(n for n in forbidden if n.version == 4),
        hold_time=9,
    )


def test_only_what_the_plan_allows_reaches_the_kernel_and_other_routes_stay(
    tmp_path: Path,
) -> None:
    bird_binary()
    with netns("rvbn") as node, netns("rvbf") as far, veth(node, "vti1", far, "eth0"):
        node.ip("link", "add", "uplink", "type", "bridge")  # no dummy module here
        node.ip("link", "set", "uplink", "up")
        node.add_address("uplink", "192.0.2.1/32")
        node.add_address("vti1", "169.254.10.1/30")
        far.add_address("eth0", "169.254.10.2/30")
        # A route another daemon (the user's own BIRD, metric 50) installed on the tunnel.
        node.ip("route", "add", "203.0.113.0/25", "via", "169.254.10.2", "dev", "vti1",
                "proto", "bird", "metric", "50")  # fmt: skip
        settings = BirdSettings(router_id=ipaddress.IPv4Address("192.0.2.1"), scan_time=1)
        (tmp_path / "node.conf").write_text(render([node_plan()], settings))
        routes = "\n".join(f"  route {n} blackhole;" for n in FAR_END_ROUTES)
        (tmp_path / "far.conf").write_text(FAR_END_CONF.format(routes=routes))
        with bird(node, tmp_path / "node.conf"), bird(far, tmp_path / "far.conf"):
            wanted = {n for n, ok in FAR_END_ROUTES.items() if ok}
            got = wait_until(
                lambda: holding(bird_routes(node), wanted),
                timeout=120,
                what=f"the node's BIRD installs {sorted(wanted)}",
            )
            learned = wait_until(
                lambda: holding(bird_routes(far), {ADVERTISED}),
                timeout=120,
                what=f"the far end learns {ADVERTISED}",
            )
            # BIRD's kernel protocol prunes the routes it takes for its own at its first
            # scan, before it installs anything: the learned routes being there means the
            # other daemon's route has been judged. (Scans repeat every second here.)
            got = bird_routes(node)
        assert set(got) == wanted | {"203.0.113.0/25"}, got
        for dst in wanted:
            assert got[dst].startswith("via 169.254.10.2 dev vti1"), got[dst]
            assert "metric 32" in got[dst], got[dst]
        # The other daemon's route survived BIRD's scans: another metric, not BIRD's to own.
        assert "metric 50" in got["203.0.113.0/25"]
        # The far end learned what the node advertises and nothing else of the node's.
        assert set(learned) == {ADVERTISED}, learned
        # A stopped BIRD takes its routes with it (persist off), and leaves the other's.
        assert set(bird_routes(node)) == {"203.0.113.0/25"}
