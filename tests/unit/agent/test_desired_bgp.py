"""spec.bgp → BgpPlans: one session per peer address, its family only, defaults applied.

The example (examples/bgp/tunnel.yaml) goes all the way: spec → plans → bird.conf →
BIRD's own parser.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from routevpn.agent.desired import Blocked
from routevpn.agent.desired_bgp import build_bgp_plans
from routevpn.api.conditions import Reason
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane import plan as p
from routevpn.dataplane.bird_config import BirdSettings, render
from routevpn.dataplane.safety import HostAddress, HostRoute, bgp_forbidden, outranked_defaults
from support.tiers import missing

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "bgp" / "tunnel.yaml"
STATUS = {"node": "node-a", "interface": {"name": "vti4096", "type": "vti", "key": 4096}}
net = ipaddress.ip_network
ip = ipaddress.ip_address


def raw_example() -> dict[str, Any]:
    docs = yaml.safe_load_all(EXAMPLE.read_text())
    obj: dict[str, Any] = next(d for d in docs if d and d.get("kind") == "VpnTunnel")
    obj["metadata"]["namespace"] = "prod"
    return obj


def tunnel(status: dict[str, Any] | None = STATUS, **bgp: Any) -> VpnTunnel:
    obj = raw_example()
    obj["spec"]["bgp"].update(bgp)
    obj["spec"]["bgp"] = {k: v for k, v in obj["spec"]["bgp"].items() if v is not None}
    if status is not None:
        obj["status"] = status
    return VpnTunnel.from_wire(obj)


FORBIDDEN = bgp_forbidden(
    [HostAddress("eth0", ipaddress.ip_interface("192.0.2.1/24"))],
    ike_peers=[ip("203.0.113.1")],
    protected=[net("203.0.113.224/27"), net("2001:db8:fff0::/64")],
)


def test_the_example_gives_one_session_per_peer_address_each_of_its_family() -> None:
    plans = build_bgp_plans(tunnel(), FORBIDDEN, local_asn=64600)
    assert isinstance(plans, tuple)
    v4, v6 = plans
    assert v4 == p.BgpPlan(
        ref="prod/dc-east",
        protocol="bgp4_vti4096",
        interface="vti4096",
        local_address=ip("169.254.10.1"),
        peer_address=ip("169.254.10.2"),
        local_asn=64600,  # the agent's default: the example leaves localASN out
        peer_asn=65001,
        accept=(net("198.51.100.0/24"),),
        advertise=(net("192.0.2.128/25"),),
        forbidden=tuple(n for n in FORBIDDEN if n.version == 4),
        hold_time=30,
        bfd=True,
        max_prefixes=50,
        table=254,
    )
    assert (v6.protocol, v6.local_address, v6.peer_address) == (
        "bgp6_vti4096",
        ip("2001:db8:ff::1"),
        ip("2001:db8:ff::2"),
    )
    assert v6.accept == (net("2001:db8:200::/48"),)
    assert v6.advertise == (net("2001:db8:100::/48"),)
    assert all(n.version == 6 for n in v6.forbidden) and net("2001:db8:fff0::/64") in v6.forbidden


def test_spec_values_win_over_defaults() -> None:
    (v4, _) = build_bgp_plans(  # type: ignore[misc]
        tunnel(localASN=65100, holdTime=9, bfd=False, table=100, maxPrefixes=None)
    )
    assert (v4.local_asn, v4.hold_time, v4.bfd, v4.table, v4.max_prefixes) == (
        65100, 9, False, 100, 100,
    )  # fmt: skip


def test_no_bgp_no_interface_yet_no_sessions() -> None:
    obj = raw_example()
    del obj["spec"]["bgp"]
    obj["status"] = STATUS
    assert build_bgp_plans(VpnTunnel.from_wire(obj)) == ()
    assert build_bgp_plans(tunnel(status=None)) == ()


def test_an_interface_name_bird_cannot_take_blocks_the_sessions() -> None:
    bad = {"node": "node-a", "interface": {"name": 'vti";x', "type": "vti", "key": 1}}
    made = build_bgp_plans(tunnel(status=bad))
    assert isinstance(made, Blocked) and made.reason is Reason.INVALID_SPEC
    assert "prod/dc-east" in made.message


def test_forbidden_holds_what_static_routes_may_not_touch() -> None:
    assert net("127.0.0.0/8") in FORBIDDEN and net("169.254.0.0/16") in FORBIDDEN
    assert net("192.0.2.1/32") in FORBIDDEN  # the node's own address, as a host
    assert net("203.0.113.1/32") in FORBIDDEN  # a tunnel's IKE peer: no loop over BGP
    assert net("203.0.113.224/27") in FORBIDDEN
    # a host inside a listed network adds nothing; the result is sorted and unique
    inner = bgp_forbidden([HostAddress("lo", ipaddress.ip_interface("127.0.0.1/8"))])
    assert net("127.0.0.1/32") not in inner
    assert list(FORBIDDEN) == sorted(
        set(FORBIDDEN), key=lambda n: (n.version, int(n.network_address), n.prefixlen)
    )


def test_the_example_renders_a_config_bird_parses(tmp_path: Path) -> None:
    plans = build_bgp_plans(tunnel(), FORBIDDEN)
    assert isinstance(plans, tuple)
    text = render(plans, BirdSettings(router_id=ipaddress.IPv4Address("192.0.2.1")))
    assert "neighbor 2001:db8:ff::2 as 65001;" in text
    bird = shutil.which("bird") or "/usr/sbin/bird"
    if not Path(bird).exists():
        missing("bird (Debian bird2): apt-get install bird2")
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    res = subprocess.run(
        [bird, "-p", "-c", str(conf)], capture_output=True, text=True, check=False, timeout=60
    )
    assert res.returncode == 0, res.stderr


def test_a_learned_default_route_never_outranks_the_nodes_own() -> None:
    routes = [
        HostRoute(net("0.0.0.0/0"), "eth0", metric=100),  # DHCP's: BIRD's 32 would win
        HostRoute(net("::/0"), "eth0", metric=0, table=100),  # the node's own wins in 100
        HostRoute(net("::/0"), "vti9", metric=32, proto=12),  # routevpn's BIRD: not the node's
        HostRoute(net("::/0"), "vti8", metric=2000, proto=157),  # routevpn's static route
        HostRoute(net("203.0.113.0/24"), "eth0", metric=500),  # not a default route
    ]
    outranked = outranked_defaults(routes, kernel_metric=32)
    assert outranked == {(4, 254)}
    wide = tunnel(accept=["0.0.0.0/0", "198.51.100.0/24", "::/0"])
    v4, v6 = build_bgp_plans(wide, FORBIDDEN, outranked=outranked)  # type: ignore[misc]
    assert v4.accept == (net("198.51.100.0/24"),)  # the default left out: BIRD refuses it
    assert v6.accept == (net("::/0"),)
    assert "net.len = 0 then reject" in render(
        [v4], BirdSettings(ipaddress.IPv4Address("192.0.2.1"))
    )


def test_forbidden_keeps_exactly_what_no_other_holds_on_a_busy_node() -> None:
    """The wide-only containment check equals the all-pairs one: node addresses inside a
    protected network or another wide one go, a host address twice stays once."""
    addrs = [HostAddress(f"x{i}", ipaddress.ip_interface(f"2001:db8:f0:{i:x}::/127"))
             for i in range(40)]  # fmt: skip
    addrs += [
        HostAddress("eth0", ipaddress.ip_interface("198.51.100.7/24")),
        HostAddress("eth1", ipaddress.ip_interface("198.51.100.7/24")),
        HostAddress("lo", ipaddress.ip_interface("127.0.0.1/8")),
        HostAddress("eth0", ipaddress.ip_interface("fe80::1/64")),
    ]
    protected = [net("2001:db8:f0::/60"), net("198.51.100.0/24"), net("198.51.100.0/25")]
    got = bgp_forbidden(addrs, [ip("203.0.113.9")], protected)
    every = set(got) | {net(a.address.ip) for a in addrs} | set(protected)

    def inside(n: p.IPNetwork, o: p.IPNetwork) -> bool:
        return o.version == n.version and n.subnet_of(o)  # type: ignore[arg-type]

    # none kept lies inside another kept one, and everything lies inside one kept
    assert all(not any(o != n and inside(n, o) for o in got) for n in got)
    assert all(any(inside(n, o) for o in got) for n in every)
    assert net("2001:db8:f0:f::/128") not in got  # inside 2001:db8:f0::/60
    assert net("2001:db8:f0:20::/128") in got and net("203.0.113.9/32") in got
    assert net("198.51.100.0/24") in got and net("198.51.100.0/25") not in got
