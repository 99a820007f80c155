"""Checks that run before anything is applied: plain data in, findings out. Pure.

- RouteLoop: a route (or a connected inside prefix) on the tunnel interface that would
  carry the IKE/ESP packets for the peer into the tunnel itself, with no more specific
  route to the peer outside it. Applying it would cut the tunnel off from its own peer.
- AddressConflict: an inside address already configured on another interface.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from routevpn.dataplane.plan import (
    MAIN_TABLE,
    IPAddress,
    IPInterface,
    IPNetwork,
    TunnelPlan,
)

FindingReason = Literal["RouteLoop", "AddressConflict"]


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


def check(
    plan: TunnelPlan,
    host_addresses: Iterable[HostAddress] = (),
    host_routes: Iterable[HostRoute] = (),
) -> list[Finding]:
    """Every finding for `plan` against what the node has; empty means safe to apply."""
    return check_route_loops(plan, list(host_routes)) + check_address_conflicts(
        plan, list(host_addresses)
    )
