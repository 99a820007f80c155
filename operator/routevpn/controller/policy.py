"""Tenancy policy: may this tunnel exist, and on which nodes? Pure.

Two layers, both checked before a tunnel is placed (a refused tunnel gets no label and
no delivered Secret: nothing of it reaches a node):

* always, whatever any policy says: no route into, and no inside address in, a network
  routevpn protects (the nodes' own addresses, the pod, service and node networks, the API
  server, loopback, multicast, link-local destinations, 0.0.0.0/8). A default route is
  judged by the policy alone (it covers everything by definition; the node's agent still
  refuses one that would outrank the node's own default route);
* the grants: the `VpnTunnelPolicy` objects whose namespaceSelector matches the tunnel's
  namespace. The tunnel is admitted when one of them admits all of it; it may then run on
  a node that any admitting policy's nodeSelector matches. No matching policy: refused,
  unless the operator runs with `--without-policy=allow` (single-tenant clusters).

spec.bgp's `accept` and `advertise` prefixes are judged as routes are, with one
difference: an accepted prefix may hold a protected network (the node's BIRD refuses the
protected part of what it learns), but not lie inside one.

Policy-mode tunnels have no routes, but their remote traffic selectors send traffic into
the tunnel just as routes do (kernel policies even act before routing): they are judged
as destinations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from routevpn.api.fields import Mode
from routevpn.api.policy import DefaultRoute, VpnTunnelPolicySpec
from routevpn.api.sa import ESP_DEFAULT_PROPOSALS, IKE_DEFAULT_PROPOSALS
from routevpn.api.spec import VpnTunnelSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

#: What the operator does for a namespace no VpnTunnelPolicy selects.
WITHOUT_POLICY_CHOICES: Final = ("deny", "allow")

_ALWAYS: Final = (
    ("loopback", "127.0.0.0/8"),
    ("loopback", "::1/128"),
    ("multicast", "224.0.0.0/4"),
    ("multicast", "ff00::/8"),
    ("this-network block", "0.0.0.0/8"),
    ("the limited broadcast address", "255.255.255.255/32"),
)
#: Link-local destinations (cloud metadata at 169.254.169.254, neighbours) are protected
#: for routes; inside addresses may be link-local (169.254.x.x/30 is the common choice).
_LINK_LOCAL: Final = (("link-local", "169.254.0.0/16"), ("link-local", "fe80::/10"))


@dataclass(frozen=True, slots=True)
class Protected:
    """A network no tunnel may touch, and what it is (for the message)."""

    what: str
    network: Network


def protected_networks(
    configured: Iterable[tuple[str, str]], node_ips: Iterable[str]
) -> tuple[Protected, ...]:
    """The always-protected networks plus the cluster's (flags, Nodes, API server)."""
    out = [Protected(what, ipaddress.ip_network(net)) for what, net in _ALWAYS]
    for what, net in configured:
        out.append(Protected(what, ipaddress.ip_network(net, strict=False)))
    for ip in node_ips:
        try:
            out.append(Protected("a node's address", ipaddress.ip_network(ip)))
        except ValueError:
            continue
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Admitted (with the node selectors that bound placement) or refused (message)."""

    admitted: bool
    message: str = ""
    #: None: any node; else a node must match one of these selectors.
    node_selectors: tuple[Mapping[str, str], ...] | None = None

    def node_allowed(self, labels: Mapping[str, str]) -> bool:
        """May the tunnel run on a node with `labels`?"""
        if self.node_selectors is None:
            return True
        return any(all(labels.get(k) == v for k, v in s.items()) for s in self.node_selectors)


@dataclass(frozen=True, slots=True)
class PolicyView:
    """What the decision needs: protected networks, the policies, the fallback."""

    protected: tuple[Protected, ...] = ()
    policies: Sequence[tuple[str, VpnTunnelPolicySpec]] = ()
    without_policy: str = "deny"
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def destinations(spec: VpnTunnelSpec) -> list[tuple[str, Network, int | None]]:
    """Where the tunnel sends traffic: (field, network, table) per route or remote selector."""
    if spec.effective_mode is Mode.POLICY:
        ts = spec.child.traffic_selectors if spec.child else None
        return [
            (f"spec.child.trafficSelectors.remote[{i}]", _net(t), None)
            for i, t in enumerate(ts.remote if ts else [])
        ]
    return [
        (f"spec.routes[{i}].to", ipaddress.ip_network(r.to), r.table or 254)
        for i, r in enumerate(spec.routes or [])
    ]


def bgp_prefixes(spec: VpnTunnelSpec) -> list[tuple[str, Network, int | None]]:
    """spec.bgp's `accept` (with the table learned routes go to) and `advertise` prefixes.

    Both are judged as route destinations are (allowedDestinations, defaultRoute, the
    table against allowedTables): accepted prefixes become routes into the tunnel, and
    advertised ones draw the far end's traffic for them into it.
    """
    bgp = spec.bgp
    if bgp is None:
        return []
    table = bgp.table or 254
    out: list[tuple[str, Network, int | None]] = [
        (f"spec.bgp.accept[{i}]", _net(t), table) for i, t in enumerate(bgp.accept)
    ]
    out += [(f"spec.bgp.advertise[{i}]", _net(t), None) for i, t in enumerate(bgp.advertise or [])]
    return out


def _net(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


def _inside(spec: VpnTunnelSpec) -> list[tuple[str, Interface]]:
    addrs = spec.interface.addresses if spec.interface else None
    return [
        (f"spec.interface.addresses[{i}]", ipaddress.ip_interface(a))
        for i, a in enumerate(addrs or [])
    ]


def _overlap(net: Network, guard: Iterable[Protected]) -> Protected | None:
    return next(
        (p for p in guard if p.network.version == net.version and p.network.overlaps(net)), None
    )


def always_forbidden(spec: VpnTunnelSpec, protected: Sequence[Protected]) -> str | None:
    """Why the tunnel touches a protected network, or None."""
    route_guard = [*protected, *(Protected(w, ipaddress.ip_network(n)) for w, n in _LINK_LOCAL)]
    if (why := _accept_forbidden(spec, route_guard)) is not None:
        return why
    advertised = [d for d in bgp_prefixes(spec) if d[0].startswith("spec.bgp.advertise")]
    for where, net, _ in [*destinations(spec), *advertised]:
        if net.prefixlen == 0:
            continue  # a default route: the policy's `defaultRoute` decides
        if (hit := _overlap(net, route_guard)) is not None:
            return (
                f"{where} {net} overlaps {hit.what} {hit.network}: routevpn never routes it "
                "into a tunnel"
            )
    for where, iface in _inside(spec):
        if (hit := _overlap(iface.network, protected)) is not None:
            return (
                f"{where} {iface} overlaps {hit.what} {hit.network}: routevpn never puts it "
                "on a tunnel interface"
            )
    return None


def _accept_forbidden(spec: VpnTunnelSpec, guard: Sequence[Protected]) -> str | None:
    """Why an accepted prefix lies inside (or is) a protected network, or None.

    Unlike a route, an `accept` prefix may hold a protected network: it is a bound on what
    may be learned, and the node's BIRD import filter refuses every learned prefix that
    overlaps a protected network (dataplane/bird_config.py). One inside a protected
    network could only ever learn what must never be accepted: refused here.
    """
    for where, net, _ in bgp_prefixes(spec):
        if not where.startswith("spec.bgp.accept") or net.prefixlen == 0:
            continue
        for hit in guard:
            if hit.network.version == net.version and net.subnet_of(hit.network):  # type: ignore[arg-type]
                return (
                    f"{where} {net} lies inside {hit.what} {hit.network}: routevpn never "
                    "routes it into a tunnel"
                )
    return None


def _within(net: Network, allowed: Iterable[str]) -> bool:
    for text in allowed:
        grant = ipaddress.ip_network(text, strict=False)
        if grant.version == net.version and net.subnet_of(grant):  # type: ignore[arg-type]
            return True
    return False


def grant_violation(spec: VpnTunnelSpec, grant: VpnTunnelPolicySpec) -> str | None:
    """What of the tunnel this one policy does not grant, or None when it grants it all."""
    for where, net, table in [*destinations(spec), *bgp_prefixes(spec)]:
        if net.prefixlen == 0:
            if grant.default_route is not DefaultRoute.ALLOWED:
                return f"{where} {net} is a default route and defaultRoute is not allowed"
        elif grant.allowed_destinations is not None and not _within(
            net, grant.allowed_destinations
        ):
            return f"{where} {net} is outside allowedDestinations"
        if table is not None and table not in grant.tables:
            return f"{where}: table {table} is not in allowedTables {list(grant.tables)}"
    for where, iface in _inside(spec):
        if grant.allowed_inside_ranges is not None and not _within(
            iface.network, grant.allowed_inside_ranges
        ):
            return f"{where} {iface} is outside allowedInsideRanges"
    return _proposal_violation(spec, grant.allowed_proposals)


def _proposal_violation(spec: VpnTunnelSpec, allowed: Sequence[str] | None) -> str | None:
    """The first proposal (defaults included) not in `allowed`; None: any is granted."""
    if allowed is None:
        return None
    ike = (spec.ike.proposals if spec.ike else None) or IKE_DEFAULT_PROPOSALS
    esp = (spec.child.proposals if spec.child else None) or ESP_DEFAULT_PROPOSALS
    for where, proposals in (("spec.ike.proposals", ike), ("spec.child.proposals", esp)):
        for proposal in proposals:
            if proposal not in allowed:
                return f"{where}: {proposal} is not in allowedProposals"
    return None


def evaluate(spec: VpnTunnelSpec, namespace: str, view: PolicyView) -> Verdict:
    """May a tunnel with `spec` exist in `namespace`, and on which nodes?"""
    if (why := always_forbidden(spec, view.protected)) is not None:
        return Verdict(False, why)
    labels = dict(view.namespace_labels.get(namespace) or {})
    labels.setdefault("kubernetes.io/metadata.name", namespace)
    matching = [
        (name, grant)
        for name, grant in sorted(view.policies, key=lambda p: p[0])
        if grant.namespace_selector is None or grant.namespace_selector.matches(labels)
    ]
    if not matching:
        if view.without_policy == "allow":
            return Verdict(True)
        return Verdict(
            False,
            f"no VpnTunnelPolicy grants tunnels to namespace {namespace}; ask the cluster "
            "admin for one",
        )
    refusals: list[str] = []
    admitting: list[VpnTunnelPolicySpec] = []
    for name, grant in matching:
        why = grant_violation(spec, grant)
        if why is None:
            admitting.append(grant)
        else:
            refusals.append(f"VpnTunnelPolicy {name}: {why}")
    if not admitting:
        shown = "; ".join(refusals[:3]) + ("; ..." if len(refusals) > 3 else "")
        return Verdict(False, f"no VpnTunnelPolicy admits this tunnel: {shown}")
    if any(g.node_selector is None for g in admitting):
        return Verdict(True)
    return Verdict(True, node_selectors=tuple(dict(g.node_selector or {}) for g in admitting))
