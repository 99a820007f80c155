"""Prometheus metrics of the operator, in a registry of its own (no process-global state).

Gauges of the view (`controller.gauges` refreshes them) carry `node`, and `ready` or
nothing else: per-node counts, never a series per tunnel (the agents export those).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_TOTAL = Counter(
    "routevpn_operator_reconcile_total", "Tunnel reconciliations.", registry=REGISTRY
)
RECONCILE_ERRORS = Counter(
    "routevpn_operator_reconcile_errors_total",
    "Tunnel reconciliations that failed (retried with a delay).",
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "routevpn_operator_reconcile_duration_seconds",
    "Time to reconcile one tunnel, API writes included.",
    registry=REGISTRY,
)
API_WRITES = Counter(
    "routevpn_operator_api_writes_total",
    "Writes to the API server, by kind of write.",
    ["kind"],
    registry=REGISTRY,
)
TUNNELS = Gauge(
    "routevpn_tunnels",
    "VpnTunnels by the node they are placed on (empty: none yet) and their Ready "
    "condition (True, False, Unknown).",
    ["node", "ready"],
    registry=REGISTRY,
)
AGENT_LIVE = Gauge(
    "routevpn_node_agent_live",
    "1 while the node's agent renews its liveness Lease, 0 once it ran out or is gone; "
    "for every node with a Lease or with tunnels placed on it.",
    ["node"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "routevpn_operator_leader",
    "1 while this replica holds the operator's Lease and may act (place, allocate), else 0.",
    registry=REGISTRY,
)
