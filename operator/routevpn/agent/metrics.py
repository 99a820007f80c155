"""Prometheus metrics of the agent (controller-runtime-like names) and per-tunnel series.

Counters of bytes and packets are charon's per-SA counters, which restart at zero on
every rekey, so they are exported as gauges of the current CHILD SA, not as counters.

Every per-tunnel series carries `namespace`, `name` (the tunnel) and `node` (this
agent's node), plus at most one label of a small fixed set (`state`, `sa`): no SPI,
address or reason, whose values are unbounded. The reason a tunnel is down is in its
status, where `kubectl get vpnt -o wide` shows it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from routevpn.api.status import RouteState
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts

IKE_STATES = (
    "CREATED",
    "CONNECTING",
    "ESTABLISHED",
    "PASSIVE",
    "REKEYING",
    "REKEYED",
    "DELETING",
    "DESTROYING",
    "DOWN",
)
CHILD_STATES = (
    "CREATED",
    "ROUTED",
    "INSTALLING",
    "INSTALLED",
    "UPDATING",
    "REKEYING",
    "REKEYED",
    "RETRYING",
    "DELETING",
    "DELETED",
    "DESTROYING",
    "DOWN",
)
ROUTE_STATES = tuple(s.value for s in RouteState)
#: Which SA a rekey was of (`routevpn_tunnel_rekeys_total{sa}`).
SA_KINDS = ("ike", "child")
TUNNEL_LABELS = ("namespace", "name", "node")
PROBE_RESULTS = ("answered", "missed")
#: `routevpn_tunnel_bgp_prefixes{kind}` (attributes of `BgpSessionFacts`).
BGP_PREFIX_KINDS = ("received", "accepted", "advertised")


class Metrics:
    """One registry with everything the agent of `node` exports on /metrics."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        # Declared in this order, which is the order /metrics lists them in.
        self._declare_passes(self.registry)
        self._declare_writes(self.registry)
        self._declare_tunnels(self.registry)
        self._declare_events(self.registry)
        self._declare_probes(self.registry)
        self._declare_bgp(self.registry)
        self._known: set[tuple[str, str]] = set()
        self._demoted: set[tuple[str, str]] = set()
        self._bgp_peers: dict[tuple[str, str], set[str]] = {}

    def _declare_passes(self, r: CollectorRegistry) -> None:
        """How many reconcile passes ran, how they ended, how long they took."""
        self.reconcile_total = Counter(
            "routevpn_agent_reconcile",
            "Reconcile passes of one tunnel, by result (success, error).",
            ["result"],
            registry=r,
        )
        self.reconcile_errors_total = Counter(
            "routevpn_agent_reconcile_errors", "Reconcile passes that failed.", registry=r
        )
        self.reconcile_duration = Histogram(
            "routevpn_agent_reconcile_duration_seconds",
            "Time of one tunnel's reconcile pass.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def _declare_writes(self, r: CollectorRegistry) -> None:
        """What the passes changed: writes to the API server, changes to the node."""
        self.api_writes_total = Counter(
            "routevpn_agent_api_writes",
            "Writes to the API server, by kind (status, finalizer, event, lease).",
            ["kind"],
            registry=r,
        )
        self.events_limited_total = Counter(
            "routevpn_agent_events_limited",
            "Events left out by the per-tunnel limit (status carried the change), by condition.",
            ["condition"],
            registry=r,
        )
        self.dataplane_changes_total = Counter(
            "routevpn_agent_dataplane_changes",
            "Changes made to the node (netlink, charon), by what was changed.",
            ["what"],
            registry=r,
        )

    def _declare_tunnels(self, r: CollectorRegistry) -> None:
        """How many tunnels, and per tunnel: SA states and counters."""
        self.tunnels = Gauge(
            "routevpn_agent_tunnels", "Tunnels this agent configures.", ["node"], registry=r
        )
        labels = TUNNEL_LABELS
        self.ike_state = Gauge(
            "routevpn_tunnel_ike_state",
            "1 for the IKE SA's current state (DOWN without an SA), 0 for the others.",
            [*labels, "state"],
            registry=r,
        )
        self.child_state = Gauge(
            "routevpn_tunnel_child_state",
            "1 for the CHILD SA's current state (DOWN without an SA), 0 for the others.",
            [*labels, "state"],
            registry=r,
        )
        self.received_bytes = Gauge(
            "routevpn_tunnel_child_sa_received_bytes",
            "Bytes received on the current CHILD SA (restarts at 0 on each rekey).",
            labels,
            registry=r,
        )
        self.sent_bytes = Gauge(
            "routevpn_tunnel_child_sa_sent_bytes",
            "Bytes sent on the current CHILD SA (restarts at 0 on each rekey).",
            labels,
            registry=r,
        )
        self.received_packets = Gauge(
            "routevpn_tunnel_child_sa_received_packets",
            "Packets received on the current CHILD SA (restarts at 0 on each rekey).",
            labels,
            registry=r,
        )
        self.sent_packets = Gauge(
            "routevpn_tunnel_child_sa_sent_packets",
            "Packets sent on the current CHILD SA (restarts at 0 on each rekey).",
            labels,
            registry=r,
        )
        self.established = Gauge(
            "routevpn_tunnel_established_timestamp_seconds",
            "Unix time the IKE SA was established (absent while down).",
            labels,
            registry=r,
        )

    def _declare_events(self, r: CollectorRegistry) -> None:
        """On demand or not, routes, and what happened: rekeys, failures, failovers."""
        labels = TUNNEL_LABELS
        self.on_demand = Gauge(
            "routevpn_tunnel_on_demand",
            "1 when the tunnel comes up only on demand (spec.child.startAction trap or none): "
            "down while idle by design, so RouteVpnTunnelDown leaves it out; else 0.",
            labels,
            registry=r,
        )
        self.routes = Gauge(
            "routevpn_tunnel_routes",
            "Routes of the tunnel by state: Active (at their metric) or Demoted (the tunnel "
            "is down and another tunnel to the same destination carries the traffic).",
            [*labels, "state"],
            registry=r,
        )
        self.rekeys_total = Counter(
            "routevpn_tunnel_rekeys",
            "Rekeys charon completed, by SA (ike, child).",
            [*labels, "sa"],
            registry=r,
        )
        self.ike_failures_total = Counter(
            "routevpn_tunnel_ike_failures",
            "IKE negotiation failures charon logged (authentication, proposals, peer not "
            "answering...); the reason of the latest is in the tunnel's status.",
            labels,
            registry=r,
        )
        self.failovers_total = Counter(
            "routevpn_tunnel_failovers",
            "Times the tunnel's routes were demoted: it went down while another tunnel to "
            "the same destination was up and took its traffic.",
            labels,
            registry=r,
        )

    def _declare_bgp(self, r: CollectorRegistry) -> None:
        """Per BGP session (a tunnel has one per peer address, at most two)."""
        labels = (*TUNNEL_LABELS, "peer")
        self.bgp_session_up = Gauge(
            "routevpn_tunnel_bgp_session_up",
            "1 while the tunnel's BGP session with this peer is Established, else 0.",
            labels,
            registry=r,
        )
        self.bgp_prefixes = Gauge(
            "routevpn_tunnel_bgp_prefixes",
            "Prefixes of the session: received from the peer, accepted by the import filter, "
            "advertised to the peer.",
            [*labels, "kind"],
            registry=r,
        )

    def bgp(self, namespace: str, name: str, sessions: Iterable[tuple[str, Any]]) -> None:
        """Set a tunnel's BGP series: (peer address, `BgpSessionFacts` or None) pairs."""
        key = (namespace, name)
        peers = set()
        for peer, facts in sessions:
            peers.add(peer)
            tun = (namespace, name, self.node, peer)
            self.bgp_session_up.labels(*tun).set(
                1 if facts is not None and facts.established else 0
            )
            for kind in BGP_PREFIX_KINDS:
                value = getattr(facts, kind) if facts is not None else 0
                self.bgp_prefixes.labels(*tun, kind).set(value)
        for gone in self._bgp_peers.get(key, set()) - peers:
            self._forget_bgp_peer(namespace, name, gone)
        self._bgp_peers[key] = peers
        self._known.add(key)

    def _forget_bgp_peer(self, namespace: str, name: str, peer: str) -> None:
        tun = (namespace, name, self.node, peer)
        self._remove(self.bgp_session_up, *tun)
        for kind in BGP_PREFIX_KINDS:
            self._remove(self.bgp_prefixes, *tun, kind)

    def _declare_probes(self, r: CollectorRegistry) -> None:
        """Health probes through the tunnels (spec.healthCheck)."""
        self.probe_failing = Gauge(
            "routevpn_tunnel_probe_failing",
            "1 while the tunnel's health check has gone unanswered spec.healthCheck.failures "
            "times in a row (its routes fail over as if its SA were down), else 0.",
            TUNNEL_LABELS,
            registry=r,
        )
        self.probes_total = Counter(
            "routevpn_tunnel_probes",
            "Health-check probes (ICMP echo through the tunnel) by result: answered, missed.",
            [*TUNNEL_LABELS, "result"],
            registry=r,
        )

    def probed(self, namespace: str, name: str, *, answered: bool, failing: bool) -> None:
        """One health probe of the tunnel answered or missed, and the verdict after it."""
        tun = (namespace, name, self.node)
        self.probes_total.labels(*tun, "answered" if answered else "missed").inc()
        self.probe_failing.labels(*tun).set(1 if failing else 0)

    def tunnel(
        self,
        namespace: str,
        name: str,
        ike: IkeSaFacts | None,
        child: ChildSaFacts | None,
        now: float,
        route_states: Iterable[str] = (),
        *,
        on_demand: bool = False,
    ) -> None:
        """Set one tunnel's series from the SAs observed at unix time `now`, the states of
        its routes (`RouteState` values) and whether it starts on demand only."""
        key = (namespace, name)
        tun = self._start(namespace, name)
        ike_now = ike.state if ike is not None else "DOWN"
        for state in {*IKE_STATES, ike_now}:
            self.ike_state.labels(*tun, state).set(1 if state == ike_now else 0)
        child_now = child.state if child is not None else "DOWN"
        for state in {*CHILD_STATES, child_now}:
            self.child_state.labels(*tun, state).set(1 if state == child_now else 0)
        self.on_demand.labels(*tun).set(1 if on_demand else 0)
        c = child
        self.received_bytes.labels(*tun).set(c.bytes_in if c else 0)
        self.sent_bytes.labels(*tun).set(c.bytes_out if c else 0)
        self.received_packets.labels(*tun).set(c.packets_in if c else 0)
        self.sent_packets.labels(*tun).set(c.packets_out if c else 0)
        if ike is not None and ike.state == "ESTABLISHED" and ike.established is not None:
            self.established.labels(*tun).set(int(now) - ike.established)
        else:
            self._remove(self.established, *tun)
        self._routes(key, list(route_states))

    def _start(self, namespace: str, name: str) -> tuple[str, str, str]:
        """The tunnel's label values; its counters exist from the first sight, at 0
        (increase() and rate() see the first event only with a 0 before it)."""
        tun = (namespace, name, self.node)
        if (namespace, name) not in self._known:
            self._known.add((namespace, name))
            for sa in SA_KINDS:
                self.rekeys_total.labels(*tun, sa)
            self.ike_failures_total.labels(*tun)
            self.failovers_total.labels(*tun)
        return tun

    def _routes(self, key: tuple[str, str], states: list[str]) -> None:
        """Routes by state, and a failover counted when the routes turn Demoted."""
        tun = (*key, self.node)
        for state in ROUTE_STATES:
            self.routes.labels(*tun, state).set(states.count(state))
        demoted = RouteState.DEMOTED.value in states
        if demoted and key not in self._demoted:
            self.failovers_total.labels(*tun).inc()
        if demoted:
            self._demoted.add(key)
        else:
            self._demoted.discard(key)

    def rekeyed(self, namespace: str, name: str, sa: str) -> None:
        """charon reported a rekey of the tunnel's IKE or CHILD SA (a tunnel of this node:
        the caller knows; it may come before the tunnel's first report)."""
        if sa in SA_KINDS:
            self.rekeys_total.labels(*self._start(namespace, name), sa).inc()

    def ike_failed(self, namespace: str, name: str) -> None:
        """charon logged a negotiation failure of a tunnel of this node."""
        self.ike_failures_total.labels(*self._start(namespace, name)).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Remove every series of a tunnel this agent no longer configures."""
        if (namespace, name) not in self._known:
            return
        self._known.discard((namespace, name))
        self._demoted.discard((namespace, name))
        for peer in self._bgp_peers.pop((namespace, name), set()):
            self._forget_bgp_peer(namespace, name, peer)
        tun = (namespace, name, self.node)
        for metric in (
            self.received_bytes, self.sent_bytes, self.received_packets, self.sent_packets,
            self.on_demand, self.established, self.ike_failures_total, self.failovers_total,
            self.probe_failing,
        ):  # fmt: skip
            self._remove(metric, *tun)
        per_state: tuple[tuple[Gauge | Counter, tuple[str, ...]], ...] = (
            (self.ike_state, IKE_STATES),
            (self.child_state, CHILD_STATES),
            (self.routes, ROUTE_STATES),
            (self.rekeys_total, SA_KINDS),
            (self.probes_total, PROBE_RESULTS),
        )
        for metric, values in per_state:
            for value in values:
                self._remove(metric, *tun, value)

    @staticmethod
    def _remove(metric: Gauge | Counter, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)
