"""Routes follow the SA, and fail closed: which routes of a tunnel are demoted, and why.

Pure, no I/O. A route of tunnel T to (destination, table) is

- Active at its own metric while T's CHILD SA is installed (reason SaInstalled);
- Demoted (metric + 2**31, `naming.demoted_metric`) while T's CHILD SA is not
  installed AND another tunnel of this node that routes the same destination in the
  same table has its CHILD SA installed (reason SaDown): that tunnel carries the
  traffic, whatever the two metrics are;
- Active at its own metric while T's CHILD SA is down and no such tunnel is up
  (reason FailClosed): the traffic is dropped into T's interface (a VTI or XFRM
  interface without an SA sends nothing), never sent in clear by some other route of
  the node, e.g. its default route, whatever that route's metric.

Why demote rather than withdraw: a withdrawn route hands the destination to whatever
route is next, which may leave the node in clear; a demoted one stays the last resort,
so the node fails closed. Why demote only when another tunnel is up: a metric penalty
alone would hand a route to 0.0.0.0/0 to the node's own default route (same prefix,
lower metric) as soon as the tunnel is down. Demotion is by metric, so it only moves
traffic between routes of the same destination and table: a longer prefix wins in the
kernel regardless of metrics.

A tunnel with a health probe (`spec.healthCheck`, `agent.prober`) whose CHILD SA is
installed but whose probe went unanswered `failures` times in a row counts as down too
(reason ProbeFailed): DPD can't see ESP dropped on the far side while IKE passes, the
probe can. While the SA is not installed the probe's verdict doesn't matter (SaDown).

A route moves between its two metrics in the data plane's `ensure_routes`, which adds
the wanted key before it deletes the stale one (make before break): on fail-back the
promoted route is in place, with its SA installed, before the demoted one goes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from routevpn.agent.decide import Action, decide
from routevpn.api import naming
from routevpn.api.status import RouteState
from routevpn.dataplane.facts import IpsecFacts
from routevpn.dataplane.netlink_facts import effective_metric
from routevpn.dataplane.plan import MAIN_TABLE, IPNetwork, RoutePlan, TunnelPlan

Key = tuple[str, str]
#: A route's place in the kernel apart from its metric: (destination, table).
Dest = tuple[IPNetwork, int]

#: CHILD SA states that carry traffic. REKEYING/REKEYED: the old SA of a rekey still
#: works until the new one is INSTALLED, so a rekey never moves a route.
CARRYING_STATES = frozenset({"INSTALLED", "REKEYING", "REKEYED"})

SA_INSTALLED = "SaInstalled"
PROBE_FAILED = "ProbeFailed"
SA_DOWN = "SaDown"
FAIL_CLOSED = "FailClosed"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """One route as it is to be installed (`route.metric` is the kernel's) and why."""

    route: RoutePlan
    state: RouteState
    reason: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        """The entry of `status.routes`."""
        return {
            "to": str(self.route.dst),
            "table": self.route.table,
            "metric": effective_metric(self.route),
            "state": self.state.value,
            "reason": self.reason,
            "message": self.message,
        }


def carrying_conns(ipsec: IpsecFacts) -> frozenset[str]:
    """CHILD SA names (of routevpn's naming: the connection's own, or its IPv6 one) whose
    CHILD SA carries traffic."""
    return frozenset(
        child.name
        for sa in ipsec.sas
        for child in sa.children
        if child.name in naming.child_names(sa.conn, True) and child.state in CARRYING_STATES
    )


def per_family(obj: Mapping[str, Any]) -> bool:
    """Whether a tunnel object asks for one CHILD SA per family (route mode only)."""
    spec = obj.get("spec") or {}
    child = spec.get("child") or {}
    return bool(child.get("perFamily")) and spec.get("mode") != "policy"


def _sa_up(key: Key, obj: Mapping[str, Any], carrying: frozenset[str]) -> bool:
    """Every CHILD SA of the tunnel carries: with one per family, both (one down demotes
    the routes of both families: failover and fail-closed act on the tunnel as a whole)."""
    names = naming.child_names(naming.conn_name(*key), per_family(obj))
    return all(n in carrying for n in names)


def destinations(obj: Mapping[str, Any]) -> frozenset[Dest]:
    """(destination, table) of each route in a tunnel object's spec (unparsable ones skipped)."""
    out: set[Dest] = set()
    for route in (obj.get("spec") or {}).get("routes") or []:
        try:
            dst = ipaddress.ip_network(str(route.get("to")), strict=False)
        except ValueError:
            continue
        out.add((dst, int(route.get("table") or MAIN_TABLE)))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class NodeRoutes:
    """This node's tunnels as failover sees them in one pass.

    `dests`: each tunnel's (destination, table) pairs, of tunnels the agent configures;
    `up`: the tunnels whose CHILD SA carries traffic and whose health probe, if any, is
    not failing; `probe_failed`: those whose CHILD SA carries but whose probe fails.
    """

    dests: Mapping[Key, frozenset[Dest]]
    up: frozenset[Key]
    probe_failed: frozenset[Key] = frozenset()

    @classmethod
    def of(
        cls,
        tunnels: Mapping[Key, Mapping[str, Any]],
        node: str,
        carrying: frozenset[str],
        failing: frozenset[Key] = frozenset(),
    ) -> NodeRoutes:
        """From the watched objects, the connections that carry traffic and the tunnels
        whose health probe fails."""
        mine = {k: o for k, o in tunnels.items() if decide(o, node) is Action.CONFIGURE}
        sa_up = {k for k, o in mine.items() if _sa_up(k, o, carrying)}
        return cls(
            dests={k: destinations(o) for k, o in mine.items()},
            up=frozenset(sa_up - failing),
            probe_failed=frozenset(sa_up & failing),
        )

    def refresh(
        self,
        tunnels: Mapping[Key, Mapping[str, Any]],
        node: str,
        ipsec: IpsecFacts | None,
        failing: frozenset[Key] = frozenset(),
    ) -> NodeRoutes:
        """The view of a new pass; without a listing of charon's SAs (None) the tunnels
        whose SA was up stay so: a charon that does not answer is no reason to move routes."""
        if ipsec is not None:
            carrying = carrying_conns(ipsec)
        else:
            carrying = frozenset(
                n for k in self.up | self.probe_failed
                for n in naming.child_names(naming.conn_name(*k), True)
            )  # fmt: skip
        return NodeRoutes.of(tunnels, node, carrying, failing)

    def siblings(self, keys: Iterable[Key]) -> set[Key]:
        """Tunnels that share a (destination, table) with any of `keys` (not `keys`)."""
        keys = set(keys)
        wanted: set[Dest] = set()
        for key in keys:
            wanted |= self.dests.get(key, frozenset())
        return {k for k, d in self.dests.items() if k not in keys and d & wanted}

    def carriers(self, key: Key, dest: Dest) -> list[Key]:
        """The other tunnels that are up and route `dest`, sorted."""
        return sorted(k for k in self.up if k != key and dest in self.dests.get(k, ()))


def decide_routes(key: Key, plan: TunnelPlan, node: NodeRoutes) -> tuple[RouteDecision, ...]:
    """Each route of `plan` (tunnel `key`) as it is to be installed, and why."""
    return tuple(decide_route(key, route, node) for route in plan.routes)


def decide_route(key: Key, route: RoutePlan, node: NodeRoutes) -> RouteDecision:
    """One route of tunnel `key` as it is to be installed, and why."""
    metric = effective_metric(route)
    where = f"{route.dst} (table {route.table})"
    active = route  # unchanged: the plan as built is the active route
    if key in node.up:
        return RouteDecision(
            active, RouteState.ACTIVE, SA_INSTALLED,
            f"CHILD SA installed: {where} via {route.dev} at metric {metric}",
        )  # fmt: skip
    carriers = node.carriers(key, (route.dst, route.table))
    if key in node.probe_failed:
        return _probe_failed(route, carriers, where)
    if not carriers:
        return RouteDecision(
            active, RouteState.ACTIVE, FAIL_CLOSED,
            f"CHILD SA not installed and no other tunnel of this node routing {where} is up: "
            f"kept at metric {metric}, so its traffic is dropped into {route.dev}, never sent "
            "in clear by another route",
        )  # fmt: skip
    demoted = dataclasses.replace(route, metric=naming.demoted_metric(metric))
    names = ", ".join(naming.tunnel_ref(*k) for k in carriers)
    return RouteDecision(
        demoted, RouteState.DEMOTED, SA_DOWN,
        f"CHILD SA not installed: {where} demoted to metric {demoted.metric} while {names} "
        "(up) carries it",
    )  # fmt: skip


def _probe_failed(route: RoutePlan, carriers: list[Key], where: str) -> RouteDecision:
    """A route of a tunnel whose CHILD SA is installed but whose health probe fails."""
    metric = effective_metric(route)
    if not carriers:
        return RouteDecision(
            route, RouteState.ACTIVE, PROBE_FAILED,
            f"CHILD SA installed but its health check goes unanswered, and no other tunnel "
            f"of this node routing {where} is up: kept at metric {metric}",
        )  # fmt: skip
    demoted = dataclasses.replace(route, metric=naming.demoted_metric(metric))
    names = ", ".join(naming.tunnel_ref(*k) for k in carriers)
    return RouteDecision(
        demoted, RouteState.DEMOTED, PROBE_FAILED,
        f"CHILD SA installed but its health check goes unanswered: {where} demoted to "
        f"metric {demoted.metric} while {names} (up) carries it",
    )  # fmt: skip


def apply_decisions(plan: TunnelPlan, decisions: tuple[RouteDecision, ...]) -> TunnelPlan:
    """`plan` with its routes at the metrics decided."""
    return dataclasses.replace(plan, routes=tuple(d.route for d in decisions))
