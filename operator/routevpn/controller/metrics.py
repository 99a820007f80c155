"""Prometheus metrics of the operator, in a registry of its own (no process-global state)."""

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
    "routevpn_tunnels", "VpnTunnels by their Ready condition.", ["ready"], registry=REGISTRY
)
LEADER = Gauge(
    "routevpn_operator_leader",
    "1 while this replica holds the operator's Lease and may act (place, allocate), else 0.",
    registry=REGISTRY,
)
