"""Hand-written BIRD configurations for the tests: far ends, a user's own BIRD, a node.

`far_end` is what a site's router would run (eBGP to the node, static routes to
advertise). `user_bird` is a daemon a user runs on the node beside routevpn's (static
routes exported to the kernel with a metric of its own). `node` stands in for routevpn's
rendered configuration where a test needs exactly the node's side under its control:
it keeps the contract's shape (a filter per session accepting only `accept` minus
`forbidden`, next hop forced to the peer, import limit with action disable, routes kept
when filtered so they are counted, the kernel protocol with its own metric and
``learn off``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: routevpn's kernel metric in these tests (the agent's default)
NODE_METRIC = 157


@dataclass(frozen=True)
class Session:
    """One BGP session of the node's hand-written configuration."""

    protocol: str
    interface: str
    local: str
    peer: str
    accept: Sequence[str]
    local_asn: int = 64512
    peer_asn: int = 65001
    max_prefixes: int = 100
    forbidden: Sequence[str] = field(default_factory=tuple)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.peer).version


def _session_block(s: Session) -> str:
    accept = ", ".join(f"{n}+" for n in s.accept)
    forbid = "".join(f"  if net ~ [ {n}+ ] then reject;\n" for n in s.forbidden)
    default = "" if any(n.endswith("/0") for n in s.accept) else "  if net.len = 0 then reject;\n"
    return (
        f"filter {s.protocol}_in {{\n{default}{forbid}"
        f"  if ! (net ~ [ {accept} ]) then reject;\n"
        f'  ifname = "{s.interface}";\n  gw = {s.peer};\n  accept;\n}}\n'
        f"protocol bgp {s.protocol} {{\n"
        f"  local {s.local} as {s.local_asn};\n  neighbor {s.peer} as {s.peer_asn};\n"
        f'  interface "{s.interface}";\n  direct;\n  hold time 9;\n  connect retry time 2;\n'
        f"  ipv{s.family} {{\n    import keep filtered on;\n"
        f"    import limit {s.max_prefixes} action disable;\n"
        f"    import filter {s.protocol}_in;\n    export none;\n  }};\n}}\n"
    )


def node(sessions: Sequence[Session], *, metric: int = NODE_METRIC, scan: int = 2) -> str:
    """The node's BIRD: kernel protocols with `metric`, one BGP protocol per session."""
    kernels = "".join(
        f"protocol kernel rv_kernel{v} {{\n"
        f"  ipv{v} {{ import none; export where source = RTS_BGP; }};\n"
        f"  metric {metric};\n  learn off;\n  scan time {scan};\n}}\n"
        for v in (4, 6)
    )
    return (
        "router id 192.0.2.10;\ntimeformat protocol iso long ms;\n"
        "protocol device { scan time 2; }\n"
        + kernels
        + "".join(_session_block(s) for s in sessions)
    )


def far_end(
    *,
    router_id: str,
    asn: int,
    peers: Sequence[tuple[str, str, str, int]],
    routes4: Sequence[str] = (),
    routes6: Sequence[str] = (),
    log: Path | None = None,
) -> str:
    """A site's BIRD: `peers` are (interface, local, neighbor, neighbor ASN), and the
    static routes it advertises to all of them (blackholes: only the BGP view matters)."""
    text = f"router id {router_id};\ntimeformat protocol iso long ms;\n"
    if log is not None:
        text += f'log "{log}" all;\n'
    text += "protocol device { scan time 2; }\n"
    for v, routes in ((4, routes4), (6, routes6)):
        body = "".join(f"  route {r} blackhole;\n" for r in routes)
        text += f"protocol static far{v} {{\n  ipv{v};\n{body}}}\n"
    for i, (ifname, local, neighbor, neighbor_asn) in enumerate(peers):
        v = ipaddress.ip_address(neighbor).version
        text += (
            f"protocol bgp peer{i} {{\n  local {local} as {asn};\n"
            f"  neighbor {neighbor} as {neighbor_asn};\n"
            f'  interface "{ifname}";\n  direct;\n  hold time 9;\n  connect retry time 2;\n'
            f'  ipv{v} {{ import all; export where proto = "far{v}"; }};\n}}\n'
        )
    return text


def user_bird(routes4: Sequence[str], *, metric: int, scan: int = 2) -> str:
    """A user's own BIRD on the node: static routes installed with `metric`."""
    body = "".join(f"  route {r} blackhole;\n" for r in routes4)
    return (
        "router id 192.0.2.11;\n"
        f"protocol static user4 {{\n  ipv4;\n{body}}}\n"
        f"protocol kernel user_kernel4 {{\n  ipv4 {{ import none; export all; }};\n"
        f"  metric {metric};\n  scan time {scan};\n}}\n"
    )
