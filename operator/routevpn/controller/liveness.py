"""Which nodes have a live agent: the agents' Leases, timed by the operator's own clock.

Each agent renews `routevpn-agent-<node>` (`agent.liveness`). A Lease counts as live
for its leaseDurationSeconds after the operator *saw* its renewTime change, measured on
the operator's monotonic clock, as client-go's leader election does: the agent's and
the operator's wall clocks may disagree by minutes, and renewTime is the agent's. The
price is caution after a restart (or a relist): every Lease counts as freshly renewed,
so a gone agent is noticed one lease duration later than it could be; never earlier.

A Lease is believed only when its name is the one `naming.agent_lease_name` gives its
holder: a Lease another writer made under another node's name says nothing (the chart's
node guard also keeps an agent to its own node's Lease).

Until the first listing has arrived, nothing is known: every agent counts as live (the
operator never releases a tunnel on a partial view).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from routevpn.api import naming


@dataclass(frozen=True, slots=True)
class AgentLease:
    """A node's liveness Lease as last seen, and when (operator's monotonic clock)."""

    node: str
    renew_time: str
    duration: float
    seen_renewed_at: float

    @property
    def runs_out_at(self) -> float:
        """When (monotonic) the agent stops counting as live unless it renews."""
        return self.seen_renewed_at + self.duration


@dataclass(frozen=True, slots=True)
class AgentView:
    """Agent liveness as the decision sees it: Leases by node, at monotonic time `now`."""

    leases: Mapping[str, AgentLease] = field(default_factory=dict)
    #: False until the first listing of Leases: then every agent counts as live.
    listed: bool = False
    now: float = 0.0

    def not_live_for(self, node: str, waited: float) -> float | None:
        """Seconds of the current wait (`waited` so far) through which `node`'s agent has
        not been live; None while it is live (or nothing is known yet)."""
        if not self.listed:
            return None
        lease = self.leases.get(node)
        if lease is None:
            return waited
        past = self.now - lease.runs_out_at
        return None if past < 0 else min(waited, past)

    def runs_out_in(self, node: str) -> float | None:
        """Seconds until `node`'s agent stops counting as live unless it renews (None:
        no Lease, or nothing known)."""
        lease = self.leases.get(node) if self.listed else None
        return None if lease is None else max(0.0, lease.runs_out_at - self.now)


def lease_from_body(
    body: Mapping[str, Any], now: float, before: AgentLease | None
) -> AgentLease | None:
    """The AgentLease of a Lease body seen at `now`, or None when it names no agent.

    `before`: the same Lease as seen last; its time of renewal is kept when renewTime and
    the duration have not changed (a relist or an unrelated update is not a renewal)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    node = str(spec.get("holderIdentity") or "")
    if not node or meta.get("name") != naming.agent_lease_name(node):
        return None
    renew = str(spec.get("renewTime") or "")
    try:
        duration = float(spec.get("leaseDurationSeconds") or 0)
    except (TypeError, ValueError):
        duration = 0.0
    if before is not None and (before.node, before.renew_time, before.duration) == (
        node, renew, duration,
    ):  # fmt: skip
        return before
    return AgentLease(node, renew, duration, now)


class AgentLeases:
    """The Leases seen so far, by Lease name (mutated from the event loop only)."""

    def __init__(self) -> None:
        self.listed = False
        self._by_name: dict[str, AgentLease] = {}

    def seen(self, kind: str, bodies: Iterable[Mapping[str, Any]], now: float) -> set[str]:
        """A listing (`kind` "list") or one change; the nodes whose Lease went or came."""
        before = dict(self._by_name)
        if kind == "list":
            self._by_name = {}
            self.listed = True
        for body in bodies:
            name = str((body.get("metadata") or {}).get("name", ""))
            got = lease_from_body(body, now, before.get(name))
            if kind == "DELETED" or got is None:
                self._by_name.pop(name, None)
            else:
                self._by_name[name] = got
        old = {lease.node for lease in before.values()}
        new = {lease.node for lease in self._by_name.values()}
        return old ^ new

    def view(self, now: float) -> AgentView:
        """What the decision looks at, at monotonic time `now`."""
        by_node = {lease.node: lease for lease in self._by_name.values()}
        return AgentView(by_node, self.listed, now)
