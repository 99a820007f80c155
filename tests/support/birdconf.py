"""Hand-written BIRD 2 configurations for the lab: the far ends' daemons, and the node's
own daemon as a user would configure it (docs/ospf.md shows the same text).

Text templates with a few typed parameters (router ids, ASNs, prefixes, next hops,
interface names): nothing here is generated from a VpnTunnel, these are the far end's
and the user's configurations, written by hand. Every value is parsed before it is
written (ipaddress objects, ints, a checked interface name), so a template can't be
turned into something else by its arguments.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .bird import Bird

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# A user's BIRD beside routevpn's: another kernel metric than routevpn's BIRD (157; BIRD's
# own default is 32). Two BIRDs that write the same table with the same metric delete
# each other's routes at every scan (docs/ospf.md).
USER_KERNEL_METRIC = 64
# BFD of the far ends: the slower end's intervals win (RFC 5880: each end sends no faster
# than the other requires), so these set the pace whatever the node asks for (100 ms).
# An emulated CPU on a loaded host stalls BIRD for several hundred ms: at 100 ms x 3
# (and 100 ms x 10) the lab's sessions flapped, "BFD session down", the host too.
BFD_INTERVAL_MS, BFD_MULTIPLIER = 300, 8


def _ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise ValueError(f"not an interface name: {name!r}")
    return name


def _net(prefix: str) -> IPNetwork:
    return ipaddress.ip_network(prefix)


def _addr(address: str) -> IPAddress:
    return ipaddress.ip_address(address)


def _statics(routes: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """IPv4 and IPv6 `route … via …;` lines of a static protocol."""
    lines: dict[int, list[str]] = {4: [], 6: []}
    for prefix, via in routes:
        net, hop = _net(prefix), _addr(via)
        if net.version != hop.version:
            raise ValueError(f"{prefix} via {via}: families differ")
        lines[net.version].append(f"    route {net} via {hop};")
    return "\n".join(lines[4]), "\n".join(lines[6])


def ospf_far_end(router_id: str, iface: str, routes: Sequence[tuple[str, str]]) -> str:
    """A far end's OSPFv2 over its tunnel interface (point-to-point), originating
    `routes` ((prefix, next hop) pairs, IPv4) as external routes. Its own kernel table is
    left as the hand-made set-up has it: no kernel protocol."""
    v4, _ = _statics(routes)
    return f"""\
log stderr all;
router id {ipaddress.IPv4Address(router_id)};
protocol device {{ }}
protocol static behind {{
  ipv4;
{v4}
}}
protocol ospf v2 far_ospf {{
  ipv4 {{ import none; export where proto = "behind"; }};
  area 0 {{
    interface "{_ifname(iface)}" {{ type ptp; }};
  }};
}}
"""


def ospf_user_node(router_id: str, iface: str, inside: str) -> str:
    """The node's own BIRD, as docs/ospf.md tells a user to write it: OSPFv2 over
    routevpn's interface `iface` (point-to-point), OSPF's routes to the kernel at a
    metric of its own, except the tunnel's `inside` prefix (the kernel's connected route
    already covers it)."""
    return f"""\
log stderr all;
router id {ipaddress.IPv4Address(router_id)};
protocol device {{ }}
protocol kernel {{
  metric {USER_KERNEL_METRIC};
  ipv4 {{
    import none;
    export filter {{
      if net ~ [ {ipaddress.IPv4Network(inside)} ] then reject;
      if source ~ [ RTS_OSPF, RTS_OSPF_IA, RTS_OSPF_EXT1, RTS_OSPF_EXT2 ] then accept;
      reject;
    }};
  }};
}}
protocol ospf v2 user_ospf {{
  ipv4 {{ import all; export none; }};
  area 0 {{
    interface "{_ifname(iface)}" {{ type ptp; }};
  }};
}}
"""


@dataclass(frozen=True)
class BgpPeer:
    """One eBGP session of a far end: its own address and the node's, same family."""

    local: str
    peer: str

    @property
    def version(self) -> int:
        local, peer = _addr(self.local), _addr(self.peer)
        if local.version != peer.version:
            raise ValueError(f"{self.local} / {self.peer}: families differ")
        return local.version


def bgp_far_end(
    router_id: str,
    asn: int,
    peer_asn: int,
    peers: Sequence[BgpPeer],
    routes: Sequence[tuple[str, str]],
    *,
    bfd: bool = True,
    hold_time: int = 9,
    prepend: int = 0,
) -> str:
    """A far end's eBGP to the node, one session per family (`peers`), with BFD, exporting
    `routes` ((prefix, next hop) pairs: its own networks, and in the forbidden cases a
    prefix the node must refuse), its AS `prepend` more times on the path (a backup's
    routes lose to a primary's). Nothing learned is imported into its kernel."""
    for n in (asn, peer_asn, hold_time, prepend + 1):
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"not a positive int: {n!r}")
    v4, v6 = _statics(routes)
    grow = "\n".join(f"      bgp_path.prepend({asn});" for _ in range(prepend))
    sessions = []
    for i, p in enumerate(peers):
        fam = f"ipv{p.version}"
        sessions.append(f"""\
protocol bgp node{i} {{
  local {_addr(p.local)} as {asn};
  neighbor {_addr(p.peer)} as {peer_asn};
  hold time {hold_time};
  keepalive time {max(1, hold_time // 3)};
  connect retry time 2;
  error wait time 1, 4;
  bfd {"on" if bfd else "off"};
  {fam} {{
    import none;
    export filter {{
      if proto != "behind{p.version}" then reject;
{grow}
      accept;
    }};
  }};
}}""")
    return (
        f"""\
log stderr all;
router id {ipaddress.IPv4Address(router_id)};
protocol device {{ }}
protocol bfd {{
  interface "*" {{
    min rx interval {BFD_INTERVAL_MS} ms;
    min tx interval {BFD_INTERVAL_MS} ms;
    idle tx interval 1000 ms;
    multiplier {BFD_MULTIPLIER};
  }};
}}
protocol static behind4 {{
  ipv4;
{v4}
}}
protocol static behind6 {{
  ipv6;
{v6}
}}
"""
        + "\n".join(sessions)
        + "\n"
    )


def ospf_full(bird: Bird) -> bool:
    """Has `bird` (running one of the OSPF configs above) a neighbour in state Full?"""
    return "Full/" in bird.birdc("show ospf neighbors")
