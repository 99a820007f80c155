"""`VpnTunnel.spec`: what the user asks for.

Every rule a single object can break lives here twice, on purpose and side by side: as a
CEL rule that the generated CRD carries (so `kubectl apply` fails at the user's prompt)
and as a pydantic validator (so the operator and agent never act on an object that
slipped past an older CRD). Both name the field at fault. The CRD carries no `default:`
values: the API server would write them into the stored object and a GitOps tool would
show drift; defaults are applied in code and documented in each description.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Final

from pydantic import Field, model_validator

from routevpn.api.auth import Auth, LocalEndpoint, RemoteEndpoint
from routevpn.api.base import ApiModel, cel, rules
from routevpn.api.bgp import IN_SUBNET_RULE as BGP_IN_SUBNET_RULE
from routevpn.api.bgp import NEEDS_INSIDE_RULE, Bgp, check_peers_in_subnet
from routevpn.api.fields import DNS_SUBDOMAIN, LABEL_KEY, LABEL_VALUE, Mode
from routevpn.api.health import IN_SUBNET_RULE, HealthCheck, check_in_subnet
from routevpn.api.link import Interface, Route
from routevpn.api.sa import Child, Ike

# --- the spec ------------------------------------------------------------------------------

LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
_POLICY: Final = "(has(self.mode) && self.mode == 'policy')"
_TABLE: Final = "(has({0}.table) ? {0}.table : 254)"
_METRIC: Final = "(has({0}.metric) ? {0}.metric : 0)"


class VpnTunnelSpec(ApiModel):
    """A route-based (or policy-based) IPsec tunnel terminated on one node."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "has(self.nodeName) != has(self.nodeSelector)",
                "spec: set exactly one of nodeName or nodeSelector",
            ),
            cel(
                f"!{_POLICY} || (!has(self.interface) && !has(self.routes))",
                "spec.interface, spec.routes: not allowed in policy mode (policy-based IPsec has "
                "no tunnel interface; use spec.child.trafficSelectors)",
            ),
            cel(
                f"!{_POLICY} || (has(self.child) && has(self.child.trafficSelectors))",
                "spec.child.trafficSelectors: required in policy mode",
            ),
            cel(
                f"!{_POLICY} || !has(self.child) || !has(self.child.perFamily) || "
                "!self.child.perFamily",
                "spec.child.perFamily: route mode only (in policy mode the traffic selectors "
                "name each family's subnets)",
            ),
            cel(
                "!has(self.local) || !has(self.local.address) || !isIP(self.remote.address) || "
                "ip(self.local.address).family() == ip(self.remote.address).family()",
                "spec.remote.address: must be of the same IP family as spec.local.address",
            ),
            cel(
                "!has(self.local) || !has(self.local.address) || !isIP(self.remote.address) || "
                "self.local.address != self.remote.address",
                "spec.remote.address: must differ from spec.local.address",
            ),
            cel(
                "!has(self.routes) || self.routes.all(r, self.routes.exists_one(o, "
                f"o.to == r.to && {_TABLE.format('o')} == {_TABLE.format('r')} && "
                f"{_METRIC.format('o')} == {_METRIC.format('r')}))",
                "spec.routes: two routes have the same to, table and metric; the kernel holds "
                "one route per destination, table and metric",
            ),
            cel(
                "!has(self.routes) || self.routes.all(r, !has(r.via) || !isIP(r.via) || "
                "(has(self.interface) && has(self.interface.addresses) && "
                "self.interface.addresses.exists(a, isCIDR(a) && "
                "cidr(a).ip().family() == ip(r.via).family())))",
                "spec.routes[].via: the interface has no inside address of the next hop's "
                "family; add one to spec.interface.addresses",
            ),
            IN_SUBNET_RULE,
            cel(
                f"!{_POLICY} || !has(self.bgp)",
                "spec.bgp: not allowed in policy mode (BGP runs over the tunnel interface's "
                "inside addresses)",
            ),
            NEEDS_INSIDE_RULE,
            BGP_IN_SUBNET_RULE,
        )
    }

    node_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="Run the tunnel on this node. Set this or nodeSelector.",
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=16,
        description=(
            "Run the tunnel on one node whose labels match all of these (chosen "
            "deterministically, kept while it stays eligible). Set this or nodeName."
        ),
        # Values are checked by the schema; keys only by the models (a CEL regex over map
        # keys of unbounded length is beyond the API server's cost budget), so a bad key
        # surfaces as an InvalidSpec condition rather than at apply time.
    )
    mode: Mode | None = Field(
        default=None,
        description=(
            "`route` (the default: a VTI/XFRM interface, routes decide what is encrypted) or "
            "`policy` (kernel policies per subnet pair, for peers that can't do route-based)."
        ),
    )
    local: LocalEndpoint | None = Field(default=None, description="This node's IKE endpoint.")
    remote: RemoteEndpoint = Field(description="The peer's IKE endpoint.")
    auth: Auth = Field(description="How the peers authenticate each other.")
    ike: Ike | None = Field(default=None, description="IKE SA settings.")
    child: Child | None = Field(default=None, description="CHILD SA (ESP) settings.")
    interface: Interface | None = Field(
        default=None, description="The tunnel interface (route mode). Default: a VTI, allocated."
    )
    routes: list[Route] | None = Field(
        default=None,
        max_length=64,
        description="Routes into the tunnel, installed in the node's host network namespace.",
    )
    health_check: HealthCheck | None = Field(
        default=None,
        description=(
            "Opt-in: ping the far end's inside address through the tunnel and fail over "
            "when it stops answering, as an IP SLA track does. DPD alone only proves that "
            "the peer's IKE daemon answers: ESP dropped on the far side goes unnoticed. "
            "Route mode only (needs spec.interface.addresses)."
        ),
    )

    bgp: Bgp | None = Field(
        default=None,
        description=(
            "Opt-in: a BGP session with the far end over the tunnel's inside addresses, run "
            "by the node's BIRD: learned prefixes (within `accept`) are routed into the "
            "tunnel, `advertise` is originated to the far end. Route mode only (needs "
            "spec.interface.addresses). See docs/bgp.md."
        ),
    )

    @model_validator(mode="after")
    def _whole(self) -> VpnTunnelSpec:
        # Checks that need more than one field, in the order their errors are reported.
        self._check_placement()
        self._check_mode()
        self._check_endpoints()
        self._check_routes()
        if self.health_check is not None:
            addresses = self.interface.addresses if self.interface else None
            check_in_subnet(self.health_check.address, addresses or [])
        if self.bgp is not None:
            check_peers_in_subnet(self.bgp, self.interface.addresses if self.interface else None)
        return self

    def _check_placement(self) -> None:
        if (self.node_name is None) == (self.node_selector is None):
            raise ValueError("spec: set exactly one of nodeName or nodeSelector")
        for key, value in (self.node_selector or {}).items():
            if not re.match(LABEL_KEY, key) or not re.match(LABEL_VALUE, value):
                raise ValueError(
                    f"spec.nodeSelector: keys must be label keys and values label values "
                    f"(got {key!r}: {value!r})"
                )

    def _check_mode(self) -> None:
        if self.effective_mode is not Mode.POLICY:
            return
        if self.interface is not None or self.routes is not None:
            raise ValueError("spec.interface, spec.routes: not allowed in policy mode")
        if self.bgp is not None:
            raise ValueError("spec.bgp: not allowed in policy mode")
        if self.child is None or self.child.traffic_selectors is None:
            raise ValueError("spec.child.trafficSelectors: required in policy mode")
        if self.child.per_family:
            raise ValueError(
                "spec.child.perFamily: route mode only (in policy mode the traffic selectors "
                "name each family's subnets)"
            )

    def _check_endpoints(self) -> None:
        remote_ip = _maybe_ip(self.remote.address)
        local_ip = _maybe_ip(self.local.address) if self.local and self.local.address else None
        if local_ip is not None and remote_ip is not None and local_ip.version != remote_ip.version:
            raise ValueError(
                "spec.remote.address: must be of the same IP family as spec.local.address"
            )
        if local_ip is not None and local_ip == remote_ip:
            raise ValueError("spec.remote.address: must differ from spec.local.address")

    def _check_routes(self) -> None:
        keys = [(r.to, r.table or 254, r.metric or 0) for r in self.routes or []]
        if len(set(keys)) != len(keys):
            raise ValueError("spec.routes: two routes have the same to, table and metric")
        families = self.interface.families() if self.interface else set()
        for route in self.routes or []:
            if route.via is not None and ipaddress.ip_address(route.via).version not in families:
                raise ValueError(
                    f"spec.routes[].via: {route.via}: the interface has no inside address of the "
                    "next hop's family; add one to spec.interface.addresses"
                )

    @property
    def effective_mode(self) -> Mode:
        """The mode, with its default applied."""
        return self.mode or Mode.ROUTE


def _maybe_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_spec(data: dict[str, Any]) -> VpnTunnelSpec:
    """Validate a wire-format spec (camelCase dict)."""
    return VpnTunnelSpec.model_validate(data)
