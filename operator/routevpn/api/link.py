"""The tunnel interface and the routes into it (route mode)."""

from __future__ import annotations

import ipaddress
from typing import Final

from pydantic import Field, field_validator, model_validator

from routevpn.api import naming
from routevpn.api.base import ApiModel, cel, item_rules, rules
from routevpn.api.fields import IFNAME, Cidr, Id32, InterfaceType, check_cidr, check_ip, ip_family

# --- interface and routes ---------------------------------------------------------------

_RESERVED_MSG: Final = "tables 0 (unspec), 253 (default) and 255 (local) belong to the kernel"
_V6_PRESENT: Final = "self.addresses.exists(a, isCIDR(a) && cidr(a).ip().family() == 6)"


class Interface(ApiModel):
    """The tunnel interface on the node (route mode only)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "!has(self.key) || !has(self.type) || self.type == 'vti'",
                "spec.interface.key: only for type vti (an XFRM interface takes ifId)",
            ),
            cel(
                "!has(self.ifId) || (has(self.type) && self.type == 'xfrm')",
                "spec.interface.ifId: only for type xfrm (a VTI takes key)",
            ),
            cel(
                f"!has(self.mtu) || !has(self.addresses) || self.mtu >= 1280 || !({_V6_PRESENT})",
                "spec.interface.mtu: must be at least 1280 when the interface has an IPv6 address",
            ),
        )
    }

    type: InterfaceType | None = Field(
        default=None,
        description=(
            "`vti` (a VTI or, for an IPv6 outer address, VTI6 interface; the default) or "
            "`xfrm` (an XFRM interface, kernel 4.19+)."
        ),
    )
    name: str | None = Field(
        default=None,
        max_length=naming.IFNAME_MAX,
        pattern=IFNAME.pattern,
        description=(
            "Interface name on the node (at most 15 characters: letters, digits, `_`, `.`, `-`). "
            "Default: allocated by the operator (vti<key> or xfrm<ifId>)."
        ),
    )
    key: Id32 | None = Field(
        default=None,
        description=(
            "VTI key: the mark that binds the tunnel's IPsec policy to this interface "
            f"(1..{naming.ID_MAX}). Default: allocated, unique on the node."
        ),
        json_schema_extra=rules(
            cel(
                "self >= 1",
                "spec.interface.key: 0 is not allowed (an unmarked policy would capture all "
                "traffic); leave it out to have one allocated",
            )
        ),
    )
    if_id: Id32 | None = Field(
        default=None,
        description=(
            f"XFRM interface id (1..{naming.ID_MAX}). Default: allocated, unique on the node."
        ),
        json_schema_extra=rules(
            cel(
                "self >= 1",
                "spec.interface.ifId: 0 is not allowed (if_id 0 matches any interface); leave "
                "it out to have one allocated",
            )
        ),
    )
    mtu: int | None = Field(
        default=None,
        ge=576,
        le=9000,
        description="Interface MTU. Default: the effective inner MTU of the installed CHILD "
        "SA (status.child.innerMtu: the local address's interface MTU less the negotiated "
        "proposal's ESP, UDP and outer IP overhead; at least 1280 with IPv6), 1400 until "
        "the first CHILD SA is installed.",
    )
    addresses: list[Cidr] | None = Field(
        default=None,
        max_length=4,
        description=(
            "Inside addresses of this end, as CIDRs: e.g. 169.254.10.1/30, 2001:db8:100::/127. "
            "The far end's inside address need not exist anywhere: it only names a next hop."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            **item_rules(
                cel(
                    "isCIDR(self)",
                    "spec.interface.addresses[]: must be a CIDR such as 169.254.10.1/30 or "
                    "2001:db8:100::/127",
                ),
                cel(
                    "!isCIDR(self) || (cidr(self).ip().family() == 4 ? "
                    "cidr(self).prefixLength() >= 16 : cidr(self).prefixLength() >= 64)",
                    "spec.interface.addresses[]: inside networks are small: IPv4 /16 to /32, "
                    "IPv6 /64 to /128",
                ),
            ),
        },
    )

    @field_validator("key", "if_id")
    @classmethod
    def _not_zero(cls, v: int | None) -> int | None:
        if v == 0:
            raise ValueError("0 is not allowed (it would match any traffic); leave it out")
        return v

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str] | None) -> list[str] | None:
        for item in v or []:
            iface = check_cidr(item, "spec.interface.addresses")
            low = 16 if iface.version == 4 else 64
            if iface.network.prefixlen < low:
                raise ValueError(
                    f"spec.interface.addresses: {item}: inside networks are small: IPv4 /16 to "
                    "/32, IPv6 /64 to /128"
                )
        if v is not None and len(set(v)) != len(v):
            raise ValueError("spec.interface.addresses: duplicate entries")
        return v

    @model_validator(mode="after")
    def _kind_fields(self) -> Interface:
        kind = self.type or InterfaceType.VTI
        if self.key is not None and kind is not InterfaceType.VTI:
            raise ValueError("spec.interface.key: only for type vti")
        if self.if_id is not None and kind is not InterfaceType.XFRM:
            raise ValueError("spec.interface.ifId: only for type xfrm")
        if self.mtu is not None and self.mtu < 1280 and 6 in self.families():
            raise ValueError("spec.interface.mtu: must be at least 1280 with an IPv6 address")
        return self

    def families(self) -> set[int]:
        """IP versions of the inside addresses."""
        return {ip_family(a) for a in self.addresses or []}


class Route(ApiModel):
    """A route into the tunnel."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "!isCIDR(self.to) || cidr(self.to).masked() == cidr(self.to)",
                "spec.routes[].to: host bits are set; use the network address (e.g. "
                "2001:db8:200::/48, not 2001:db8:200::1/48)",
            ),
            cel(
                "!has(self.via) || !isCIDR(self.to) || !isIP(self.via) || "
                "cidr(self.to).ip().family() == ip(self.via).family()",
                "spec.routes[].via: must be of the same IP family as spec.routes[].to",
            ),
        )
    }

    to: str = Field(
        max_length=43,
        description="Destination CIDR, e.g. ::/0 or 198.51.100.0/24.",
        json_schema_extra=rules(
            cel("isCIDR(self)", "spec.routes[].to: must be a CIDR such as 198.51.100.0/24")
        ),
    )
    via: str | None = Field(
        default=None,
        max_length=45,
        description=(
            "Next hop inside the tunnel (usually the far end's inside address). Default: a "
            "device route out of the tunnel interface."
        ),
        json_schema_extra=rules(cel("isIP(self)", "spec.routes[].via: must be an IP address")),
    )
    metric: int | None = Field(
        default=None,
        ge=0,
        le=naming.ROUTE_METRIC_MAX,
        description=(
            "Route metric (lower wins); use it to prefer one of two tunnels to the same "
            f"networks. 0..{naming.ROUTE_METRIC_MAX} (2^31-1). Default: 0 (IPv6: the kernel "
            "records 1024). While the tunnel's CHILD SA is down and another tunnel on the "
            "node routes the same destination in the same table and is up, the route is "
            f"demoted: kept in the kernel with {naming.DEMOTION_PENALTY} (2^31) added to its "
            "metric, so the healthy tunnel carries the traffic; it takes over again once the "
            "SA is installed (the new route is added before the demoted one is removed). "
            "When no tunnel for the destination is up, the route stays at its metric: "
            "traffic is dropped into the tunnel, never sent in clear by another route. "
            "status.routes shows each route's state and why."
        ),
    )
    table: int | None = Field(
        default=None,
        ge=1,
        le=naming.ID_MAX,
        description=(
            "Routing table id. Default: 254 (main). Never 253 (default) or 255 (local): those "
            "belong to the kernel. A VpnTunnelPolicy says which tables a namespace may use."
        ),
        json_schema_extra=rules(
            cel(
                f"!(self in {list(naming.RESERVED_TABLES)})",
                f"spec.routes[].table: {_RESERVED_MSG}",
            )
        ),
    )

    @field_validator("table")
    @classmethod
    def _table(cls, v: int | None) -> int | None:
        if v in naming.RESERVED_TABLES:
            raise ValueError(f"spec.routes[].table: {v}: {_RESERVED_MSG}")
        return v

    @model_validator(mode="after")
    def _route(self) -> Route:
        net = check_cidr(self.to, "spec.routes[].to")
        if net.ip != net.network.network_address:
            raise ValueError(
                f"spec.routes[].to: {self.to}: host bits are set; use the network address"
            )
        if self.via is not None:
            via = ipaddress.ip_address(check_ip(self.via, "spec.routes[].via"))
            if via.version != net.version:
                raise ValueError("spec.routes[].via: must be of the same IP family as to")
        return self
