"""The agent's conditions, computed from what one reconcile pass saw. Pure, no I/O.

Each condition is set on the first visit (Unknown is a state), in bring-up order:
Configured → IkeEstablished → ChildSaInstalled → RoutesInstalled, and TrafficFlowing
beside them. A condition that can't be judged because an earlier one is not True says
so (Unknown, Pending) rather than guessing. Reasons are one CamelCase word: those of
`routevpn.api.conditions.Reason`, or the data plane's (`dataplane.reasons`, safety
findings, error classes), which tools match on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from routevpn.agent import selectors as sel
from routevpn.agent.traffic import Traffic
from routevpn.api import naming
from routevpn.api.conditions import ConditionType, Reason, Status
from routevpn.dataplane import errors
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts
from routevpn.dataplane.plan import TunnelPlan


@dataclass(frozen=True, slots=True)
class Cond:
    """One condition to report (without the timestamps `status.merge` adds)."""

    type: ConditionType
    status: Status
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Problem:
    """Why the node could not be made to match the plan: reason and message."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything one pass learned about one tunnel, as plain data.

    `problem` is set when planning was blocked, a safety check refused the plan or the
    driver raised; `failure` is charon's latest failure for the connection (from its
    events); `ike` is the connection's best IKE SA (ESTABLISHED first), if any.
    """

    mode: Literal["route", "policy"]
    plan: TunnelPlan | None = None
    problem: Problem | None = None
    problem_status: Status = Status.FALSE
    failure: Problem | None = None
    ike: IkeSaFacts | None = None
    traffic: Traffic | None = None
    start_action: str = "start"
    probe: str | None = None  # the health probe's word, when it fails while the SA is up
    children: tuple[ChildSaFacts, ...] = field(default=())


def problem_of(exc: errors.DataplaneError) -> Problem:
    """A driver exception as a condition reason and message (it already names the tunnel)."""
    if isinstance(exc, errors.CharonUnavailableError):
        return Problem(
            Reason.CHARON_UNAVAILABLE,
            f"{exc}; is the node's charon running and its VICI socket shared with the agent?",
        )
    if isinstance(exc, errors.LinkNotOwnedError):
        return Problem(Reason.INTERFACE_NAME_IN_USE, str(exc))
    if isinstance(exc, errors.RouteNotOwnedError):
        return Problem(Reason.ADDRESS_CONFLICT, str(exc))
    if isinstance(exc, errors.NetlinkOperationError | errors.SysctlError):
        return Problem(Reason.KERNEL_ERROR, str(exc))
    return Problem(exc.reason, str(exc))


def best_ike(sas: list[IkeSaFacts], conn: str) -> IkeSaFacts | None:
    """The IKE SA to report for `conn`: an ESTABLISHED one, the newest, else the newest."""
    mine = [sa for sa in sas if sa.conn == conn]
    if not mine:
        return None

    def key(sa: IkeSaFacts) -> tuple[bool, int]:
        uid = int(sa.uniqueid) if sa.uniqueid.isdigit() else 0
        return (sa.state == "ESTABLISHED", uid)

    return max(mine, key=key)


def best_child(ike: IkeSaFacts | None, conn: str) -> ChildSaFacts | None:
    """The CHILD SA to report: an INSTALLED one named `conn`, the newest."""
    if ike is None:
        return None
    mine = [c for c in ike.children if c.name == conn]
    if not mine:
        return None

    def key(c: ChildSaFacts) -> tuple[bool, int]:
        uid = int(c.uniqueid) if c.uniqueid.isdigit() else 0
        return (c.state == "INSTALLED", uid)

    return max(mine, key=key)


def _configured(obs: Observation) -> Cond:
    t = ConditionType.CONFIGURED
    if obs.problem is not None:
        return Cond(t, obs.problem_status, obs.problem.reason, obs.problem.message)
    assert obs.plan is not None
    plan = obs.plan
    if plan.link is not None:
        what = (
            f"interface {plan.link.name} ({plan.link.kind}, mark {plan.link.mark}), "
            f"{len(plan.addresses)} address(es), {len(plan.routes)} route(s) and "
        )
    else:
        what = "policy-based "
    return Cond(t, Status.TRUE, Reason.APPLIED, f"{what}connection {plan.conn.name} are in place")


def _algorithms(sa: IkeSaFacts | ChildSaFacts) -> str:
    parts = [f"{sa.encr_alg}-{sa.encr_keysize}" if sa.encr_keysize else sa.encr_alg]
    parts += [sa.integ_alg]
    if isinstance(sa, IkeSaFacts):
        parts.append(sa.prf_alg)
    parts.append(sa.dh_group)
    return "/".join(x for x in parts if x)


def _ike(obs: Observation, configured: Cond) -> Cond:
    t = ConditionType.IKE_ESTABLISHED
    if configured.status is not Status.TRUE:
        return Cond(t, Status.UNKNOWN, Reason.PENDING, "waiting until the tunnel is configured")
    ike = obs.ike
    if ike is not None and ike.state == "ESTABLISHED":
        algs = _algorithms(ike)
        return Cond(
            t,
            Status.TRUE,
            Reason.ESTABLISHED,
            f"IKEv{ike.version or '?'} SA with {ike.remote_host or 'the peer'} established"
            + (f" ({algs})" if algs else ""),
        )
    if obs.failure is not None:
        return Cond(t, Status.FALSE, obs.failure.reason, obs.failure.message)
    if ike is not None:
        return Cond(
            t,
            Status.UNKNOWN,
            Reason.CONNECTING,
            f"IKE SA is {ike.state}: negotiating with the peer",
        )
    if obs.start_action == "start":
        return Cond(t, Status.UNKNOWN, Reason.CONNECTING, "initiating the IKE SA")
    return Cond(
        t,
        Status.FALSE,
        Reason.DOWN,
        f"no IKE SA; with start action {obs.start_action!r} it comes up when "
        + ("traffic needs it" if obs.start_action == "trap" else "the peer initiates"),
    )


def _child(obs: Observation, ike: Cond, conn: str) -> Cond:
    t = ConditionType.CHILD_SA_INSTALLED
    names = sel.expected(obs.plan, conn)
    sas = sel.children(obs.ike, obs.plan, conn)
    up = [c for c in sas if c.state == "INSTALLED"]
    if up and len(up) == len(names):
        return _installed(obs, up)
    if ike.status is not Status.TRUE:
        return Cond(t, Status.UNKNOWN, Reason.PENDING, "waiting for the IKE SA")
    if obs.failure is not None:
        return Cond(t, Status.FALSE, obs.failure.reason, obs.failure.message)
    if len(names) == 1:
        state = sas[0].state if sas else "not there yet"
        return Cond(t, Status.UNKNOWN, Reason.INSTALLING, f"CHILD SA is {state}")
    states = {c.name: c.state for c in sas}
    each = ", ".join(f"{_family_of(n)} {states.get(n, 'not there yet')}" for n in names)
    return Cond(t, Status.UNKNOWN, Reason.INSTALLING, f"CHILD SAs (one per family): {each}")


def _family_of(name: str) -> str:
    return "IPv6" if name.endswith(naming.IPV6_CHILD_SUFFIX) else "IPv4"


def _installed(obs: Observation, up: list[ChildSaFacts]) -> Cond:
    """Every CHILD SA the tunnel expects is installed: True, unless the peer narrowed the
    selectors so that a family the tunnel routes has none (`agent.selectors`)."""
    t = ConditionType.CHILD_SA_INSTALLED
    spis = [f"SPIs in {c.spi_in} out {c.spi_out}" for c in up]
    if len(up) == 1:
        msg = f"ESP SA installed, {spis[0]}"
    else:
        msg = "ESP SAs installed, " + ", ".join(
            f"{_family_of(c.name)} {s}" for c, s in zip(up, spis, strict=True)
        )
    msg += f" ({_algorithms(up[0])})" if up[0].encr_alg else ""
    found = sel.narrowed(obs.plan, up) if obs.plan is not None else None
    if found is None:
        return Cond(t, Status.TRUE, Reason.INSTALLED, msg)
    lost, said = found
    if not lost:
        return Cond(t, Status.TRUE, Reason.INSTALLED, f"{msg}; {said} (no route of it here)")
    hint = "" if len(up) > 1 else "; spec.child.perFamily: true asks for one CHILD SA per family"
    return Cond(t, Status.FALSE, Reason.TRAFFIC_SELECTORS_NARROWED, f"{said}; {msg}{hint}")


def _routes(obs: Observation, configured: Cond) -> Cond:
    t = ConditionType.ROUTES_INSTALLED
    if obs.mode == "policy":
        return Cond(
            t,
            Status.TRUE,
            Reason.NOT_APPLICABLE,
            "policy mode: the kernel's IPsec policies, not routes, select the traffic",
        )
    if configured.status is Status.TRUE:
        assert obs.plan is not None and obs.plan.link is not None
        routes = ", ".join(str(r.dst) for r in obs.plan.routes) or "none requested"
        probe = f"; {obs.probe}" if obs.probe else ""
        msg = f"routes via {obs.plan.link.name}: {routes}{probe}"
        return Cond(t, Status.TRUE, Reason.INSTALLED, msg)
    if configured.status is Status.FALSE:
        return Cond(t, Status.FALSE, configured.reason, configured.message)
    return Cond(t, Status.UNKNOWN, Reason.PENDING, "waiting until the tunnel is configured")


def _traffic(obs: Observation, child: Cond) -> Cond:
    t = ConditionType.TRAFFIC_FLOWING
    if child.status is not Status.TRUE or obs.traffic is None:
        return Cond(t, Status.UNKNOWN, Reason.PENDING, "waiting for the CHILD SA")
    return Cond(t, obs.traffic.status, obs.traffic.reason, obs.traffic.message)


#: "No news" reasons that must not replace a failure already reported (see below).
_NO_NEWS = frozenset({Reason.CONNECTING, Reason.INSTALLING})


def keep_known_failures(new: list[Cond], previous: Iterable[Mapping[str, Any]]) -> list[Cond]:
    """Keep a reported IKE/CHILD failure while nothing new is known about it.

    charon tells why a negotiation failed once, as it happens; an agent that restarts
    (or a charon that keeps retrying quietly) has no news, only "still not up". That is
    no reason to turn a False with a precise reason back into Unknown (and write, and
    emit an Event): the failure stands until the SA comes up or another failure shows.
    """
    old = {str(c.get("type")): c for c in previous}
    out: list[Cond] = []
    for c in new:
        prev = old.get(c.type.value)
        sticky = c.type in (ConditionType.IKE_ESTABLISHED, ConditionType.CHILD_SA_INSTALLED)
        if (
            sticky
            and prev is not None
            and c.status is Status.UNKNOWN
            and c.reason in _NO_NEWS
            and prev.get("status") == Status.FALSE.value
        ):
            c = Cond(c.type, Status.FALSE, str(prev.get("reason")), str(prev.get("message")))
        out.append(c)
    return out


def compute(obs: Observation, conn: str) -> list[Cond]:
    """The five agent conditions for one observation, in bring-up order."""
    configured = _configured(obs)
    ike = _ike(obs, configured)
    child = _child(obs, ike, conn)
    return [configured, ike, child, _routes(obs, configured), _traffic(obs, child)]
