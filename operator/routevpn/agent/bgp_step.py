"""BGP in the reconcile pass: spec → BgpPlans (per tunnel) → BIRD (per node) → status.

The pass plans the tunnels it looks at; the node's BIRD gets every BGP session the agent
knows of, so a pass over one tunnel never drops another's sessions. A tunnel whose BGP
can't be planned (an invalid edit) keeps its sessions as they were, as a blocked tunnel
keeps its interface and routes; one that is gone or has no spec.bgp any more loses them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from routevpn.agent import conditions as cond
from routevpn.agent.bgp import CONDITION, BgpReport, BgpView, NodeBird, report
from routevpn.agent.desired import Blocked
from routevpn.agent.desired_bgp import build_bgp_plans, forbidding
from routevpn.agent.metrics import Metrics
from routevpn.agent.settings import AgentSettings
from routevpn.agent.status import Wire
from routevpn.agent.work import Key
from routevpn.api import naming
from routevpn.api.conditions import ConditionType, Status
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane import safety
from routevpn.dataplane.bird_config import BirdSettings
from routevpn.dataplane.facts import Facts
from routevpn.dataplane.plan import BgpPlan, IPAddress, TunnelPlan

#: BIRD's router id when the node shows no IPv4 address (an IPv6-only node): any unique
#: dotted quad will do for BGP; this one is from TEST-NET-1 and never routed.
FALLBACK_ROUTER_ID = ipaddress.IPv4Address("192.0.2.1")


class BgpStep:
    """The BGP part of the agent's passes."""

    def __init__(self, settings: AgentSettings, bird: NodeBird | None = None) -> None:
        self.settings = settings
        self.bird = bird or NodeBird.at(settings.bird_socket, settings.bird_config_dir)
        self.plans: dict[Key, tuple[BgpPlan, ...]] = {}
        #: Every planned tunnel's IKE peers: no session may learn a route over any of them.
        self.ike_peers: dict[Key, tuple[IPAddress, ...]] = {}
        self.blocked: dict[Key, str] = {}
        self.view = BgpView()
        self._facts: Facts | None = None
        self._router_id: ipaddress.IPv4Address | None = None

    def plan(self, key: Key, tunnel: VpnTunnel, plan: TunnelPlan, facts: Facts | None) -> None:
        """The tunnel's BGP sessions from its spec and what the node has."""
        self._facts = facts or self._facts
        self.ike_peers[key] = tuple(self._ike_peers(plan))
        if tunnel.spec.bgp is None:  # most tunnels: nothing to weigh against the node
            self.blocked.pop(key, None)
            self.plans.pop(key, None)
            return
        addrs, routes = _host(facts)
        forbidden = safety.bgp_forbidden(addrs, self.ike_peers[key], self.settings.protected)
        made = build_bgp_plans(
            tunnel,
            forbidden,
            self.settings.bgp_local_asn,
            safety.outranked_defaults(routes, self.settings.bgp_kernel_metric),
        )
        if isinstance(made, Blocked):
            self.blocked[key] = made.message
            return
        self.blocked.pop(key, None)
        if made:
            self.plans[key] = made
        else:
            self.plans.pop(key, None)

    def _ike_peers(self, plan: TunnelPlan) -> list[IPAddress]:
        """Every IKE peer of the node's tunnels that is an address (not a DNS name)."""
        out: list[IPAddress] = []
        for text in plan.conn.remote_addrs:
            try:
                out.append(ipaddress.ip_address(text))
            except ValueError:
                continue
        return out

    async def sync(self) -> BgpView:
        """Have BIRD run every session the agent knows of; read them back."""
        peers = [ip for key in sorted(self.ike_peers) for ip in self.ike_peers[key]]
        plans = [forbidding(p, peers) for key in sorted(self.plans) for p in self.plans[key]]
        self._router_id = router_id(self._facts, self._router_id)
        settings = BirdSettings(
            router_id=self._router_id,
            kernel_metric=self.settings.bgp_kernel_metric,
        )
        self.view = await self.bird.sync(plans, settings)
        return self.view

    def report(self, key: Key) -> BgpReport | None:
        """The tunnel's BGP report (None: no BGP sessions, nothing blocked)."""
        ref = naming.tunnel_ref(*key)
        if key in self.blocked and key not in self.plans:
            return BgpReport("False", "InvalidSpec", self.blocked[key])
        return report(ref, self.plans.get(key, ()), self.view)

    def condition(self, rep: BgpReport) -> cond.Cond:
        """BgpEstablished from a report."""
        status = Status.TRUE if rep.established else Status.FALSE
        return cond.Cond(ConditionType(CONDITION), status, rep.reason, rep.message)

    def observe_metrics(self, metrics: Metrics, key: Key) -> None:
        """The tunnel's two BGP series per session."""
        pairs = [
            (str(p.peer_address), self.view.sessions.get(p.protocol))
            for p in self.plans.get(key, ())
        ]
        if pairs:
            metrics.bgp(key[0], key[1], pairs)

    def status(self, key: Key, conds: list[cond.Cond], metrics: Metrics) -> Wire | None:
        """Add BgpEstablished to `conds` and observe the metrics; status.bgp (None
        without BGP sessions)."""
        rep = self.report(key)
        if rep is None:
            return None
        conds.append(self.condition(rep))
        self.observe_metrics(metrics, key)
        return {"sessions": list(rep.sessions)} if rep.sessions else None

    def forget(self, key: Key) -> None:
        """The tunnel is gone from this node: its sessions go at the next sync."""
        self.plans.pop(key, None)
        self.blocked.pop(key, None)
        self.ike_peers.pop(key, None)

    async def close(self) -> None:
        """Drop BIRD's control connection."""
        await self.bird.close()


def _host(facts: Facts | None) -> tuple[list[safety.HostAddress], list[safety.HostRoute]]:
    if facts is None:
        return [], []
    nl = facts.netlink
    addrs = [safety.HostAddress(a.ifname, a.address) for a in nl.addresses]
    routes = [
        safety.HostRoute(r.dst, r.ifname or "", r.metric, r.table, r.proto) for r in nl.routes
    ]
    return addrs, routes


def _usable(ip: IPAddress) -> bool:
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)


def router_id(facts: Facts | None, previous: ipaddress.IPv4Address | None) -> ipaddress.IPv4Address:
    """BIRD's router id: the previous one while the node still has it, else the node's
    lowest usable IPv4 address. A new router id restarts every session, so it changes
    only when it must (not when an address is added, nor in a pass that saw no facts)."""
    if facts is None:
        return previous or FALLBACK_ROUTER_ID
    have: Sequence[ipaddress.IPv4Address] = sorted(
        a.address.ip
        for a in facts.netlink.addresses
        if isinstance(a.address.ip, ipaddress.IPv4Address) and _usable(a.address.ip)
    )
    if previous is not None and previous in have:
        return previous
    return have[0] if have else previous or FALLBACK_ROUTER_ID
