"""`spec.bgp`: a BGP session over the tunnel's inside addresses, as the cloud VPNs offer it.

Kept as small as AWS's and GCP's: the two ASNs, the far end's inside address(es), what
may be learned (`accept`) and what is originated (`advertise`), a hold time, BFD, a cap on
the prefixes learned and the table they go to. The node's BIRD runs one session per peer
address, each carrying its own family only.

Hostile tenants: `accept` and `advertise` are checked by the operator against the
namespace's VpnTunnelPolicy like `routes[].to`, and the agent's import filter refuses
whatever overlaps a network it protects, forces the next hop to the peer on the tunnel's
own interface and never re-advertises a learned route (docs/bgp.md). Nothing written here
reaches BIRD's configuration except parsed and re-rendered (ints, IP addresses, CIDRs).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Final

from pydantic import Field, ValidationInfo, field_validator

from routevpn.api import naming
from routevpn.api.base import ApiModel, cel, item_rules, rules
from routevpn.api.fields import Cidr, check_cidr, check_ip
from routevpn.api.health import source_for

#: Defaults applied by the agent (documented in the descriptions; the CRD carries none).
DEFAULT_LOCAL_ASN: Final = 64512
HOLD_TIME_DEFAULT: Final = 30
HOLD_TIME_MIN: Final = 3
HOLD_TIME_MAX: Final = 65535
MAX_PREFIXES_DEFAULT: Final = 100
MAX_PREFIXES_MAX: Final = 10000
PREFIXES_MAX: Final = 64

_ASN_MSG: Final = (
    f"must be an AS number 1..{naming.ASN_MAX}, not {naming.AS_TRANS} (AS_TRANS, the "
    "placeholder of 2-byte speakers)"
)
_ONE_PER_FAMILY: Final = "spec.bgp.peerAddresses: at most one IPv4 and one IPv6 address"
IN_SUBNET_MSG: Final = (
    "spec.bgp.peerAddresses[]: each must be inside one of spec.interface.addresses (the far "
    "end's inside address) and not this end's own address"
)
NEEDS_INSIDE_MSG: Final = (
    "spec.bgp: needs spec.interface.addresses (the session runs between the inside addresses)"
)
#: CEL (at the spec): every peer address is in one of the interface's subnets, and not ours.
#: (As health.IN_SUBNET_RULE: a /32 or /128 of the peer not holding ours is within the
#: API server's cost budget where comparing two computed addresses is not.)
IN_SUBNET_RULE: Final = cel(
    "!has(self.bgp) || !has(self.interface) || !has(self.interface.addresses) || "
    "self.bgp.peerAddresses.all(p, !isIP(p) || self.interface.addresses.exists(a, "
    "isCIDR(a) && cidr(a).containsIP(p) && "
    "!cidr(p + (ip(p).family() == 4 ? '/32' : '/128')).containsIP(cidr(a).ip())))",
    IN_SUBNET_MSG,
    field_path=".bgp.peerAddresses",
)
NEEDS_INSIDE_RULE: Final = cel(
    "!has(self.bgp) || (has(self.interface) && has(self.interface.addresses))",
    NEEDS_INSIDE_MSG,
    field_path=".bgp",
)

Asn = Annotated[int, Field(ge=1, le=naming.ASN_MAX)]


def _asn_rule(field: str) -> dict[str, Any]:
    return rules(cel(f"self != {naming.AS_TRANS}", f"spec.bgp.{field}: {_ASN_MSG}"))


def _prefix_items(field: str) -> dict[str, Any]:
    return {
        "x-kubernetes-list-type": "set",
        **item_rules(
            cel("isCIDR(self)", f"spec.bgp.{field}[]: must be a CIDR such as 198.51.100.0/24"),
            cel(
                "!isCIDR(self) || cidr(self).masked() == cidr(self)",
                f"spec.bgp.{field}[]: host bits are set; use the network address (e.g. "
                "198.51.100.0/24, not 198.51.100.1/24)",
            ),
        ),
    }


class Bgp(ApiModel):
    """A BGP session with the far end over the tunnel (route mode, inside addresses)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "size(self.peerAddresses) < 2 || !isIP(self.peerAddresses[0]) || "
                "!isIP(self.peerAddresses[1]) || "
                "ip(self.peerAddresses[0]).family() != ip(self.peerAddresses[1]).family()",
                _ONE_PER_FAMILY,
                field_path=".peerAddresses",
            )
        )
    }

    peer_asn: Asn = Field(
        alias="peerASN",
        description=(
            f"The far end's AS number, 1..{naming.ASN_MAX} (4-byte ASNs welcome), not "
            f"{naming.AS_TRANS}. The same as this end's makes the session iBGP."
        ),
        json_schema_extra=_asn_rule("peerASN"),
    )
    local_asn: Asn | None = Field(
        default=None,
        alias="localASN",
        description=(
            f"This end's AS number, 1..{naming.ASN_MAX}, not {naming.AS_TRANS}. Default: the "
            f"node agent's setting (chart value bgp.localASN, {DEFAULT_LOCAL_ASN} unless the "
            "cluster admin changed it)."
        ),
        json_schema_extra=_asn_rule("localASN"),
    )
    peer_addresses: list[Annotated[str, Field(max_length=45)]] = Field(
        min_length=1,
        max_length=2,
        description=(
            "The far end's inside address(es), one BGP session each, at most one IPv4 and "
            "one IPv6: e.g. 169.254.10.2 and 2001:db8:ff::2. Each must be inside one of "
            "spec.interface.addresses and not this end's own address; a session carries "
            "its own family's prefixes only."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            **item_rules(cel("isIP(self)", "spec.bgp.peerAddresses[]: must be an IP address")),
        },
    )
    hold_time: int | None = Field(
        default=None,
        ge=HOLD_TIME_MIN,
        le=HOLD_TIME_MAX,
        description=(
            f"BGP hold time in seconds, {HOLD_TIME_MIN}..{HOLD_TIME_MAX}; keepalives go every "
            f"third of it. Default: {HOLD_TIME_DEFAULT}. For fast failover use bfd instead of "
            "a short hold time."
        ),
    )
    bfd: bool | None = Field(
        default=None,
        description=(
            "Run BFD (single hop) over the tunnel with the far end and drop the session as "
            "soon as BFD sees it down (about half a second), not after the hold time. The "
            "far end must run BFD too. Default: false."
        ),
    )
    advertise: list[Cidr] | None = Field(
        default=None,
        max_length=PREFIXES_MAX,
        description=(
            f"Prefixes this node originates to the far end (at most {PREFIXES_MAX}), e.g. "
            "the pod or service ranges it should reach through the tunnel. Nothing learned "
            "from any session is ever re-advertised. A VpnTunnelPolicy's "
            "allowedDestinations bound them as they bound routes. Default: none."
        ),
        json_schema_extra=_prefix_items("advertise"),
    )
    accept: list[Cidr] = Field(
        min_length=1,
        max_length=PREFIXES_MAX,
        description=(
            f"What may be learned (1..{PREFIXES_MAX} CIDRs): a prefix is accepted when it "
            "equals or is more specific than one of these, e.g. 198.51.100.0/24 accepts "
            "198.51.100.0/25 too. A default route only when 0.0.0.0/0 or ::/0 is listed. "
            "Whatever this says, the node refuses prefixes overlapping the networks it "
            "protects (its own, pod, service and API server networks, loopback, multicast, "
            "link-local). Learned routes go into the tunnel with the far end as next hop."
        ),
        json_schema_extra=_prefix_items("accept"),
    )
    max_prefixes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PREFIXES_MAX,
        description=(
            f"Accepted prefixes above which the session is stopped (1..{MAX_PREFIXES_MAX}); "
            "status says so (reason PrefixLimit) and the session stays down until the "
            f"tunnel changes or the node's BIRD restarts. Default: {MAX_PREFIXES_DEFAULT}."
        ),
    )
    table: int | None = Field(
        default=None,
        ge=1,
        le=naming.ID_MAX,
        description=(
            "Routing table the learned routes go into. Default: 254 (main). Never 253 "
            "(default) or 255 (local). A VpnTunnelPolicy's allowedTables bounds it as it "
            "bounds spec.routes[].table."
        ),
        json_schema_extra=rules(
            cel(
                f"!(self in {list(naming.RESERVED_TABLES)})",
                "spec.bgp.table: tables 0 (unspec), 253 (default) and 255 (local) belong to "
                "the kernel",
            )
        ),
    )

    @field_validator("peer_asn", "local_asn")
    @classmethod
    def _asn(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v == naming.AS_TRANS:
            wire = "peerASN" if info.field_name == "peer_asn" else "localASN"
            raise ValueError(f"spec.bgp.{wire}: {_ASN_MSG}")
        return v

    @field_validator("peer_addresses")
    @classmethod
    def _peers(cls, v: list[str]) -> list[str]:
        families = [
            ipaddress.ip_address(check_ip(a, "spec.bgp.peerAddresses[]")).version for a in v
        ]
        if len(set(families)) != len(families):
            raise ValueError(f"{_ONE_PER_FAMILY} (got {', '.join(v)})")
        return v

    @field_validator("accept", "advertise")
    @classmethod
    def _prefixes(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        field = f"spec.bgp.{info.field_name}"
        for item in v or []:
            iface = check_cidr(item, f"{field}[]")
            if iface.ip != iface.network.network_address:
                raise ValueError(f"{field}[]: {item}: host bits are set; use the network address")
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"{field}: duplicate entries")
        return v

    @field_validator("table")
    @classmethod
    def _table(cls, v: int | None) -> int | None:
        if v in naming.RESERVED_TABLES:
            raise ValueError(f"spec.bgp.table: {v}: tables 0, 253 and 255 belong to the kernel")
        return v

    @property
    def effective_hold_time(self) -> int:
        """`holdTime`, its default applied."""
        return self.hold_time or HOLD_TIME_DEFAULT

    @property
    def effective_max_prefixes(self) -> int:
        """`maxPrefixes`, its default applied."""
        return self.max_prefixes or MAX_PREFIXES_DEFAULT


def check_peers_in_subnet(bgp: Bgp, interfaces: list[str] | None) -> None:
    """The twin of NEEDS_INSIDE_RULE and IN_SUBNET_RULE (raise their messages)."""
    if not interfaces:
        raise ValueError(NEEDS_INSIDE_MSG)
    for peer in bgp.peer_addresses:
        if source_for(peer, interfaces) is None:
            raise ValueError(f"{IN_SUBNET_MSG} (got {peer})")
