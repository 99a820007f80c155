"""VpnTunnelPolicy: the model, its selector, and its generated CRD (no drift)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from routevpn.api.crd import build_policy_crd, render_crd_yaml
from routevpn.api.policy import POLICY_CRD_NAME, LabelSelector, VpnTunnelPolicySpec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / f"{POLICY_CRD_NAME}.yaml"


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def _spec_schema() -> dict[str, Any]:
    root = build_policy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec: dict[str, Any] = root["properties"]["spec"]
    return spec


def test_crds_dir_and_cli_match_the_generator() -> None:
    assert CRD_FILE.read_text() == render_crd_yaml("policy"), "run bash hack/generate.sh"
    out = subprocess.run(
        [sys.executable, "-m", "routevpn", "crd", "policy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == CRD_FILE.read_text()


def test_cluster_scoped_every_field_described_structural() -> None:
    crd = build_policy_crd()
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["kind"] == "VpnTunnelPolicy"
    for path, node in _walk(_spec_schema(), "spec"):
        assert "type" in node, path
        assert not {"$ref", "anyOf", "default", "title"} & node.keys(), path
        if not path.endswith("[]"):
            assert node.get("description"), path


def test_reserved_tables_and_weak_proposals_are_refused_in_the_crd_too() -> None:
    props = _spec_schema()["properties"]
    tables = props["allowedTables"]["items"]["x-kubernetes-validations"][0]["rule"]
    assert "253" in tables and "255" in tables and "0" in tables
    rule = props["allowedProposals"]["items"]["x-kubernetes-validations"][0]["rule"]
    assert "modp768" in rule and "null" in rule
    with pytest.raises(ValidationError, match="not a table a tunnel may use"):
        VpnTunnelPolicySpec.model_validate({"allowedTables": [255]})
    with pytest.raises(ValidationError, match="broken algorithms"):
        VpnTunnelPolicySpec.model_validate({"allowedProposals": ["aes128-sha1-modp1024"]})


def test_defaults() -> None:
    spec = VpnTunnelPolicySpec.model_validate({})
    assert spec.tables == (254,)
    assert spec.default_route is None  # forbidden unless said


@pytest.mark.parametrize(
    ("selector", "labels", "want"),
    [
        ({}, {}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "a", "x": "y"}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
        (
            {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
            {"team": "b"},
            True,
        ),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {}, True),
    ],
)
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], want: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is want


def test_the_example_policy_is_valid() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "tenancy" / "policy.yaml").read_text())
    assert doc["kind"] == "VpnTunnelPolicy"
    spec = VpnTunnelPolicySpec.model_validate(doc["spec"])
    assert spec.tables == (254, 100)


def test_the_seed_examples_policy_admits_the_seed_example() -> None:
    """examples/tenancy/seed-policy.yaml is what the demo and the node tier apply first."""
    from routevpn.api.spec import parse_spec
    from routevpn.controller.policy import grant_violation

    doc = yaml.safe_load((ROOT / "examples" / "tenancy" / "seed-policy.yaml").read_text())
    policy = VpnTunnelPolicySpec.model_validate(doc["spec"])
    assert policy.namespace_selector is not None
    assert policy.namespace_selector.matches({"kubernetes.io/metadata.name": "default"})
    seed = next(
        d
        for d in yaml.safe_load_all((ROOT / "examples" / "seed-ipv6-vti.yaml").read_text())
        if d and d["kind"] == "VpnTunnel"
    )
    assert grant_violation(parse_spec(seed["spec"]), policy) is None


def test_the_kind_policy_admits_the_kind_example() -> None:
    """kind/policy.yaml is what kind/cluster.sh applies before kind/example-tunnel.yaml."""
    from routevpn.api.spec import parse_spec
    from routevpn.controller.policy import grant_violation

    doc = yaml.safe_load((ROOT / "kind" / "policy.yaml").read_text())
    policy = VpnTunnelPolicySpec.model_validate(doc["spec"])
    assert policy.namespace_selector is not None
    assert policy.namespace_selector.matches({"kubernetes.io/metadata.name": "default"})
    tunnel = yaml.safe_load((ROOT / "kind" / "example-tunnel.yaml").read_text())
    assert tunnel["metadata"]["namespace"] == "default"
    assert grant_violation(parse_spec(tunnel["spec"]), policy) is None
