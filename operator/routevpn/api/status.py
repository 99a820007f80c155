"""`VpnTunnel.status`: what is true, written by the operator and the node agent.

Never a secret: no key, no PSK, no certificate body. SA facts are what `swanctl --list-sas`
shows; byte and packet counters are refreshed at a bounded period (metrics carry them live).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from routevpn.api.base import ApiModel
from routevpn.api.conditions import ConditionType, Status
from routevpn.api.fields import InterfaceType
from routevpn.api.timefmt import parse_k8s_time


class Condition(ApiModel):
    """One condition, per Kubernetes API conventions (metav1.Condition)."""

    type: ConditionType = Field(description="Condition type, e.g. Ready or IkeEstablished.")
    status: Status = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="One CamelCase word for machines, e.g. AuthenticationFailed.",
    )
    message: str = Field(max_length=32768, description="What is the matter, for people.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed for."
    )
    last_transition_time: datetime = Field(description="When status last changed.")


class Algorithms(ApiModel):
    """Negotiated algorithms of an SA."""

    encryption: str | None = Field(default=None, max_length=64, description="e.g. AES_GCM_16-256.")
    integrity: str | None = Field(
        default=None, max_length=64, description="e.g. HMAC_SHA2_384_192."
    )
    prf: str | None = Field(
        default=None, max_length=64, description="IKE only, e.g. PRF_HMAC_SHA2_384."
    )
    dh_group: str | None = Field(default=None, max_length=64, description="e.g. ECP_384.")


class IkeSaStatus(ApiModel):
    """The IKE SA as charon reports it."""

    state: str = Field(max_length=32, description="ESTABLISHED, CONNECTING, ... or DOWN.")
    established_at: datetime | None = Field(default=None, description="When it was established.")
    version: int | None = Field(default=None, description="IKE version.")
    local_spi: str | None = Field(default=None, max_length=32, description="Our IKE SPI (hex).")
    remote_spi: str | None = Field(default=None, max_length=32, description="The peer's IKE SPI.")
    algorithms: Algorithms | None = Field(default=None, description="Negotiated algorithms.")
    rekey_at: datetime | None = Field(default=None, description="When the next rekey is due.")
    reauth_at: datetime | None = Field(default=None, description="When re-authentication is due.")


#: A traffic selector as charon lists it (a CIDR or a range, maybe a protocol/port).
Selector = Annotated[str, StringConstraints(max_length=80)]


class ChildSaStatus(ApiModel):
    """The CHILD SA (ESP) as charon reports it."""

    state: str = Field(max_length=32, description="INSTALLED, REKEYING, ... or DOWN.")
    installed_at: datetime | None = Field(default=None, description="When it was installed.")
    spi_in: str | None = Field(default=None, max_length=16, description="Inbound ESP SPI (hex).")
    spi_out: str | None = Field(default=None, max_length=16, description="Outbound ESP SPI (hex).")
    algorithms: Algorithms | None = Field(default=None, description="Negotiated algorithms.")
    bytes_in: int | None = Field(default=None, ge=0, description="Bytes received.")
    bytes_out: int | None = Field(default=None, ge=0, description="Bytes sent.")
    packets_in: int | None = Field(default=None, ge=0, description="Packets received.")
    packets_out: int | None = Field(default=None, ge=0, description="Packets sent.")
    counters_at: datetime | None = Field(
        default=None, description="When the counters were read (they refresh at a bounded period)."
    )
    rekey_at: datetime | None = Field(default=None, description="When the next rekey is due.")
    expires_at: datetime | None = Field(default=None, description="When the SA expires.")
    inner_mtu: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Effective inner MTU: the largest inner packet one outer packet carries, "
        "the MTU of the interface holding the local address less the negotiated proposal's "
        "overhead (outer IP header 20/40, UDP 8 with NAT-T, ESP header 8, IV, padding to the "
        "cipher's block, ESP trailer 2, ICV). The tunnel interface's MTU follows it unless "
        "spec.interface.mtu is set.",
    )
    local_ts: list[Selector] | None = Field(
        default=None,
        max_length=64,
        description="Traffic selectors installed on our side (of every CHILD SA of the "
        "tunnel): what the peer accepted, which may be narrower than what was proposed.",
    )
    remote_ts: list[Selector] | None = Field(
        default=None,
        max_length=64,
        description="Traffic selectors installed on the peer's side (of every CHILD SA).",
    )


class RouteState(StrEnum):
    """Whether a route draws traffic as asked, or is demoted while its tunnel is down."""

    ACTIVE = "Active"
    DEMOTED = "Demoted"


class RouteStatus(ApiModel):
    """One route of spec.routes as the node holds it now."""

    to: str = Field(max_length=43, description="Destination CIDR (spec.routes[].to).")
    table: int = Field(ge=0, description="Routing table id.")
    metric: int = Field(
        ge=0,
        description=(
            "The metric in the kernel: spec.routes[].metric when Active, plus 2^31 when "
            "Demoted (IPv6 metric 0 is recorded by the kernel as 1024)."
        ),
    )
    state: RouteState = Field(
        description=(
            "Active: at the metric asked for. Demoted: the tunnel's CHILD SA is down and "
            "another tunnel that is up routes the same destination; kept with a 2^31 "
            "penalty so that tunnel carries the traffic."
        )
    )
    reason: str = Field(
        max_length=64,
        pattern=r"^[A-Za-z]([A-Za-z0-9_]*[A-Za-z0-9])?$",
        description="One CamelCase word: SaInstalled, FailClosed or SaDown.",
    )
    message: str = Field(max_length=1024, description="Why, for people.")


class InterfaceStatus(ApiModel):
    """The interface actually used on the node (allocated by the operator)."""

    name: str = Field(max_length=15, description="Interface name on the node.")
    type: InterfaceType = Field(description="vti or xfrm.")
    key: int | None = Field(default=None, description="VTI key in use.")
    if_id: int | None = Field(default=None, description="XFRM if_id in use.")


class BgpPrefixes(ApiModel):
    """A BGP session's prefix counts, as BIRD holds them now."""

    received: int = Field(ge=0, description="Prefixes the peer sent (accepted + refused).")
    accepted: int = Field(ge=0, description="Prefixes the import filter accepted.")
    advertised: int = Field(ge=0, description="Prefixes sent to the peer (spec.bgp.advertise).")


class BgpSessionStatus(ApiModel):
    """One BGP session of spec.bgp (one per peer address)."""

    peer_address: str = Field(max_length=45, description="spec.bgp.peerAddresses[] it is with.")
    state: str = Field(
        max_length=16,
        pattern=r"^[A-Za-z]+$",
        description=(
            "Idle, Connect, Active, OpenSent, OpenConfirm or Established (BGP's states), "
            "PrefixLimit (stopped: more than maxPrefixes accepted) or Down."
        ),
    )
    since: datetime | None = Field(default=None, description="When the state last changed.")
    last_error: str | None = Field(
        default=None, max_length=256, description="The session's last error, as BIRD says it."
    )
    prefixes: BgpPrefixes | None = Field(default=None, description="Prefix counts.")
    refused: int | None = Field(
        default=None, ge=0, description="Prefixes the import filter refused (received - accepted)."
    )


class BgpStatus(ApiModel):
    """The tunnel's BGP sessions as the node's BIRD reports them."""

    sessions: list[BgpSessionStatus] | None = Field(
        default=None, max_length=2, description="One per peer address."
    )


class VpnTunnelStatus(ApiModel):
    """Observed state of a VpnTunnel."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the Ready summary reflects."
    )
    node: str | None = Field(default=None, max_length=253, description="The node it runs on.")
    local_address: str | None = Field(
        default=None, max_length=45, description="The outer local address in use."
    )
    interface: InterfaceStatus | None = Field(
        default=None, description="The tunnel interface (route mode)."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=16,
        description="Ready and the conditions behind it.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    routes: list[RouteStatus] | None = Field(
        default=None,
        max_length=64,
        description="Each route of spec.routes: Active or Demoted, and why (route mode).",
    )
    ike: IkeSaStatus | None = Field(default=None, description="The IKE SA.")
    child: ChildSaStatus | None = Field(default=None, description="The CHILD SA.")
    bgp: BgpStatus | None = Field(default=None, description="BGP sessions (spec.bgp).")


def condition_wire(
    ctype: ConditionType,
    status: Status,
    reason: str,
    message: str,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """One condition as written to status, built through the `Condition` model.

    `lastTransitionTime` is kept from `previous` (the condition as the server has it)
    while the status is unchanged, so a pass that changes only a message does not look
    like a transition. Both writers (operator and agent) build their conditions here.
    """
    since = now
    if previous is not None and previous.get("status") == str(status):
        since = parse_k8s_time(previous.get("lastTransitionTime")) or now
    cond = Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since.replace(microsecond=0),
    )
    return cond.to_wire()
