"""Conditions: the vocabulary, and the `Ready` summary both writers agree on.

Kubernetes conventions: `conditions` is a list keyed by `type`; `reason` is one CamelCase
word, `message` is for people; every condition is set on the first visit (Unknown is a
state); `Ready` summarises the rest. The operator owns Scheduled and Ready, the agent the
data-plane conditions; each writes with its own server-side-apply field manager.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final


class ConditionType(enum.StrEnum):
    """Condition types, in the order a tunnel comes up."""

    SCHEDULED = "Scheduled"
    CONFIGURED = "Configured"
    IKE_ESTABLISHED = "IkeEstablished"
    CHILD_SA_INSTALLED = "ChildSaInstalled"
    ROUTES_INSTALLED = "RoutesInstalled"
    TRAFFIC_FLOWING = "TrafficFlowing"
    #: Only on tunnels with spec.bgp: every BGP session of the tunnel is Established.
    BGP_ESTABLISHED = "BgpEstablished"
    READY = "Ready"


class Status(enum.StrEnum):
    """A condition's status."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


#: Written by the operator (besides Ready).
OPERATOR_CONDITIONS: Final = (ConditionType.SCHEDULED,)
#: Written by the node agent.
AGENT_CONDITIONS: Final = (
    ConditionType.CONFIGURED,
    ConditionType.IKE_ESTABLISHED,
    ConditionType.CHILD_SA_INSTALLED,
    ConditionType.ROUTES_INSTALLED,
    ConditionType.TRAFFIC_FLOWING,
    ConditionType.BGP_ESTABLISHED,
)
#: Conditions that must be True for Ready, in order: the first that is not names the reason.
#: RoutesInstalled is reported True with reason NotApplicable in policy mode. TrafficFlowing
#: is not required: a quiet tunnel can carry traffic, and Ready means "traffic can flow";
#: TrafficFlowing=False is a warning beside Ready, not a failure of it.
READY_REQUIRES: Final = (
    ConditionType.SCHEDULED,
    ConditionType.CONFIGURED,
    ConditionType.IKE_ESTABLISHED,
    ConditionType.CHILD_SA_INSTALLED,
    ConditionType.ROUTES_INSTALLED,
)


class Reason(enum.StrEnum):
    """Every reason routevpn writes. CamelCase, one word, stable: tools match on them."""

    # positive
    READY = "Ready"
    PLACED = "Placed"
    APPLIED = "Applied"
    ESTABLISHED = "Established"
    INSTALLED = "Installed"
    FLOWING = "Flowing"
    NOT_APPLICABLE = "NotApplicable"
    # transient: on the way up (Argo CD shows these as Progressing)
    PENDING = "Pending"
    SCHEDULING = "Scheduling"
    CONFIGURING = "Configuring"
    CONNECTING = "Connecting"
    INSTALLING = "Installing"
    WAITING_FOR_AGENT = "WaitingForAgent"
    STALE = "Stale"
    # placement and allocation (operator)
    NO_MATCHING_NODE = "NoMatchingNode"
    NODE_NOT_READY = "NodeNotReady"
    NODE_NOT_FOUND = "NodeNotFound"
    KEY_IN_USE = "KeyInUse"
    IF_ID_IN_USE = "IfIdInUse"
    INTERFACE_NAME_IN_USE = "InterfaceNameInUse"
    ADDRESS_IN_USE = "AddressInUse"
    ALLOCATION_EXHAUSTED = "AllocationExhausted"
    ROUTE_IN_USE = "RouteInUse"
    IDENTITY_IN_USE = "IdentityInUse"
    POLICY_VIOLATION = "PolicyViolation"
    SECRET_MISSING = "SecretMissing"  # noqa: S105 - a reason, not a password
    SECRET_INVALID = "SecretInvalid"  # noqa: S105 - a reason, not a password
    INVALID_SPEC = "InvalidSpec"
    # data plane (agent)
    ADDRESS_CONFLICT = "AddressConflict"
    ROUTE_LOOP = "RouteLoop"
    PROTECTED_ROUTE = "ProtectedRoute"
    LOCAL_ADDRESS_MISSING = "LocalAddressMissing"
    KERNEL_ERROR = "KernelError"
    CHARON_UNAVAILABLE = "CharonUnavailable"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    NO_PROPOSAL_CHOSEN = "NoProposalChosen"
    TRAFFIC_SELECTORS_UNACCEPTABLE = "TrafficSelectorsUnacceptable"
    TRAFFIC_SELECTORS_NARROWED = "TrafficSelectorsNarrowed"
    PEER_IDENTITY_MISMATCH = "PeerIdentityMismatch"
    PEER_UNREACHABLE = "PeerUnreachable"
    DNS_RESOLUTION_FAILED = "DnsResolutionFailed"
    NO_TRAFFIC_RECEIVED = "NoTrafficReceived"
    DOWN = "Down"
    # BGP sessions (agent, BgpEstablished): BIRD's BGP states, and why a session is down
    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPEN_SENT = "OpenSent"
    OPEN_CONFIRM = "OpenConfirm"
    PREFIX_LIMIT = "PrefixLimit"
    DAEMON_UNREACHABLE = "DaemonUnreachable"
    CONFIG_REJECTED = "ConfigRejected"


#: Reasons that mean "not yet", not "broken".
TRANSIENT_REASONS: Final = frozenset(
    {
        Reason.PENDING,
        Reason.SCHEDULING,
        Reason.CONFIGURING,
        Reason.CONNECTING,
        Reason.INSTALLING,
        Reason.WAITING_FOR_AGENT,
        Reason.STALE,
    }
)


@dataclass(frozen=True, slots=True)
class Observed:
    """One condition as read back from status (the wire dict, parsed)."""

    type: str
    status: str
    reason: str
    message: str
    observed_generation: int | None = None

    @classmethod
    def from_wire(cls, data: Mapping[str, object]) -> Observed:
        """Parse one entry of `status.conditions`."""
        gen = data.get("observedGeneration")
        return cls(
            type=str(data.get("type", "")),
            status=str(data.get("status", Status.UNKNOWN)),
            reason=str(data.get("reason", "")),
            message=str(data.get("message", "")),
            observed_generation=int(gen) if isinstance(gen, int) else None,
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """The Ready condition to write."""

    status: Status
    reason: str
    message: str


def summarize_ready(conditions: Iterable[Observed], generation: int) -> Summary:
    """Ready is True only when every condition behind it is True for this generation.

    Otherwise its reason is the first thing that is not right, in bring-up order: a
    missing condition or one written for an older generation means the writer has not
    caught up yet (WaitingForAgent / Stale), a False one carries its own reason.
    """
    by_type = {c.type: c for c in conditions}
    for ctype in READY_REQUIRES:
        cond = by_type.get(ctype)
        if cond is None:
            reason = Reason.SCHEDULING if ctype is ConditionType.SCHEDULED else Reason.PENDING
            if ctype in AGENT_CONDITIONS:
                reason = Reason.WAITING_FOR_AGENT
            return Summary(Status.UNKNOWN, reason, f"{ctype} has not been reported yet")
        if cond.observed_generation is not None and cond.observed_generation < generation:
            return Summary(
                Status.UNKNOWN,
                Reason.STALE,
                f"{ctype} was reported for generation {cond.observed_generation}, "
                f"the spec is at {generation}",
            )
        if cond.status != Status.TRUE:
            status = Status.FALSE if cond.status == Status.FALSE else Status.UNKNOWN
            return Summary(status, cond.reason or Reason.PENDING, f"{ctype}: {cond.message}")
    return Summary(Status.TRUE, Reason.READY, _ready_message(by_type))


def _ready_message(by_type: Mapping[str, Observed]) -> str:
    """What was seen, no more: the SAs and routes are up; traffic only as TrafficFlowing saw.

    Ready means traffic can flow. Whether any did is TrafficFlowing's to say (it counts
    packets received through the CHILD SA): a tunnel whose SA counted nothing in is "up",
    never "carrying traffic".
    """
    routes = by_type.get(ConditionType.ROUTES_INSTALLED)
    selects = (
        "the kernel's IPsec policies select its traffic"
        if routes is not None and routes.reason == Reason.NOT_APPLICABLE
        else "its routes are installed"
    )
    up = f"IKE SA established, CHILD SA installed and {selects}"
    traffic = by_type.get(ConditionType.TRAFFIC_FLOWING)
    if traffic is not None and traffic.status == Status.TRUE:
        return f"{up}; packets arrive through the tunnel"
    if traffic is not None and traffic.status == Status.FALSE:
        return f"{up}; no traffic received through it lately (see TrafficFlowing)"
    return f"{up}; no traffic received through it yet"
