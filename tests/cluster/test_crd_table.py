"""The shared mistake table (tests/data/invalid-vpntunnels.yaml) against the real API server.

tests/unit/api runs the same table through the pydantic models; here the API server must
refuse each entry with a message naming the same field, in the same words. One table, two
layers: the CRD's CEL rules and the models' validators cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from support.cluster import Kubectl
from support.mistakes import apply_set, load_table

TABLE = load_table()


def manifest(spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "routevpn.io/v1alpha1",
            "kind": "VpnTunnel",
            "metadata": {"name": "table-case", "namespace": "default"},
            "spec": spec,
        }
    )


def dry_run(kubectl: Kubectl, spec: dict[str, Any]) -> tuple[int, str]:
    res = kubectl(
        "create",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=manifest(spec),
        check=False,
    )
    return res.returncode, res.stderr


def test_base_is_accepted(kubectl: Kubectl, crd: list[str]) -> None:
    rc, err = dry_run(kubectl, TABLE["base"])
    assert rc == 0, err


@pytest.mark.parametrize(
    "case", [c for c in TABLE["cases"] if c.get("server", True)], ids=lambda c: c["name"]
)
def test_server_refuses_naming_the_field(
    kubectl: Kubectl, crd: list[str], case: dict[str, Any]
) -> None:
    rc, err = dry_run(kubectl, apply_set(TABLE["base"], case["set"]))
    assert rc != 0, f"{case['name']}: the API server accepted it"
    # The server says `spec.routes[0].to`, the table may say `spec.routes[].to`.
    field = re.escape(case["field"]).replace(r"\[\]", r"\[\d*\]")
    field = re.sub(r"\\\[0\\\]", r"\\[\\d*\\]", field)
    assert re.search(field, err), f"{case['field']} not named in: {err}"
    if "message" in case:
        assert case["message"] in err, err
