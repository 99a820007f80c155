"""What a reconcile pass works on: the agent's knowledge (`State`) and one tunnel's
state within a pass (`Work`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from routevpn.agent import conditions as cond
from routevpn.agent import failover as fo
from routevpn.api.conditions import Status
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane.plan import TunnelPlan
from routevpn.kube.client import Obj

Key = tuple[str, str]


@dataclass
class Work:
    """One tunnel's state within a pass."""

    key: Key
    obj: Obj
    tunnel: VpnTunnel | None = None
    plan: TunnelPlan | None = None
    problem: cond.Problem | None = None
    problem_status: Status = Status.FALSE
    routes: tuple[fo.RouteDecision, ...] = ()
    inner_mtu: int | None = None


@dataclass
class State:
    """What the agent knows: the watched objects and what it has configured."""

    tunnels: dict[Key, Obj] = field(default_factory=dict)
    secrets: dict[Key, Obj] = field(default_factory=dict)
    configured: set[Key] = field(default_factory=set)
