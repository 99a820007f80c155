"""The operator's gauges of its view: tunnels by node and Ready, each node's agent."""

from __future__ import annotations

from typing import Any

from routevpn.api import naming
from routevpn.controller import gauges
from routevpn.controller.metrics import REGISTRY
from routevpn.controller.model import tunnel_from_body
from routevpn.controller.store import Store

SPEC = {
    "remote": {"address": "198.51.100.1"},
    "auth": {"type": "psk", "psk": {"secretRef": {"name": "s"}}},
}


def tunnel(name: str, node: str | None, ready: str | None) -> dict[str, Any]:
    labels = {naming.NODE_LABEL: node} if node else {}
    status: dict[str, Any] = {"node": node} if node else {}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": ready, "reason": "X", "message": "x"}]
    meta = {"namespace": "ns", "name": name, "resourceVersion": "1", "labels": labels}
    return {"metadata": meta, "spec": {**SPEC, "nodeName": node or "x"}, "status": status}


def lease(node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": naming.agent_lease_name(node), "namespace": "routevpn"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": "t1"},
    }


def store_of(*bodies: dict[str, Any]) -> Store:
    store = Store()
    for body in bodies:
        store.put_tunnel(tunnel_from_body(body))
    return store


def test_tunnels_by_node_and_ready() -> None:
    store = store_of(
        tunnel("a1", "node-a", "True"), tunnel("a2", "node-a", "True"),
        tunnel("a3", "node-a", "False"), tunnel("b1", "node-b", None),
        tunnel("u1", None, "False"),
    )  # fmt: skip
    tunnels, _ = gauges.count(store, now=0.0)
    assert tunnels == {("node-a", "True"): 2, ("node-a", "False"): 1,
                       ("node-b", "Unknown"): 1, ("", "False"): 1}  # fmt: skip


def test_agent_liveness_per_node_with_tunnels_or_a_lease() -> None:
    store = store_of(tunnel("a1", "node-a", "True"), tunnel("b1", "node-b", "True"))
    _, live = gauges.count(store, now=0.0)
    assert live == {"node-a": True, "node-b": True}  # nothing listed yet: all count as live
    store.agents.seen("list", [lease("node-a"), lease("node-c")], now=0.0)
    _, live = gauges.count(store, now=10.0)
    assert live == {"node-a": True, "node-b": False, "node-c": True}
    _, live = gauges.count(store, now=100.0)  # node-a's and node-c's Leases ran out
    assert live == {"node-a": False, "node-b": False, "node-c": False}


def test_refresh_leaves_no_stale_series() -> None:
    gauges.refresh(store_of(tunnel("a1", "node-gone", "True")))
    assert (
        REGISTRY.get_sample_value("routevpn_tunnels", {"node": "node-gone", "ready": "True"}) == 1
    )
    gauges.refresh(store_of(tunnel("a1", "node-new", "True")))
    assert (
        REGISTRY.get_sample_value("routevpn_tunnels", {"node": "node-gone", "ready": "True"})
        is None
    )
    assert REGISTRY.get_sample_value("routevpn_tunnels", {"node": "node-new", "ready": "True"}) == 1
    assert REGISTRY.get_sample_value("routevpn_tunnels", {"node": "", "ready": "True"}) == 0
