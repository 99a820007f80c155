"""The rendered BIRD configuration against a real BIRD and a real far end, in throwaway
namespaces: what the import filter lets into the kernel, what the export filter sends, and
another daemon's routes left alone.

Two namespaces joined by a veth pair standing in for the tunnel (`vti1`, inside addresses
169.254.10.1/30 and .2, 2001:db8:ff::1/126 and ::2). The node runs BIRD on `render()`'s
file; the far end runs a BIRD configured by hand that advertises a mix of acceptable and
hostile prefixes, IPv4 and IPv6. Then the node's kernel table is read: only what the plan
allows is there, via the far end on `vti1`, with BIRD's own metric. Then the import limit
(the session stopped, retried at the next `configure`, back when the limit is raised) and
BFD (Up at 100 ms x 5).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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
  bfd on;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
}}
protocol kernel {{
  ipv4 {{ export where source = RTS_BGP; }};
}}
protocol bfd {{ }}
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


def bird_routes(ns: Netns, version: int = 4) -> dict[str, str]:
    """Routes of `version` in `ns`'s main table installed by a BIRD: destination → the rest."""
    out = ns.ip(f"-{version}", "route", "show", "proto", "bird")
    routes = {}
    for line in out.splitlines():
        dst, _, rest = line.partition(" ")
        routes[("0.0.0.0/0" if version == 4 else "::/0") if dst == "default" else dst] = rest
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


@dataclass
class Pair:
    """The two namespaces, and the node's BIRD routes once both BIRDs have stopped."""

    node: Netns
    far: Netns
    after_stop: dict[str, str] = field(default_factory=dict)


@contextmanager
def node_and_far_end(
    tmp_path: Path, plans: list[BgpPlan], far_conf: str | None = None
) -> Iterator[Pair]:
    """The node (BIRD on `render(plans)`, its addresses 192.0.2.1 and 2001:db8:0:1::1 on
    `uplink`) and the far end (BIRD on `far_conf`, by default advertising FAR_END_ROUTES),
    joined by `vti1`; both BIRDs running."""
    bird_binary()
    with netns("rvbn") as node, netns("rvbf") as far, veth(node, "vti1", far, "eth0"):
        node.ip("link", "add", "uplink", "type", "bridge")  # no dummy module here
        node.ip("link", "set", "uplink", "up")
        node.add_address("uplink", "192.0.2.1/32")
        node.add_address("uplink", "2001:db8:0:1::1/128")
        node.add_address("vti1", "169.254.10.1/30")
        node.add_address("vti1", "2001:db8:ff::1/126")
        far.add_address("eth0", "169.254.10.2/30")
        far.add_address("eth0", "2001:db8:ff::2/126")
        # A route another daemon (the user's own BIRD, metric 50) installed on the tunnel.
        node.ip("route", "add", "203.0.113.0/25", "via", "169.254.10.2", "dev", "vti1",
                "proto", "bird", "metric", "50")  # fmt: skip
        settings = BirdSettings(router_id=ipaddress.IPv4Address("192.0.2.1"), scan_time=1)
        (tmp_path / "node.conf").write_text(render(plans, settings))
        routes = "\n".join(f"  route {n} blackhole;" for n in FAR_END_ROUTES)
        (tmp_path / "far.conf").write_text(far_conf or FAR_END_CONF.format(routes=routes))
        pair = Pair(node, far)
        with bird(node, tmp_path / "node.conf"), bird(far, tmp_path / "far.conf"):
            yield pair
        pair.after_stop.update(bird_routes(node))


def birdc(sock: Path, *command: str) -> str:
    """A command on BIRD's control socket (birdc: the test's view, not the agent's)."""
    birdc_bin = shutil.which("birdc") or "/usr/sbin/birdc"
    res = subprocess.run(
        [birdc_bin, "-s", str(sock), *command], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    return res.stdout


def test_only_what_the_plan_allows_reaches_the_kernel_and_other_routes_stay(
    tmp_path: Path,
) -> None:
    wanted = {n for n, ok in FAR_END_ROUTES.items() if ok}
    with node_and_far_end(tmp_path, [node_plan()]) as pair:
        node, far = pair.node, pair.far
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
        assert "metric 157" in got[dst], got[dst]
    # The other daemon's route survived BIRD's scans: another metric, not BIRD's to own.
    assert "metric 50" in got["203.0.113.0/25"]
    # The far end learned what the node advertises and nothing else of the node's.
    assert set(learned) == {ADVERTISED}, learned
    # A stopped BIRD takes its routes with it (persist off), and leaves the other's.
    assert set(pair.after_stop) == {"203.0.113.0/25"}, pair.after_stop


def stopped(shown: str) -> str | None:
    """`show protocols all` output once the protocol line says `down`, else None."""
    lines = [line.split() for line in shown.splitlines()]
    return shown if any(len(w) > 3 and w[3] == "down" for w in lines) else None


def test_a_far_end_over_max_prefixes_has_its_session_stopped(tmp_path: Path) -> None:
    # Two acceptable prefixes against a limit of one.
    plan = replace(node_plan(), max_prefixes=1)
    sock = tmp_path / "node.ctl"
    with node_and_far_end(tmp_path, [plan]) as pair:
        state = wait_until(
            lambda: stopped(birdc(sock, "show", "protocols", "all", plan.protocol)),
            timeout=120,
            what="the session stopped by its import limit",
        )
        assert "Route limit exceeded" in state and "Import limit:   1 [HIT]" in state, state
        # BIRD flushes the session's routes as it goes down: none of them is left.
        wait_until(
            lambda: set(bird_routes(pair.node)) == {"203.0.113.0/25"},
            timeout=60,
            what="no learned route left in the kernel",
        )
        # BIRD re-enables a session its limit stopped at every `configure`, the same file
        # too: the session tries again, and stops again while the far end is over.
        assert "Reconfigured" in birdc(sock, "configure"), "configure failed"
        assert not stopped(birdc(sock, "show", "protocols", "all", plan.protocol))
        again = wait_until(
            lambda: stopped(birdc(sock, "show", "protocols", "all", plan.protocol)),
            timeout=120,
            what="the session stopped again by its import limit",
        )
        assert "Route limit exceeded" in again, again
        # The tenant raises maxPrefixes: the session's text changes, BIRD restarts it.
        settings = BirdSettings(router_id=ipaddress.IPv4Address("192.0.2.1"), scan_time=1)
        (tmp_path / "node.conf").write_text(render([replace(plan, max_prefixes=10)], settings))
        assert "Reconfigured" in birdc(sock, "configure"), "configure failed"
        wanted = {n for n, ok in FAR_END_ROUTES.items() if ok}
        wait_until(
            lambda: holding(bird_routes(pair.node), wanted),
            timeout=120,
            what="the session back, its routes installed",
        )


def test_bfd_comes_up_with_the_far_end(tmp_path: Path) -> None:
    plan = replace(node_plan(), bfd=True)
    with node_and_far_end(tmp_path, [plan]):
        shown = wait_until(
            lambda: bfd_up(birdc(tmp_path / "node.ctl", "show", "bfd", "sessions")),
            timeout=120,
            what="a BFD session Up with the far end",
        )
    assert "169.254.10.2" in shown and "vti1" in shown, shown


def bfd_up(shown: str) -> str | None:
    """`show bfd sessions` once a session to the far end is Up, else None."""
    return (
        shown if any("169.254.10.2" in ln and " Up " in ln for ln in shown.splitlines()) else None
    )


#: The IPv6 far end: what it advertises, and whether the node must install it.
FAR_END_ROUTES6 = {
    "2001:db8:200::/56": True,  # within accept
    "2001:db8:200:8000::/56": False,  # within accept, inside a protected network
    "2001:db8:0:2::/64": True,  # within accept
    "2001:db8:0:1::/64": False,  # within accept, holds the node's address 2001:db8:0:1::1
    "2001:db8:0:3::/64": False,  # within accept, holds a tunnel's IKE peer
    "2001:db8:300::/48": False,  # outside accept
    "::/0": False,  # a default route, not listed in accept
}
FAR_END_CONF6 = """
router id 169.254.10.2;
protocol device {{ }}
protocol static far_routes6 {{
  ipv6;
{routes}
}}
protocol bgp node6 {{
  local 2001:db8:ff::2 as 65001;
  neighbor 2001:db8:ff::1 as 64512;
  direct;
  hold time 9;
  connect retry time 1;
  ipv6 {{ import all; export where source = RTS_STATIC; }};
}}
protocol kernel {{
  ipv6 {{ export where source = RTS_BGP; }};
}}
"""


def test_ipv6_only_what_the_plan_allows_reaches_the_kernel(tmp_path: Path) -> None:
    forbidden = bgp_forbidden(
        [HostAddress("uplink", ipaddress.ip_interface("2001:db8:0:1::1/128"))],
        ike_peers=[IP("2001:db8:0:3::1")],
        protected=[NET("2001:db8:200:8000::/49")],
    )
    plan = replace(
        node_plan(),
        protocol=naming.bgp_protocol("vti1", 6),
        local_address=IP("2001:db8:ff::1"),
        peer_address=IP("2001:db8:ff::2"),
        accept=(NET("2001:db8:200::/48"), NET("2001:db8::/48")),
        advertise=(NET("2001:db8:100::/48"),),
        forbidden=tuple(n for n in forbidden if n.version == 6),
    )
    routes = "\n".join(f"  route {n} blackhole;" for n in FAR_END_ROUTES6)
    wanted = {n for n, ok in FAR_END_ROUTES6.items() if ok}
    with node_and_far_end(tmp_path, [plan], FAR_END_CONF6.format(routes=routes)) as pair:
        wait_until(
            lambda: holding(bird_routes(pair.node, 6), wanted),
            timeout=120,
            what=f"the node's BIRD installs {sorted(wanted)}",
        )
        learned = wait_until(
            lambda: holding(bird_routes(pair.far, 6), {"2001:db8:100::/48"}),
            timeout=120,
            what="the far end learns 2001:db8:100::/48",
        )
        got = bird_routes(pair.node, 6)
    assert set(got) == wanted, got
    for dst in wanted:
        assert got[dst].startswith("via 2001:db8:ff::2 dev vti1"), got[dst]
        assert "metric 157" in got[dst], got[dst]
    assert set(learned) == {"2001:db8:100::/48"}, learned


def test_a_far_end_flooding_refused_prefixes_has_its_session_stopped(tmp_path: Path) -> None:
    # One acceptable prefix, within maxPrefixes 1, and 1024 refused ones (link-local /32s,
    # outside accept): more than the receive limit (1 + 1000), though nothing over the
    # import limit is accepted.
    flood = [str(n) for n in NET("169.254.64.0/22").subnets(new_prefix=32)]
    flood.append("198.51.100.0/26")
    plan = replace(node_plan(), max_prefixes=1)
    routes = "\n".join(f"  route {n} blackhole;" for n in flood)
    sock = tmp_path / "node.ctl"
    with node_and_far_end(tmp_path, [plan], FAR_END_CONF.format(routes=routes)):
        state = wait_until(
            lambda: stopped(birdc(sock, "show", "protocols", "all", plan.protocol)),
            timeout=120,
            what="the session stopped by its receive limit",
        )
    assert "Receive limit:  1001 [HIT]" in state and "Import limit:   1\n" in state, state
