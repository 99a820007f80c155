"""The node's BIRD, as a pass sees it: desired sessions in, session facts and status out.

Each pass renders one configuration from every BGP session of the node's tunnels
(`bird_config.render`), has the writer apply it (nothing is written or asked when the
text is the one BIRD runs), then reads ``show protocols all`` back. A node whose tunnels
ask for no BGP never talks to BIRD: it needn't run one. Without BIRD (no socket
configured, or it doesn't answer), only the BGP tunnels say so, as `BgpEstablished`
False with reason `DaemonUnreachable`; the rest of every tunnel is unaffected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, Final, Protocol

from routevpn.dataplane.bird import BirdClient, BirdConfigError, BirdError, BirdUnreachableError
from routevpn.dataplane.bird_config import BirdSettings, render
from routevpn.dataplane.bird_facts import BGP_STATES, BgpSessionFacts, by_protocol
from routevpn.dataplane.bird_writer import BirdConfigWriter, Configurable
from routevpn.dataplane.plan import BgpPlan, PlanError

log = logging.getLogger(__name__)

CONDITION: Final = "BgpEstablished"
UNREACHABLE: Final = "DaemonUnreachable"
#: BIRD refused the rendered configuration (a bug of the renderer, or a BIRD too old):
#: it keeps running the previous one.
REJECTED: Final = "ConfigRejected"
PREFIX_LIMIT: Final = "PrefixLimit"
DOWN: Final = "Down"


@dataclass(frozen=True, slots=True)
class BgpView:
    """What BIRD reported in one pass: its sessions by protocol, or why there are none."""

    sessions: Mapping[str, BgpSessionFacts] = field(default_factory=dict)
    problem: str | None = None
    reason: str = UNREACHABLE


@dataclass(frozen=True, slots=True)
class BgpReport:
    """One tunnel's BGP: its condition's status/reason/message and status.bgp.sessions."""

    status: str
    reason: str
    message: str
    sessions: tuple[dict[str, Any], ...] = ()

    @property
    def established(self) -> bool:
        """True when every session of the tunnel is Established."""
        return self.status == "True"


class BirdLike(Configurable, Protocol):
    """What the agent needs of `BirdClient` (an in-memory fake in unit tests)."""

    async def protocols(self) -> list[BgpSessionFacts]:
        """The BGP sessions BIRD has."""
        ...

    async def close(self) -> None:
        """Drop the connection."""
        ...


class NodeBird:
    """The agent's side of the node's BIRD: configure it, read it back."""

    def __init__(self, client: BirdLike | None, config_dir: Path | str) -> None:
        self.client = client
        self.writer = BirdConfigWriter(Path(config_dir), client) if client else None
        #: True once a pass had BGP sessions: from then on an empty set is rendered too,
        #: so the last tunnel's sessions go when it goes
        self.used = False

    async def sync(self, plans: Sequence[BgpPlan], settings: BirdSettings) -> BgpView:
        """Make BIRD run `plans` (all the node's sessions) and read its sessions back."""
        if not plans and not self.used:
            return BgpView()
        if self.client is None or self.writer is None:
            return BgpView(
                problem="BGP is not enabled on this node's release (chart value bgp.enabled: "
                "no BIRD beside charon)"
            )
        self.used = True
        problem: BgpView | None = None
        try:
            await self.writer.apply(render(plans, settings))
        except BirdUnreachableError as e:
            return BgpView(problem=f"BIRD does not answer: {e}")
        except (BirdConfigError, PlanError) as e:
            log.error("BIRD refused the node's configuration, keeps the previous: %s", e)
            problem = BgpView(problem=str(e), reason=REJECTED)
        try:
            sessions = by_protocol(await self.client.protocols())
        except BirdError as e:
            return BgpView(problem=f"BIRD does not answer: {e}")
        if problem is not None:
            return BgpView(sessions, problem.problem, REJECTED)
        return BgpView(sessions)

    @classmethod
    def at(cls, socket: str | None, config_dir: Path | str) -> NodeBird:
        """The node's BIRD at control socket `socket` (None: BGP not enabled here)."""
        return cls(BirdClient(socket) if socket else None, config_dir)

    async def close(self) -> None:
        """Drop the control connection."""
        if self.client is not None:
            await self.client.close()


def session_wire(plan: BgpPlan, facts: BgpSessionFacts | None) -> dict[str, Any]:
    """One entry of status.bgp.sessions (camelCase, as on the wire)."""
    if facts is None:
        return {"peerAddress": str(plan.peer_address), "state": DOWN}
    wire: dict[str, Any] = {
        "peerAddress": str(plan.peer_address),
        "state": state_of(facts),
        "prefixes": {
            "received": facts.received,
            "accepted": facts.accepted,
            "advertised": facts.advertised,
        },
        "refused": facts.refused,
    }
    if facts.since is not None:
        wire["since"] = facts.since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if facts.last_error:
        wire["lastError"] = facts.last_error
    return wire


def state_of(facts: BgpSessionFacts) -> str:
    """The session's state as status and the condition's reason name it."""
    if facts.prefix_limit:
        return PREFIX_LIMIT
    return facts.bgp_state if facts.bgp_state in BGP_STATES else DOWN


def report(ref: str, plans: Sequence[BgpPlan], view: BgpView) -> BgpReport | None:
    """The tunnel's BgpEstablished condition and sessions; None without BGP sessions."""
    if not plans:
        return None
    if view.problem is not None and not view.sessions:
        return BgpReport("False", view.reason, f"tunnel {ref}: {view.problem}")
    pairs = [(p, view.sessions.get(p.protocol)) for p in plans]
    wires = tuple(session_wire(p, f) for p, f in pairs)
    down = [(p, f) for p, f in pairs if f is None or not f.established]
    if not down:
        peers = ", ".join(str(p.peer_address) for p in plans)
        return BgpReport("True", "Established", f"tunnel {ref}: Established with {peers}", wires)
    plan, facts = down[0]
    if facts is None:
        reason = view.reason if view.problem else DOWN
        detail = view.problem or "the session is not in BIRD's configuration yet"
        return BgpReport("False", reason, f"tunnel {ref}: {plan.peer_address}: {detail}", wires)
    reason = state_of(facts)
    error = f": {facts.last_error}" if facts.last_error else ""
    message = f"tunnel {ref}: {plan.peer_address} is {facts.bgp_state}{error}"
    if reason == PREFIX_LIMIT:
        message += f" (more than {plan.max_prefixes} prefixes accepted: the session stays down)"
    return BgpReport("False", reason, message, wires)
