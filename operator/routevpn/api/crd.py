"""The VpnTunnel CustomResourceDefinition, generated from the pydantic models.

Never written by hand: `routevpn crd` prints it, `crds/` holds the same bytes, and a test
fails when they drift. pydantic's JSON Schema is turned into a Kubernetes structural
schema: references inlined, `Optional` unwrapped, titles and defaults dropped (a default in
the CRD would be written into stored objects and show as drift in GitOps tools).
"""

from __future__ import annotations

import copy
from typing import Any, Final

import yaml

from routevpn import __version__
from routevpn.api import naming
from routevpn.api.base import CEL_KEY, ITEMS_CEL_KEY
from routevpn.api.policy import (
    POLICY_CRD_NAME,
    POLICY_KIND,
    POLICY_PLURAL,
    POLICY_SHORT_NAME,
    POLICY_SINGULAR,
    VpnTunnelPolicySpec,
)
from routevpn.api.spec import VpnTunnelSpec
from routevpn.api.status import VpnTunnelStatus

JsonDict = dict[str, Any]

_DROP: Final = frozenset({"title", "default", "$defs"})

_READY = '.status.conditions[?(@.type=="Ready")]'
_TRAFFIC = '.status.conditions[?(@.type=="TrafficFlowing")]'
#: BgpEstablished's reason: Established, Active, PrefixLimit, ... (empty without spec.bgp)
_BGP = '.status.conditions[?(@.type=="BgpEstablished")].reason'
PRINTER_COLUMNS: Final = (
    {"name": "Node", "type": "string", "jsonPath": ".status.node"},
    {"name": "Interface", "type": "string", "jsonPath": ".status.interface.name"},
    {"name": "Remote", "type": "string", "jsonPath": ".spec.remote.address", "priority": 1},
    {"name": "IKE", "type": "string", "jsonPath": ".status.ike.state"},
    {"name": "CHILD", "type": "string", "jsonPath": ".status.child.state"},
    {"name": "BGP", "type": "string", "jsonPath": _BGP},
    # -o wide: enough to triage without Grafana (TrafficFlowing, bytes of the current
    # CHILD SA, when Ready last changed). BGP has no column: routevpn has no BGP yet.
    {"name": "Traffic", "type": "string", "jsonPath": f"{_TRAFFIC}.status", "priority": 1},
    {"name": "Bytes-In", "type": "integer", "jsonPath": ".status.child.bytesIn", "priority": 1},
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status"},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason"},
    {
        "name": "Last-Transition",
        "type": "date",
        "jsonPath": f"{_READY}.lastTransitionTime",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)


def _resolve(node: Any, defs: JsonDict) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = _follow_ref(dict(node), defs)
    if "anyOf" in node:
        node = _drop_null_option(node)
        if "$ref" in node:
            return _resolve(node, defs)
    out = {key: _resolve_value(key, value, defs) for key, value in node.items() if key not in _DROP}
    return _make_structural(out)


def _follow_ref(node: JsonDict, defs: JsonDict) -> JsonDict:
    """Inline a `$ref` to one of `defs` (a copy; `node`'s own keys are kept)."""
    if "$ref" not in node:
        return node
    target: JsonDict = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
    # The field's own description wins over the referenced type's docstring.
    target.update({k: v for k, v in node.items() if k not in _DROP})
    return target


def _drop_null_option(node: JsonDict) -> JsonDict:
    """`X | None` (anyOf X, null) becomes X; any other union can't be expressed."""
    options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
    if len(options) != 1:
        raise ValueError(f"cannot express a union in a structural schema: {options}")
    merged = dict(options[0])
    merged.update(node)
    return merged


def _resolve_value(key: str, value: Any, defs: JsonDict) -> Any:
    if key == "properties":
        return {name: _resolve(sub, defs) for name, sub in value.items()}
    if key in ("items", "additionalProperties") and isinstance(value, dict):
        return _resolve(value, defs)
    return value


def _make_structural(out: JsonDict) -> JsonDict:
    # Structural schemas forbid `additionalProperties` beside `properties`; unknown fields
    # are refused by the server's strict field validation (and pruned at the latest).
    if out.get("additionalProperties") is False:
        del out["additionalProperties"]
    if ITEMS_CEL_KEY in out:
        out.setdefault("items", {})[CEL_KEY] = out.pop(ITEMS_CEL_KEY)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _order(node: Any) -> Any:
    """Stable key order: type and description first, so the YAML reads well.

    Property names keep the models' field order (the order `kubectl explain` shows).
    """
    if isinstance(node, list):
        return [_order(n) for n in node]
    if not isinstance(node, dict):
        return node
    first = [k for k in ("type", "description") if k in node]
    rest = sorted(k for k in node if k not in first)
    out: JsonDict = {}
    for key in first + rest:
        if key == "properties":
            out[key] = {name: _order(sub) for name, sub in node[key].items()}
        else:
            out[key] = _order(node[key])
    return out


def structural_schema(model: type[Any]) -> JsonDict:
    """A Kubernetes structural schema for a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _resolve(raw, raw.get("$defs", {}))
    return dict(_order(schema))


def _root_schema() -> JsonDict:
    """The openAPIV3Schema of a VpnTunnel: the object around its spec and status."""
    spec = structural_schema(VpnTunnelSpec)
    status = structural_schema(VpnTunnelStatus)
    return {
        "type": "object",
        "description": (
            "A route-based (or policy-based) IPsec VPN tunnel, terminated by strongSwan on one "
            "node with a VTI or XFRM interface, inside addresses and routes."
        ),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this object.",
            },
            "kind": {"type": "string", "description": "Kind is the REST resource this object is."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def _names() -> JsonDict:
    """What the resource is called: kind, plural, short name, category."""
    return {
        "kind": naming.KIND,
        "listKind": f"{naming.KIND}List",
        "plural": naming.PLURAL,
        "singular": naming.SINGULAR,
        "shortNames": [naming.SHORT_NAME],
        "categories": [naming.CATEGORY],
    }


def build_crd() -> JsonDict:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": naming.CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "routevpn",
                "app.kubernetes.io/part-of": "routevpn",
                "app.kubernetes.io/version": __version__,
            },
        },
        "spec": {
            "group": naming.GROUP,
            "names": _names(),
            "scope": "Namespaced",
            "versions": [
                {
                    "name": naming.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "schema": {"openAPIV3Schema": _root_schema()},
                }
            ],
        },
    }


_POLICY_COLUMNS: Final = (
    {"name": "Default-Route", "type": "string", "jsonPath": ".spec.defaultRoute"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)


def build_policy_crd() -> JsonDict:
    """The VpnTunnelPolicy CustomResourceDefinition (cluster-scoped, no status)."""
    crd = build_crd()
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root["description"] = (
        "What tunnels of the selected namespaces may do: gateway nodes, destinations, inside "
        "ranges, default route, routing tables, proposals. Cluster-scoped: the cluster admin's."
    )
    root["properties"]["spec"] = structural_schema(VpnTunnelPolicySpec)
    del root["properties"]["status"]
    crd["metadata"]["name"] = POLICY_CRD_NAME
    crd["spec"]["names"] = {
        "kind": POLICY_KIND,
        "listKind": f"{POLICY_KIND}List",
        "plural": POLICY_PLURAL,
        "singular": POLICY_SINGULAR,
        "shortNames": [POLICY_SHORT_NAME],
        "categories": [naming.CATEGORY],
    }
    crd["spec"]["scope"] = "Cluster"
    version = crd["spec"]["versions"][0]
    del version["subresources"]
    version["additionalPrinterColumns"] = [dict(c) for c in _POLICY_COLUMNS]
    return crd


def render_crd_yaml(which: str = "tunnel") -> str:
    """A CRD as YAML, byte-for-byte what `crds/` holds (`which`: tunnel or policy)."""
    name, build = (
        (POLICY_CRD_NAME, build_policy_crd) if which == "policy" else (naming.CRD_NAME, build_crd)
    )
    flag = " policy" if which == "policy" else ""
    header = (
        "# Generated by `routevpn crd` from operator/routevpn/api; do not edit by hand.\n"
        f"# Regenerate: routevpn crd{flag} > crds/{name}.yaml\n"
    )
    body = yaml.safe_dump(build(), sort_keys=False, width=100, allow_unicode=False)
    return header + "---\n" + body
