"""Checks that run before anything is applied: plain data in, findings out. Pure.

- RouteLoop: a route (or a connected inside prefix) on the tunnel interface that would
  carry the IKE/ESP packets for the peer into the tunnel itself, with no more specific
  route to the peer outside it. Applying it would cut the tunnel off from its own peer.
- AddressConflict: an inside address already configured on another interface, or an
  inside network holding an address of another interface.
- ProtectedRoute: defence in depth behind the operator's policy (a compromised or older
  operator, a hand-edited status): a route into the kernel's own tables (0, 253, 255), to
  loopback, multicast or link-local destinations, over an address of another interface
  of the node, or one that would outrank a route the node already has (not routevpn's)
  for the same destination and table — the "0.0.0.0/0 at metric 0 beats the node's
  default route" attack.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from routevpn.api.naming import RESERVED_TABLES, ROUTE_PROTOCOL
from routevpn.dataplane.plan import (
    MAIN_TABLE,
    IPAddress,
    IPInterface,
    IPNetwork,
    RoutePlan,
    TunnelPlan,
)

FindingReason = Literal["RouteLoop", "AddressConflict", "ProtectedRoute"]

#: Destinations no tunnel route may cover, whatever the operator said.
_NEVER: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8", "::1/128", "224.0.0.0/4", "ff00::/8", "169.254.0.0/16", "fe80::/10",
        "0.0.0.0/8",
    )
)  # fmt: skip
#: The metric the kernel records for an IPv6 route added without one.
_IPV6_DEFAULT_METRIC: Final = 1024


@dataclass(frozen=True, slots=True)
class HostAddress:
    """An address the node already has (from `observe()` or a netlink dump)."""

    ifname: str
    address: IPInterface


@dataclass(frozen=True, slots=True)
class HostRoute:
    """A route the node already has, outside routevpn's plan for this tunnel."""

    dst: IPNetwork
    dev: str
    metric: int = 0
    table: int = MAIN_TABLE
    #: rtm_protocol: routevpn's own routes (another tunnel's) carry naming.ROUTE_PROTOCOL.
    proto: int = 0


@dataclass(frozen=True, slots=True)
class Finding:
    """Why a plan must not be applied: a CamelCase reason and a message naming the tunnel."""

    reason: FindingReason
    message: str


def peer_addresses(plan: TunnelPlan) -> list[IPAddress]:
    """The peer's literal addresses (`remote_addrs` that are IP addresses)."""
    out: list[IPAddress] = []
    for raw in plan.conn.remote_addrs:
        try:
            out.append(ipaddress.ip_address(raw))
        except ValueError:
            continue  # a DNS name, %any or a range: nothing to check before resolution
    return out


def _escapes(
    peer: IPAddress,
    prefixlen: int,
    metric: int,
    tunnel_dev: str,
    host_routes: Iterable[HostRoute],
) -> bool:
    """Whether some main-table route outside the tunnel wins for `peer` over ours."""
    for route in host_routes:
        if route.dev == tunnel_dev or route.table != MAIN_TABLE:
            continue
        if route.dst.version != peer.version or peer not in route.dst:
            continue
        if route.dst.prefixlen > prefixlen:
            return True
        if route.dst.prefixlen == prefixlen and route.metric < metric:
            return True
    return False


def check_route_loops(plan: TunnelPlan, host_routes: Iterable[HostRoute]) -> list[Finding]:
    """RouteLoop findings: tunnel routes/prefixes that would swallow the peer address.

    Only main-table routes are judged: a route in another table matters only through
    policy rules this check does not see, and flagging those would be guesswork.
    """
    link = plan.link
    if link is None:
        return []
    outside = [r for r in host_routes if r.dev != link.name]
    findings: list[Finding] = []
    for peer in peer_addresses(plan):
        candidates: list[tuple[str, int, int]] = [
            (f"route {r.dst}", r.dst.prefixlen, r.metric)
            for r in plan.routes
            if r.table == MAIN_TABLE and r.dst.version == peer.version and peer in r.dst
        ]
        candidates += [
            (f"inside prefix {a.network}", a.network.prefixlen, 0)
            for a in plan.addresses
            if a.version == peer.version and peer in a.network
        ]
        # Our own routes via the tunnel to a more specific prefix make it worse, not
        # better; only a route outside the tunnel can rescue the peer.
        for what, prefixlen, metric in candidates:
            if not _escapes(peer, prefixlen, metric, link.name, outside):
                findings.append(
                    Finding(
                        "RouteLoop",
                        f"tunnel {plan.ref}: {what} via {link.name} covers the peer address "
                        f"{peer} and no more specific route reaches it outside the tunnel; "
                        f"IKE and ESP to the peer would loop into the tunnel. Add a route "
                        f"to {peer} via the underlay or narrow the tunnel route.",
                    )
                )
    return findings


def check_address_conflicts(
    plan: TunnelPlan, host_addresses: Iterable[HostAddress]
) -> list[Finding]:
    """AddressConflict findings: inside addresses already present on another interface."""
    link = plan.link
    if link is None:
        return []
    findings: list[Finding] = []
    for want in plan.addresses:
        for have in host_addresses:
            if have.ifname != link.name and have.address.ip == want.ip:
                findings.append(
                    Finding(
                        "AddressConflict",
                        f"tunnel {plan.ref}: inside address {want.ip} is already on "
                        f"interface {have.ifname}; pick another inside address.",
                    )
                )
    return findings


def _node_addresses(plan: TunnelPlan, host_addresses: Iterable[HostAddress]) -> list[IPInterface]:
    """Addresses of the node's other interfaces (link-local ones are every link's)."""
    own = plan.link.name if plan.link is not None else None
    return [a.address for a in host_addresses if a.ifname != own and not a.address.ip.is_link_local]


def _route_problem(
    route: RoutePlan, node: list[IPInterface], host_routes: Iterable[HostRoute]
) -> str | None:
    if route.table in RESERVED_TABLES:
        return f"table {route.table} is the kernel's own"
    if route.dst.prefixlen > 0:
        for net in _NEVER:
            if net.version == route.dst.version and net.overlaps(route.dst):
                return f"it overlaps {net}, which is never routed into a tunnel"
        for addr in node:
            if addr.version == route.dst.version and addr.ip in route.dst:
                return f"it covers the node's own address {addr.ip}"
    metric = route.metric or (_IPV6_DEFAULT_METRIC if route.dst.version == 6 else 0)
    for have in host_routes:
        same = (have.dst, have.table) == (route.dst, route.table)
        if same and have.proto != ROUTE_PROTOCOL and have.metric > metric:
            return (
                f"it would outrank the node's own route via {have.dev} (metric "
                f"{have.metric}); use a metric above it"
            )
    return None


def check_protected(
    plan: TunnelPlan, host_addresses: Iterable[HostAddress], host_routes: Iterable[HostRoute]
) -> list[Finding]:
    """ProtectedRoute / AddressConflict findings for what must never reach a tunnel."""
    node = _node_addresses(plan, host_addresses)
    routes = list(host_routes)
    findings: list[Finding] = []
    for route in plan.routes:
        why = _route_problem(route, node, routes)
        if why is not None:
            findings.append(
                Finding(
                    "ProtectedRoute",
                    f"tunnel {plan.ref}: route {route.dst} table {route.table} refused: {why}.",
                )
            )
    mine = {a.ip for a in plan.addresses}  # the same address twice: check_address_conflicts
    for want in plan.addresses:
        for addr in node:
            if addr.version == want.version and addr.ip not in mine and addr.ip in want.network:
                findings.append(
                    Finding(
                        "AddressConflict",
                        f"tunnel {plan.ref}: inside network {want.network} holds the node's "
                        f"address {addr.ip}; pick another inside network.",
                    )
                )
    return findings


def check(
    plan: TunnelPlan,
    host_addresses: Iterable[HostAddress] = (),
    host_routes: Iterable[HostRoute] = (),
) -> list[Finding]:
    """Every finding for `plan` against what the node has; empty means safe to apply."""
    addrs, routes = list(host_addresses), list(host_routes)
    return (
        check_protected(plan, addrs, routes)
        + check_route_loops(plan, routes)
        + check_address_conflicts(plan, addrs)
    )


def bgp_forbidden(
    host_addresses: Iterable[HostAddress],
    ike_peers: Iterable[IPAddress] = (),
    protected: Iterable[IPNetwork] = (),
) -> tuple[IPNetwork, ...]:
    """What no BGP session may learn a route into or over, sorted: the BgpPlan's `forbidden`.

    The same networks `check_protected` keeps static routes out of (loopback, multicast,
    link-local, 0.0.0.0/8, every address of the node, its tunnels' own inside addresses
    included), the IKE peers of the node's tunnels (a learned route over one would pull
    that tunnel's own IKE and ESP into a tunnel: the RouteLoop of static routes, and one
    tenant's far end could cut off another tenant's tunnel), and the cluster's networks
    the agent was told about (`protected`). BIRD's import filter refuses a prefix inside
    or holding any of them.
    """
    out: set[IPNetwork] = set(_NEVER)
    out.update(ipaddress.ip_network(a.address.ip) for a in host_addresses)
    out.update(ipaddress.ip_network(peer) for peer in ike_peers)
    out.update(protected)
    # a host network (/32, /128: every node address) holds no other but itself, so only
    # the wider ones can swallow another: O(all x wide), not O(all²) on a node of 400
    wide = [n for n in out if n.prefixlen < n.max_prefixlen]
    kept = {n for n in out if not _inside_another(n, wide)}
    return tuple(sorted(kept, key=lambda n: (n.version, int(n.network_address), n.prefixlen)))


def _inside_another(net: IPNetwork, nets: Iterable[IPNetwork]) -> bool:
    """Whether `net` lies inside another of `nets` (then it adds nothing to a filter)."""
    return any(
        o != net and o.version == net.version and net.subnet_of(o)  # type: ignore[arg-type]
        for o in nets
    )


#: rtm_protocol of the routes a BIRD installs (RTPROT_BIRD), routevpn's and a user's alike.
_BIRD_PROTOCOL: Final = 12


def outranked_defaults(
    host_routes: Iterable[HostRoute], kernel_metric: int
) -> frozenset[tuple[int, int]]:
    """(IP version, table) pairs where a default route learned over BGP would win over the
    node's own default route: a BgpPlan there must not accept 0.0.0.0/0 or ::/0.

    The BGP twin of `check_protected`'s "0.0.0.0/0 at metric 0 beats the node's default
    route": BIRD installs what it learns at `kernel_metric`, so a node default route with a
    higher metric (DHCP's 100, IPv6's 1024) would lose the node's traffic to the tunnel,
    the API server's included. routevpn's own routes (static: ROUTE_PROTOCOL; its BIRD's:
    RTPROT_BIRD at `kernel_metric`) are not the node's.
    """
    out: set[tuple[int, int]] = set()
    for have in host_routes:
        if have.dst.prefixlen != 0 or have.proto == ROUTE_PROTOCOL:
            continue
        if have.proto == _BIRD_PROTOCOL and have.metric == kernel_metric:
            continue
        if have.metric > kernel_metric:
            out.add((have.dst.version, have.table))
    return frozenset(out)
