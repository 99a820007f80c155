"""`VpnTunnelPolicy`: what the cluster admin lets the tenants of some namespaces do.

Cluster-scoped, so only a cluster admin writes it. Each policy is one grant, evaluated
whole: a tunnel is admitted when some policy whose `namespaceSelector` matches its
namespace admits all of it (nodes, destinations, inside ranges, tables, proposals). Grants
add up like RBAC roles and never combine field by field (a tunnel can't take its nodes
from one policy and its destinations from another). A namespace no policy selects gets
nothing unless the operator runs with `--without-policy=allow` (single-tenant clusters).

Whatever a policy says, some networks are never routable into a tunnel (the node's own
addresses, the pod, service and node networks, the API server, loopback, multicast,
link-local destinations) and the kernel's tables 0/253/255 are never written: see
`controller/policy.py`, which enforces both.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Final

from pydantic import Field, field_validator

from routevpn.api import naming
from routevpn.api.base import ApiModel, cel, item_rules, rules
from routevpn.api.fields import (
    LABEL_KEY,
    LABEL_VALUE,
    Cidr,
    Proposal,
    check_cidr,
    check_proposals,
    weak_proposal_rule,
)

POLICY_KIND: Final = "VpnTunnelPolicy"
POLICY_PLURAL: Final = "vpntunnelpolicies"
POLICY_SINGULAR: Final = "vpntunnelpolicy"
POLICY_SHORT_NAME: Final = "vpntp"
POLICY_CRD_NAME: Final = f"{POLICY_PLURAL}.{naming.GROUP}"
#: Tables a policy that leaves `allowedTables` out grants: main only.
DEFAULT_TABLES: Final = (254,)

LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
TableId = Annotated[int, Field(ge=1, le=naming.ID_MAX)]
LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=LABEL_KEY)]


class SelectorOperator(enum.StrEnum):
    """How a label selector requirement compares a label's value."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class SelectorRequirement(ApiModel):
    """One requirement of a label selector (as in every Kubernetes selector)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
                "namespaceSelector.matchExpressions[].values: required for In and NotIn, "
                "not allowed for Exists and DoesNotExist",
            )
        )
    }

    key: LabelKey = Field(description="The label key the requirement applies to.")
    operator: SelectorOperator = Field(description="`In`, `NotIn`, `Exists` or `DoesNotExist`.")
    values: list[LabelValue] | None = Field(
        default=None,
        max_length=64,
        description="The values for `In` and `NotIn`; left out for `Exists`, `DoesNotExist`.",
    )

    def matches(self, labels: dict[str, str]) -> bool:
        """Does a namespace with `labels` satisfy this requirement?"""
        present = self.key in labels
        if self.operator is SelectorOperator.EXISTS:
            return present
        if self.operator is SelectorOperator.DOES_NOT_EXIST:
            return not present
        inside = present and labels[self.key] in (self.values or [])
        return inside if self.operator is SelectorOperator.IN else not inside


class LabelSelector(ApiModel):
    """A Kubernetes label selector; empty selects everything."""

    match_labels: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=32,
        description="Labels the namespace must carry, all of them, with these values.",
    )
    match_expressions: list[SelectorRequirement] | None = Field(
        default=None, max_length=16, description="Requirements the namespace must meet, all."
    )

    @field_validator("match_labels")
    @classmethod
    def _keys(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key in v or {}:
            if not re.match(LABEL_KEY, key):
                raise ValueError(f"namespaceSelector.matchLabels: {key!r} is not a label key")
        return v

    def matches(self, labels: dict[str, str]) -> bool:
        """Does a namespace with `labels` match?"""
        if any(labels.get(k) != v for k, v in (self.match_labels or {}).items()):
            return False
        return all(r.matches(labels) for r in self.match_expressions or [])


class DefaultRoute(enum.StrEnum):
    """May a tunnel route 0.0.0.0/0 or ::/0?"""

    ALLOWED = "allowed"
    FORBIDDEN = "forbidden"


def _cidr_list(path: str, what: str) -> dict[str, Any]:
    return {
        "x-kubernetes-list-type": "set",
        **item_rules(cel("isCIDR(self)", f"spec.{path}[]: must be a CIDR such as {what}")),
    }


class VpnTunnelPolicySpec(ApiModel):
    """What tunnels in the selected namespaces may do. Every field narrows; see each default."""

    namespace_selector: LabelSelector | None = Field(
        default=None,
        description=(
            "The namespaces this policy grants to (their labels; `kubernetes.io/metadata.name` "
            "selects one by name). Default: every namespace."
        ),
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=16,
        description=(
            "Gateway nodes: tunnels of these namespaces run only on nodes carrying all these "
            "labels. Default: any node."
        ),
    )
    allowed_destinations: list[Cidr] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Every route's `to`, and every spec.bgp.accept and spec.bgp.advertise prefix, "
            "must lie within one of these CIDRs. Default: any destination (never the "
            "networks routevpn always protects; a default route needs `defaultRoute: "
            "allowed`)."
        ),
        json_schema_extra=_cidr_list("allowedDestinations", "198.51.100.0/24"),
    )
    allowed_inside_ranges: list[Cidr] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Every inside address must lie within one of these CIDRs. Default: any (never "
            "loopback, multicast or a network routevpn always protects)."
        ),
        json_schema_extra=_cidr_list("allowedInsideRanges", "169.254.0.0/16"),
    )
    default_route: DefaultRoute | None = Field(
        default=None,
        description=(
            "`allowed` lets tunnels route 0.0.0.0/0 and ::/0, and accept or advertise them "
            "over BGP (the node's agent still refuses a static one that would outrank a "
            "default route the node already has). Default: `forbidden`."
        ),
    )
    allowed_tables: list[TableId] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Routing tables routes (and routes learned over BGP, spec.bgp.table) may go "
            "into. Default: 254 (main) only. Never 0, 253 or 255 (the kernel's own)."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            **item_rules(
                cel(
                    f"!(self in {list(naming.RESERVED_TABLES)})",
                    "spec.allowedTables[]: tables 0, 253 and 255 belong to the kernel",
                )
            ),
        },
    )
    allowed_proposals: list[Proposal] | None = Field(
        default=None,
        max_length=64,
        description=(
            "IKE and ESP proposals tunnels may use (a tunnel that leaves its proposals out "
            "uses routevpn's defaults, which must then be listed too). Default: any that the "
            "VpnTunnel schema accepts (never null encryption or a broken algorithm)."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            **item_rules(weak_proposal_rule("spec.allowedProposals[]")),
        },
    )

    @field_validator("allowed_destinations", "allowed_inside_ranges")
    @classmethod
    def _cidrs(cls, v: list[str] | None) -> list[str] | None:
        for item in v or []:
            check_cidr(item, "spec.allowedDestinations / allowedInsideRanges")
        return v

    @field_validator("allowed_tables")
    @classmethod
    def _tables(cls, v: list[int] | None) -> list[int] | None:
        for table in v or []:
            if table in naming.RESERVED_TABLES or not 1 <= table <= naming.ID_MAX:
                raise ValueError(f"spec.allowedTables: {table}: not a table a tunnel may use")
        return v

    @field_validator("node_selector")
    @classmethod
    def _node_keys(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key in v or {}:
            if not re.match(LABEL_KEY, key):
                raise ValueError(f"spec.nodeSelector: {key!r} is not a label key")
        return v

    @field_validator("allowed_proposals")
    @classmethod
    def _strong(cls, v: list[str] | None) -> list[str] | None:
        return check_proposals("spec.allowedProposals", v)

    @property
    def tables(self) -> tuple[int, ...]:
        """The granted tables, with the default applied."""
        return tuple(self.allowed_tables) if self.allowed_tables is not None else DEFAULT_TABLES
