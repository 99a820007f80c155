"""Prometheus metrics of the agent (controller-runtime-like names) and per-tunnel gauges.

Counters of bytes and packets are charon's per-SA counters, which restart at zero on
every rekey, so they are exported as gauges of the current SA, not as counters.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class Metrics:
    """One registry with everything the agent exports on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Declared in this order, which is the order /metrics lists them in.
        self._declare_passes(self.registry)
        self._declare_writes(self.registry)
        self._declare_tunnels(self.registry)
        self._known: set[tuple[str, str]] = set()

    def _declare_passes(self, r: CollectorRegistry) -> None:
        """How many reconcile passes ran, how they ended, how long they took."""
        self.reconcile_total = Counter(
            "routevpn_agent_reconcile",
            "Reconcile passes of one tunnel, by result.",
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
            "Writes to the API server, by kind (status, finalizer, event).",
            ["kind"],
            registry=r,
        )
        self.events_limited_total = Counter(
            "routevpn_agent_events_limited",
            "Events left out by the per-tunnel limit (status carried the change), by type.",
            ["type"],
            registry=r,
        )
        self.dataplane_changes_total = Counter(
            "routevpn_agent_dataplane_changes",
            "Changes made to the node (netlink, charon), by what was changed.",
            ["what"],
            registry=r,
        )

    def _declare_tunnels(self, r: CollectorRegistry) -> None:
        """How many tunnels, and per tunnel (namespace, name): SA states and counters."""
        self.tunnels = Gauge("routevpn_agent_tunnels", "Tunnels this agent configures.", registry=r)
        labels = ["namespace", "name"]
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
        self.bytes_in = Gauge(
            "routevpn_tunnel_bytes_in", "Bytes received on the current CHILD SA.", labels,
            registry=r,
        )  # fmt: skip
        self.bytes_out = Gauge(
            "routevpn_tunnel_bytes_out", "Bytes sent on the current CHILD SA.", labels,
            registry=r,
        )  # fmt: skip
        self.packets_in = Gauge(
            "routevpn_tunnel_packets_in", "Packets received on the current CHILD SA.", labels,
            registry=r,
        )  # fmt: skip
        self.packets_out = Gauge(
            "routevpn_tunnel_packets_out", "Packets sent on the current CHILD SA.", labels,
            registry=r,
        )  # fmt: skip
        self.established = Gauge(
            "routevpn_tunnel_established_timestamp_seconds",
            "Unix time the IKE SA was established (absent while down).",
            labels,
            registry=r,
        )

    def tunnel(
        self,
        namespace: str,
        name: str,
        ike: IkeSaFacts | None,
        child: ChildSaFacts | None,
        now: float,
    ) -> None:
        """Set one tunnel's gauges from the SAs observed at unix time `now`."""
        self._known.add((namespace, name))
        ike_now = ike.state if ike is not None else "DOWN"
        for state in {*IKE_STATES, ike_now}:
            self.ike_state.labels(namespace, name, state).set(1 if state == ike_now else 0)
        child_now = child.state if child is not None else "DOWN"
        for state in {*CHILD_STATES, child_now}:
            self.child_state.labels(namespace, name, state).set(1 if state == child_now else 0)
        c = child
        self.bytes_in.labels(namespace, name).set(c.bytes_in if c else 0)
        self.bytes_out.labels(namespace, name).set(c.bytes_out if c else 0)
        self.packets_in.labels(namespace, name).set(c.packets_in if c else 0)
        self.packets_out.labels(namespace, name).set(c.packets_out if c else 0)
        if ike is not None and ike.state == "ESTABLISHED" and ike.established is not None:
            self.established.labels(namespace, name).set(int(now) - ike.established)
        else:
            self._remove(self.established, namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        """Remove every series of a tunnel this agent no longer configures."""
        if (namespace, name) not in self._known:
            return
        self._known.discard((namespace, name))
        for gauge in (self.bytes_in, self.bytes_out, self.packets_in, self.packets_out):
            self._remove(gauge, namespace, name)
        self._remove(self.established, namespace, name)
        for gauge, states in ((self.ike_state, IKE_STATES), (self.child_state, CHILD_STATES)):
            for state in states:
                self._remove(gauge, namespace, name, state)

    @staticmethod
    def _remove(gauge: Gauge, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
