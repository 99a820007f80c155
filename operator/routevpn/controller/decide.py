"""The decision for one tunnel: placement, allocation, secrets, the move protocol. Pure.

`decide` looks at one tunnel and the operator's view of the world and says what to
write; the worker only sends it. The move protocol with the node agent:

* the label `routevpn.io/node` names the node whose agent must act now; `status.node`
  names where the tunnel is placed. An agent configures when both name it and tears down
  when only the label does (or the tunnel is being deleted), then drops its finalizer;
* to move from A to B: status.node := B (Scheduled=False, Scheduling), wait for the
  agent finalizer to go (A tore down), then label := B. A node that is gone (deleted, or
  NotReady for good) cannot tear down, nor can a Ready node whose agent is not live (no
  renewed liveness Lease: the chart was uninstalled, the node left the agent's
  nodeSelector; `controller.liveness`): after a bounded wait the operator drops the
  agent's finalizer itself and says in a Warning Event what may be left on the node;
* a tunnel that can't be placed (no node, a conflict) loses its label the same way, so
  nothing half-applied is left on a node;
* a bad Secret (missing, invalid) keeps a tunnel that never ran unplaced. One already
  running stays where it is with its label, allocation and last delivered Secret
  (Scheduled=False says why): nothing that works is torn down over a Secret a person
  is fixing. Only if it must move as well does it go the unplaced way (the new node
  has no material to start from).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from routevpn.api import naming
from routevpn.api.conditions import ConditionType, Reason, Status
from routevpn.api.fields import Mode
from routevpn.api.spec import VpnTunnelSpec
from routevpn.controller import allocation, bundle, placement, policy
from routevpn.controller.liveness import AgentView
from routevpn.controller.model import DeliveredRecord, NodeRecord, TunnelRecord
from routevpn.controller.status import Scheduled, changed, desired_status

NORMAL = "Normal"
WARNING = "Warning"
#: Event reason when the operator drops the agent's finalizer for a node that is gone.
NODE_GONE = "NodeGone"
#: Event reason when it drops it for a node that is there but has no live agent.
AGENT_GONE = "AgentGone"
#: Seconds past a computed deadline to look again (a timer firing a hair early must not
#: find the wait not quite over and set another).
_LATE = 0.05


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """The decision's knobs (from the command line)."""

    routevpn_namespace: str
    orphan_wait_seconds: float = 60.0
    not_ready_grace_seconds: float = 60.0
    alloc_min: int = naming.ALLOC_MIN
    alloc_max: int = naming.ALLOC_MAX
    #: A namespace no VpnTunnelPolicy selects: "deny" its tunnels, or "allow" them.
    without_policy: str = "deny"
    #: (what, CIDR) of the networks the command line protects (pod, service, node, API).
    protected: tuple[tuple[str, str], ...] = ()
    #: Namespaces whose tunnels this operator serves; None: every namespace.
    namespaces: frozenset[str] | None = None

    def serves(self, namespace: str) -> bool:
        """Does this operator serve tunnels (and read Secrets) in `namespace`?"""
        return self.namespaces is None or namespace in self.namespaces


@dataclass(frozen=True, slots=True)
class World:
    """What `decide` may look at besides the tunnel itself."""

    nodes: Mapping[str, NodeRecord]
    #: Claims of the other tunnels placed (or being placed) on a node.
    holders_on: Callable[[str], Iterable[allocation.Holder]]
    #: The user's referenced Secrets, by name, in the tunnel's namespace.
    user_secrets: Mapping[str, bundle.UserSecret]
    delivered: DeliveredRecord | None
    now: datetime
    #: monotonic seconds since the operator started waiting on the agent, if it is waiting.
    waiting_for: float | None
    settings: OperatorSettings
    #: Protected networks and the cluster admin's VpnTunnelPolicies.
    policy: policy.PolicyView
    #: Which nodes have a live agent (nothing known by default: every agent is live).
    agents: AgentView = field(default_factory=AgentView)


@dataclass
class Decision:
    """What to write for one tunnel (None / False: nothing)."""

    status: dict[str, Any] | None = None
    status_changed: bool = False
    add_operator_finalizer: bool = False
    remove_operator_finalizer: bool = False
    remove_agent_finalizer: bool = False
    #: The label to set; `label_changed` tells whether it differs (None removes it).
    label: str | None = None
    label_changed: bool = False
    secret: dict[str, Any] | None = None
    delete_secret: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)
    #: The operator now waits for the agent (start the bounded-wait clock), or stopped.
    waiting: bool = False
    #: Seconds after which to look again even if nothing changes (a bounded wait).
    requeue_after: float | None = None
    #: Released: the tunnel is gone, forget its allocation.
    released: bool = False


def node_gone(nodes: Mapping[str, NodeRecord], name: str, now: datetime, grace: float) -> bool:
    """A node that will not tear anything down: deleted, or NotReady for good."""
    node = nodes.get(name)
    return node is None or placement.down_for_good(node, now, grace)


def _agent_wait(rec: TunnelRecord, old: str, w: World, d: Decision, elapsed: float) -> bool:
    """Wait for the agent of `old` to drop its finalizer; True when it is (or is made) gone.

    Bounded only when nothing on `old` can tear down: the node is gone, or its agent has
    not been live for `orphan_wait_seconds` of this wait."""
    if not rec.has_agent_finalizer:
        return True
    s = w.settings
    if node_gone(w.nodes, old, w.now, s.not_ready_grace_seconds):
        message = (
            f"node {old} is gone: its state for this tunnel could not be cleaned; "
            f"removed the agent finalizer after {s.orphan_wait_seconds:g}s"
        )
        return _bounded(d, elapsed, s.orphan_wait_seconds, NODE_GONE, message)
    down = w.agents.not_live_for(old, elapsed)
    if down is None:
        d.waiting = True
        # A Lease running out comes as no event: look again when this one would be over.
        if (runs_out := w.agents.runs_out_in(old)) is not None:
            d.requeue_after = runs_out + s.orphan_wait_seconds + _LATE
        return False
    return _bounded(d, down, s.orphan_wait_seconds, AGENT_GONE, _agent_gone(rec, old, s))


def _bounded(d: Decision, waited: float, limit: float, reason: str, message: str) -> bool:
    """Wait until `waited` reaches `limit`; then drop the agent's finalizer and say why."""
    if waited < limit:
        d.waiting = True
        d.requeue_after = limit - waited + _LATE
        return False
    d.remove_agent_finalizer = True
    d.events.append((WARNING, reason, message))
    return True


def _agent_gone(rec: TunnelRecord, node: str, s: OperatorSettings) -> str:
    """What may be left on `node` when its agent's finalizer goes without a teardown."""
    iface = rec.status.get("interface") if rec.status_node == node else None
    name = iface.get("name") if isinstance(iface, Mapping) else None
    link = f"interface {name} " if name else "the interface "
    return (
        f"the agent of node {node} has not been live for {s.orphan_wait_seconds:g}s (no "
        f"renewed Lease {naming.agent_lease_name(node)}): removed its finalizer without a "
        f"teardown. May remain on node {node}: {link}(alias "
        f"{naming.link_alias(rec.namespace, rec.name)}) with its addresses and routes, "
        f"and charon's connection {naming.conn_name(rec.namespace, rec.name)} with its "
        "SAs and key; docs/install.md says how to remove them"
    )


def decide(rec: TunnelRecord, current: Mapping[str, Any], w: World, elapsed: float) -> Decision:
    """What to do for tunnel `rec`; `current` is its status with the operator's own last
    writes laid over (so write lag never causes a second write); `elapsed` is how long
    the operator has been waiting on the agent (0 when it was not)."""
    d = Decision()
    if rec.deleting:
        return _deleting(rec, w, d, elapsed)
    if naming.OPERATOR_FINALIZER not in rec.finalizers:
        d.add_operator_finalizer = True

    sched, target, iface, local = _target(rec, current, w)
    label = rec.label_node
    status_node: str | None = target
    new_label: str | None = label
    if target is not None:
        if label is None or label == target:
            new_label = target
        elif _agent_wait(rec, label, w, d, elapsed):
            new_label = target
            d.events.append((NORMAL, "Moved", f"moved from node {label} to node {target}"))
        else:
            sched = Scheduled(
                Status.FALSE, Reason.SCHEDULING, f"moving from node {label} to node {target}"
            )
    elif label is not None and _agent_wait(rec, label, w, d, elapsed):
        new_label = None

    status = desired_status(current, rec.generation, sched, status_node, local, iface, w.now)
    d.status = status
    d.status_changed = changed(current, status)
    d.label = new_label
    d.label_changed = new_label != label
    _events(current, sched, d)
    _secret(rec, w, new_label, d)
    return d


def _target(
    rec: TunnelRecord, current: Mapping[str, Any], w: World
) -> tuple[Scheduled, str | None, dict[str, object] | None, str | None]:
    """Scheduled, the node to run on, its interface and local address (or why nowhere)."""
    spec = rec.spec
    if spec is None:
        return Scheduled(Status.FALSE, Reason.INVALID_SPEC, rec.spec_error or ""), None, None, None
    verdict = policy.evaluate(spec, rec.namespace, w.policy)
    refused = _refused(spec, verdict, w)
    if refused is not None:
        return Scheduled(Status.FALSE, Reason.POLICY_VIOLATION, refused), None, None, None
    cur_node = current.get("node")
    eligible = {n: r for n, r in w.nodes.items() if verdict.node_allowed(r.labels)}
    where = placement.place(
        rec.ref,
        spec,
        str(cur_node) if cur_node else None,
        eligible,
        w.now,
        w.settings.not_ready_grace_seconds,
    )
    if where.node is None:
        return Scheduled(Status.FALSE, where.reason, where.message), None, None, None
    local = placement.local_address(spec, w.nodes.get(where.node))
    held = current.get("interface") if cur_node == where.node else None
    me = allocation.holder_for(rec.ref, rec.order, spec, held, local)
    others = list(w.holders_on(where.node))
    iface: dict[str, object] | None = None
    if spec.effective_mode is Mode.ROUTE:
        s = w.settings
        got = allocation.allocate(me, spec, others, s.alloc_min, s.alloc_max)
        if got.interface is None:
            return Scheduled(Status.FALSE, got.reason, got.message), None, None, None
        iface = got.interface
    if (lost := allocation.claim_conflict(me, others)) is not None:
        return Scheduled(Status.FALSE, lost.reason, lost.message), None, None, None
    made = bundle.build(spec, rec.namespace, w.user_secrets)
    if isinstance(made, bundle.SecretProblem):
        if rec.label_node is not None and rec.label_node == where.node == cur_node:
            # Already running there: tearing it down would cut traffic over a Secret
            # that may be fixed in a minute. The agent keeps the last delivered material.
            msg = (
                f"{made.message}; the tunnel keeps running on node {where.node} with the "
                "last delivered key material until the Secret is fixed"
            )
            return Scheduled(Status.FALSE, made.reason, msg), where.node, iface, local
        return Scheduled(Status.FALSE, made.reason, made.message), None, None, None
    return Scheduled(Status.TRUE, Reason.PLACED, where.message), where.node, iface, local


def _refused(spec: VpnTunnelSpec, verdict: policy.Verdict, w: World) -> str | None:
    """The policy's refusal, or a named node that is not a gateway node for the tunnel."""
    if not verdict.admitted:
        return verdict.message
    node = w.nodes.get(spec.node_name) if spec.node_name else None
    if node is not None and not verdict.node_allowed(node.labels):
        return (
            f"spec.nodeName {node.name} is not a gateway node for this namespace: no "
            "VpnTunnelPolicy that admits the tunnel selects it (nodeSelector)"
        )
    return None


def _events(current: Mapping[str, Any], sched: Scheduled, d: Decision) -> None:
    """One Event per decision: when Scheduled's status, reason or message changes."""
    prev = next(
        (
            c
            for c in current.get("conditions") or []
            if isinstance(c, Mapping) and c.get("type") == ConditionType.SCHEDULED
        ),
        None,
    )
    if prev is not None and (prev.get("status"), prev.get("reason"), prev.get("message")) == (
        sched.status,
        sched.reason,
        sched.message,
    ):
        return
    kind = NORMAL if sched.status is Status.TRUE or sched.reason in _TRANSIENT else WARNING
    d.events.append((kind, sched.reason, sched.message))


_TRANSIENT = frozenset({Reason.SCHEDULING, Reason.PENDING})


def _secret(rec: TunnelRecord, w: World, label: str | None, d: Decision) -> None:
    """Deliver the material for the labelled node (or remove it when nothing is)."""
    spec = rec.spec
    made = bundle.build(spec, rec.namespace, w.user_secrets) if spec is not None else None
    if label is not None and isinstance(made, bundle.Bundle):
        have = w.delivered
        if have is None or have.node != label or have.content_hash != made.content_hash:
            d.secret = bundle.delivered_body(
                rec.namespace, rec.name, w.settings.routevpn_namespace, label, made
            )
    elif label is None and w.delivered is not None:
        d.delete_secret = True


def _deleting(rec: TunnelRecord, w: World, d: Decision, elapsed: float) -> Decision:
    """Deletion: the agent tears down first (bounded when its node is gone), then release."""
    if naming.OPERATOR_FINALIZER not in rec.finalizers:
        d.released = True
        return d
    old = rec.label_node or rec.status_node or ""
    if rec.has_agent_finalizer and not _agent_wait(rec, old, w, d, elapsed):
        return d
    if w.delivered is not None:
        d.delete_secret = True
    d.remove_operator_finalizer = True
    d.released = True
    return d
