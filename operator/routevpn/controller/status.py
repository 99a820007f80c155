"""The operator's part of status, as a server-side-apply body. Pure.

The operator owns Scheduled, Ready, node, localAddress, interface and observedGeneration;
an apply body must carry all of them every time (a field this manager owned and left out
would be removed). lastTransitionTime is kept when a condition's status did not change,
and `changed` tells whether a write is needed at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from routevpn.api import naming
from routevpn.api.conditions import ConditionType, Observed, Status, summarize_ready
from routevpn.api.status import condition_wire


@dataclass(frozen=True, slots=True)
class Scheduled:
    """The Scheduled condition the operator decided on."""

    status: Status
    reason: str
    message: str


def desired_status(
    current: Mapping[str, Any],
    generation: int,
    scheduled: Scheduled,
    node: str | None,
    local_address: str | None,
    interface: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status fields the operator applies (the `status` of the apply body)."""
    by_type = {
        str(c.get("type")): c for c in current.get("conditions") or [] if isinstance(c, Mapping)
    }
    sched = condition_wire(
        ConditionType.SCHEDULED,
        scheduled.status,
        scheduled.reason,
        scheduled.message,
        generation,
        by_type.get(ConditionType.SCHEDULED),
        now,
    )
    others = [Observed.from_wire(c) for t, c in by_type.items() if t != ConditionType.SCHEDULED]
    summary = summarize_ready([Observed.from_wire(sched), *others], generation)
    ready = condition_wire(
        ConditionType.READY,
        summary.status,
        summary.reason,
        summary.message,
        generation,
        by_type.get(ConditionType.READY),
        now,
    )
    out: dict[str, Any] = {"observedGeneration": generation, "conditions": [sched, ready]}
    if node is not None:
        out["node"] = node
    if local_address is not None:
        out["localAddress"] = local_address
    if interface is not None:
        out["interface"] = dict(interface)
    return out


OWNED_FIELDS = ("observedGeneration", "node", "localAddress", "interface")


def changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Does applying `desired` change anything the operator owns in `current`?"""
    for field in OWNED_FIELDS:
        if current.get(field) != desired.get(field):
            return True
    by_type = {
        str(c.get("type")): c for c in current.get("conditions") or [] if isinstance(c, Mapping)
    }
    for cond in desired["conditions"]:
        have = by_type.get(cond["type"])
        if have is None or any(have.get(k) != v for k, v in cond.items()):
            return True
    return False


def apply_body(namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
    """The whole server-side-apply document for the status subresource."""
    return {
        "apiVersion": naming.API_VERSION,
        "kind": naming.KIND,
        "metadata": {"namespace": namespace, "name": name},
        "status": dict(status),
    }
