"""The generated CRD: no drift, every field described, printer columns, CEL rules."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from routevpn.api import naming
from routevpn.api.crd import build_crd, render_crd_yaml

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / f"{naming.CRD_NAME}.yaml"


def _schema() -> dict[str, Any]:
    version = build_crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def test_crds_dir_matches_generator() -> None:
    assert CRD_FILE.read_text() == render_crd_yaml(), (
        "crds/ is stale: run `routevpn crd > crds/vpntunnels.routevpn.io.yaml`"
    )


def test_cli_prints_the_same_bytes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "routevpn", "crd"], capture_output=True, text=True, check=True
    ).stdout
    assert out == CRD_FILE.read_text()


def test_every_field_is_described() -> None:
    schema = _schema()
    undocumented = [
        path
        for top in ("spec", "status")
        for path, node in _walk(schema["properties"][top], top)
        if not path.endswith("[]") and not node.get("description")
    ]
    assert undocumented == []


def test_schema_is_structural() -> None:
    for top in ("spec", "status"):
        for path, node in _walk(_schema()["properties"][top], top):
            assert "type" in node, f"{path} has no type"
            assert not {"$ref", "anyOf", "oneOf", "allOf", "default", "title"} & node.keys(), path
            if "properties" in node:
                assert "additionalProperties" not in node, path


def test_names_scope_and_subresources() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "vpntunnels.routevpn.io"
    assert names["kind"] == "VpnTunnel" and names["plural"] == "vpntunnels"
    assert names["shortNames"] == ["vpnt"] and names["categories"] == ["routevpn"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    cols = build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    by_name = {c["name"]: c["jsonPath"] for c in cols}
    assert by_name["Node"] == ".status.node"
    assert by_name["Interface"] == ".status.interface.name"
    assert by_name["IKE"] == ".status.ike.state"
    assert by_name["CHILD"] == ".status.child.state"
    assert by_name["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert by_name["Age"] == ".metadata.creationTimestamp"


def test_cel_rules_present_and_name_fields() -> None:
    rules = [
        (path, rule)
        for path, node in _walk(_schema()["properties"]["spec"], "spec")
        for rule in node.get("x-kubernetes-validations", [])
    ]
    texts = " ".join(r["rule"] for _, r in rules)
    for needle in ("isCIDR", "isIP", "cidr(", "ip(", "duration(", "has(self.nodeName)"):
        assert needle in texts, needle
    for path, rule in rules:
        assert rule["message"].startswith("spec"), (path, rule["message"])


def test_conditions_are_a_list_map() -> None:
    cond = _schema()["properties"]["status"]["properties"]["conditions"]
    assert cond["x-kubernetes-list-type"] == "map"
    assert cond["x-kubernetes-list-map-keys"] == ["type"]


def test_no_defaults_anywhere() -> None:
    assert not re.search(r"^\s*default:", render_crd_yaml(), re.MULTILINE)


def test_status_has_no_secret_fields() -> None:
    paths = [p.lower() for p, _ in _walk(_schema()["properties"]["status"], "status")]
    assert not [p for p in paths if any(w in p for w in ("psk", "secret", "key.", "private"))]


def test_crd_yaml_parses_back() -> None:
    assert yaml.safe_load(CRD_FILE.read_text()) == build_crd()
