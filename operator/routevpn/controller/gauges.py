"""The operator's gauges of its view: tunnels per node and Ready state, agents' liveness.

Recomputed from the store as a whole every few seconds (`handlers`), so a node or a
Ready value that is gone leaves no stale series behind.
"""

from __future__ import annotations

import math
import time
from collections import Counter

from routevpn.api.conditions import ConditionType
from routevpn.controller.metrics import AGENT_LIVE, TUNNELS
from routevpn.controller.store import Store

READY_VALUES = ("True", "False", "Unknown")


def count(
    store: Store, now: float | None = None
) -> tuple[Counter[tuple[str, str]], dict[str, bool]]:
    """Tunnels by (node, Ready) and, per node with tunnels or a Lease, whether its agent
    is live at monotonic time `now` (until the first listing of Leases, every agent
    counts as live)."""
    tunnels: Counter[tuple[str, str]] = Counter()
    for key, rec in store.tunnels.items():
        status = store.effective(key)
        node = str(status.get("node") or rec.label_node or "")
        ready = "Unknown"
        for c in status.get("conditions") or []:
            if c.get("type") == ConditionType.READY:
                ready = str(c.get("status", "Unknown"))
        tunnels[(node, ready if ready in READY_VALUES else "Unknown")] += 1
    view = store.agents.view(time.monotonic() if now is None else now)
    nodes = {node for node, _ in tunnels if node} | set(view.leases)
    live = {node: view.not_live_for(node, math.inf) is None for node in nodes}
    return tunnels, live


def refresh(store: Store) -> None:
    """Set the gauges from the store's view now."""
    tunnels, live = count(store)
    TUNNELS.clear()
    for node in {node for node, _ in tunnels} | {""}:
        for ready in READY_VALUES:
            TUNNELS.labels(node, ready).set(tunnels[(node, ready)])
    AGENT_LIVE.clear()
    for node, up in live.items():
        AGENT_LIVE.labels(node).set(1 if up else 0)
