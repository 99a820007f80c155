"""The VpnTunnel API as a person meets it on a real apiserver: the examples are
accepted and round-trip unchanged, `kubectl get`/`explain` teach, the category lists
tunnels, and the status subresource keeps spec and status apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.cluster import REPO, Kubectl
from support.kube import wait_until

EXAMPLES = REPO / "examples"


def example_files() -> list[Path]:
    """Every example manifest that holds a VpnTunnel."""
    return sorted(
        p
        for p in EXAMPLES.rglob("*.yaml")
        if any(d and d.get("kind") == "VpnTunnel" for d in yaml.safe_load_all(p.read_text()))
    )


def served_kinds(kubectl: Kubectl) -> set[tuple[str, str]]:
    """(group, kind) pairs the apiserver serves, e.g. ("routevpn.io", "VpnTunnel")."""
    out = kubectl("api-resources", "-o", "wide", "--no-headers").stdout
    kinds: set[tuple[str, str]] = set()
    for line in out.splitlines():
        cols = line.split()
        # NAME [SHORTNAMES] APIVERSION NAMESPACED KIND VERBS [CATEGORIES]
        idx = next(i for i, c in enumerate(cols) if c in ("true", "false"))
        group = cols[idx - 1].rpartition("/")[0]
        kinds.add((group, cols[idx + 1]))
    return kinds


def group_of(doc: dict[str, Any]) -> str:
    return str(doc["apiVersion"]).rpartition("/")[0]


def test_examples_exist() -> None:
    assert len(example_files()) >= 4


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_is_accepted_and_round_trips(
    crd: list[str], kubectl: Kubectl, namespace: str, path: Path
) -> None:
    known = served_kinds(kubectl)
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    applicable = [d for d in docs if (group_of(d), d["kind"]) in known]
    skipped = [d["kind"] for d in docs if d not in applicable]
    # Only kinds of add-ons this cluster lacks (cert-manager) may be left out.
    assert all(
        d["kind"] in ("Certificate", "Issuer", "ClusterIssuer") for d in docs if d not in applicable
    ), skipped
    text = yaml.safe_dump_all(applicable)

    dry = kubectl(
        "apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", "-", input=text
    )
    assert "serverside-applied (server dry run)" in dry.stdout
    kubectl("create", "--validate=strict", "-n", namespace, "-f", "-", input=text)

    for doc in applicable:
        if doc["kind"] != "VpnTunnel":
            continue
        got = yaml.safe_load(
            kubectl(
                "get", "vpntunnel", doc["metadata"]["name"], "-n", namespace, "-o", "yaml"
            ).stdout
        )
        # No defaulting drift: what Git holds is what the server holds.
        assert got["spec"] == doc["spec"]
        assert got["metadata"]["generation"] == 1


TUNNEL = {
    "apiVersion": "routevpn.io/v1alpha1",
    "kind": "VpnTunnel",
    "metadata": {"name": "site-b"},
    "spec": {
        "nodeName": "node-a",
        "local": {"address": "2001:db8:0:1::1"},
        "remote": {"address": "2001:db8:0:2::1"},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "site-b-psk"}}},
        "interface": {"type": "vti", "name": "vti1", "addresses": ["2001:db8:100::/127"]},
        "routes": [{"to": "::/0", "via": "2001:db8:100::1"}],
    },
}


def create_tunnel(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(TUNNEL))
    return get_tunnel(kubectl, namespace)


def get_tunnel(kubectl: Kubectl, namespace: str, name: str = "site-b") -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        kubectl("get", "vpnt", name, "-n", namespace, "-o", "json").stdout
    )
    return out


def ready_status(reason: str = "Established") -> dict[str, Any]:
    return {
        "node": "node-a",
        "interface": {"name": "vti1", "type": "vti", "key": 42},
        "ike": {"state": "ESTABLISHED"},
        "child": {"state": "INSTALLED"},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": reason,
                "message": "traffic can flow",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }


def patch_status(kubectl: Kubectl, namespace: str, status: dict[str, Any]) -> None:
    kubectl(
        "patch",
        "vpntunnel",
        "site-b",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def test_printer_columns(crd: list[str], kubectl: Kubectl, namespace: str) -> None:
    create_tunnel(kubectl, namespace)
    patch_status(kubectl, namespace, ready_status())
    table = kubectl("get", "vpnt", "-n", namespace).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "NODE",
        "INTERFACE",
        "IKE",
        "CHILD",
        "READY",
        "REASON",
        "AGE",
    ]
    assert table[1].split()[:7] == [
        "site-b",
        "node-a",
        "vti1",
        "ESTABLISHED",
        "INSTALLED",
        "True",
        "Established",
    ]


def test_wide_columns_are_enough_to_triage(
    crd: list[str], kubectl: Kubectl, namespace: str
) -> None:
    """`-o wide` adds the peer, the BGP session's state, TrafficFlowing, the CHILD SA's
    received bytes and when Ready last changed: a person triages a tunnel without Grafana."""
    create_tunnel(kubectl, namespace)
    status = ready_status()
    status["child"]["bytesIn"] = 123456
    status["conditions"].append(
        {
            "type": "TrafficFlowing",
            "status": "False",
            "reason": "NoTrafficReceived",
            "message": "nothing received for 120 s",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    )
    # a tunnel with spec.bgp: its session's state (BgpEstablished's reason)
    status["conditions"].append(
        {
            "type": "BgpEstablished",
            "status": "False",
            "reason": "Active",
            "message": "tunnel t/site-b: 169.254.10.2 is Active: Socket: Connection refused",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    )
    session = {
        "peerAddress": "169.254.10.2",
        "state": "Active",
        "since": "2026-01-01T00:00:00Z",
        "lastError": "Socket: Connection refused",
        "prefixes": {"received": 0, "accepted": 0, "advertised": 0},
        "refused": 0,
    }
    status["bgp"] = {"sessions": [session]}
    patch_status(kubectl, namespace, status)
    stored = json.loads(kubectl("get", "vpnt", "site-b", "-n", namespace, "-o", "json").stdout)
    assert stored["status"]["bgp"] == {"sessions": [session]}  # kept, not pruned
    wide = kubectl("get", "vpnt", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == [
        "NAME", "NODE", "INTERFACE", "REMOTE", "IKE", "CHILD", "BGP", "TRAFFIC", "BYTES-IN",
        "READY", "REASON", "LAST-TRANSITION", "AGE",
    ]  # fmt: skip
    row = wide[1].split()
    assert row[:11] == [
        "site-b", "node-a", "vti1", "2001:db8:0:2::1", "ESTABLISHED", "INSTALLED", "Active",
        "False", "123456", "True", "Established",
    ]  # fmt: skip
    assert re.fullmatch(r"\d+[smhdy]\w*", row[11]), row  # a date column shows its age
    # without -o wide the table stays as it was
    narrow = kubectl("get", "vpnt", "-n", namespace).stdout.splitlines()
    assert "TRAFFIC" not in narrow[0].split() and "LAST-TRANSITION" not in narrow[0].split()
    assert "BGP" not in narrow[0].split()


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _explain(kubectl: Kubectl, *args: str) -> str:
    """`kubectl explain ARGS`, once the API server publishes the CRD's schema: that comes
    a moment after the CRD is Established (a test run alone, right after the session
    applied it, saw "couldn't find resource")."""

    def explained() -> str | None:
        res = kubectl("explain", *args, check=False)
        return res.stdout if res.returncode == 0 else None

    return wait_until(explained, timeout=60, interval=1.0, what=f"kubectl explain {args[0]}")


def test_explain_teaches_the_interface(crd: list[str], kubectl: Kubectl) -> None:
    out = _explain(kubectl, "vpntunnel.spec.interface")
    crd_obj = json.loads(kubectl("get", "crd", "vpntunnels.routevpn.io", "-o", "json").stdout)
    schema = crd_obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    iface = schema["properties"]["spec"]["properties"]["interface"]
    assert re.search(r"^KIND:\s+VpnTunnel$", out, re.MULTILINE), out
    assert re.search(r"^GROUP:\s+routevpn\.io$", out, re.MULTILINE), out
    assert re.search(r"^VERSION:\s+v1alpha1$", out, re.MULTILINE), out
    flat = _flat(out)
    assert _flat(iface["description"]) in flat
    for field, prop in iface["properties"].items():
        assert re.search(rf"^\s+{field}\s", out, re.MULTILINE), f"field {field} not listed"
        assert _flat(prop["description"]) in flat, f"description of {field} not shown"


def test_explain_has_a_description_on_every_spec_field(crd: list[str], kubectl: Kubectl) -> None:
    out = _explain(kubectl, "vpntunnel.spec", "--recursive")
    fields = re.findall(r"^\s+([A-Za-z]+)\s+<", out, re.MULTILINE)
    assert {"nodeName", "nodeSelector", "interface", "routes", "auth", "ike", "child"} <= set(
        fields
    )
    crd_obj = json.loads(kubectl("get", "crd", "vpntunnels.routevpn.io", "-o", "json").stdout)
    spec = crd_obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if not node.get("description"):
            missing.append(path)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node and "properties" in node["items"]:
            walk(node["items"], f"{path}[]")

    walk(spec, "spec")
    assert missing == []


def test_category_lists_tunnels(crd: list[str], kubectl: Kubectl, namespace: str) -> None:
    create_tunnel(kubectl, namespace)
    out = kubectl("get", "routevpn", "-n", namespace, "-o", "name").stdout.split()
    assert "vpntunnel.routevpn.io/site-b" in out
    short = kubectl("get", "vpnt", "-n", namespace, "-o", "name").stdout.split()
    assert short == ["vpntunnel.routevpn.io/site-b"]


def test_status_write_keeps_generation_spec_write_bumps_it(
    crd: list[str], kubectl: Kubectl, namespace: str
) -> None:
    created = create_tunnel(kubectl, namespace)
    assert created["metadata"]["generation"] == 1
    assert "status" not in created or not created["status"].get("node")

    patch_status(kubectl, namespace, ready_status())
    after_status = get_tunnel(kubectl, namespace)
    assert after_status["metadata"]["generation"] == 1
    assert after_status["status"]["node"] == "node-a"
    assert after_status["spec"] == TUNNEL["spec"]

    # Status sent through the main endpoint is ignored: only the subresource writes it.
    kubectl(
        "patch", "vpnt", "site-b", "-n", namespace, "--type=merge",
        "-p", json.dumps({"status": {"node": "elsewhere"}}),
    )  # fmt: skip
    assert get_tunnel(kubectl, namespace)["status"]["node"] == "node-a"
    assert get_tunnel(kubectl, namespace)["metadata"]["generation"] == 1

    routes = [{"to": "::/0", "via": "2001:db8:100::1", "metric": 10}]
    kubectl(
        "patch", "vpnt", "site-b", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"routes": routes}}),
    )  # fmt: skip
    after_spec = get_tunnel(kubectl, namespace)
    assert after_spec["metadata"]["generation"] == 2
    assert after_spec["status"]["node"] == "node-a", "a spec write leaves status alone"


def _apply_status(
    kubectl: Kubectl, namespace: str, manager: str, conditions: list[dict[str, Any]]
) -> None:
    body = {
        "apiVersion": "routevpn.io/v1alpha1",
        "kind": "VpnTunnel",
        "metadata": {"name": "site-b", "namespace": namespace},
        "status": {"conditions": conditions},
    }
    kubectl(
        "apply", "--server-side", f"--field-manager={manager}", "--subresource=status",
        "-f", "-", input=json.dumps(body),
    )  # fmt: skip


def _cond(type_: str, status: str, reason: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": f"{type_} is {status}",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def test_two_status_writers_keep_their_own_conditions(
    crd: list[str], kubectl: Kubectl, namespace: str
) -> None:
    """DESIGN: operator and agent each server-side apply their own conditions."""
    create_tunnel(kubectl, namespace)
    _apply_status(kubectl, namespace, "routevpn-operator", [_cond("Scheduled", "True", "Placed")])
    _apply_status(kubectl, namespace, "routevpn-agent", [_cond("Configured", "True", "Applied")])
    # The operator re-applies only its own: the agent's condition stays.
    _apply_status(
        kubectl,
        namespace,
        "routevpn-operator",
        [_cond("Scheduled", "True", "Placed"), _cond("Ready", "False", "Connecting")],
    )

    def conditions() -> dict[str, str] | None:
        status = get_tunnel(kubectl, namespace).get("status", {})
        got = {c["type"]: c["reason"] for c in status.get("conditions", [])}
        return got if len(got) == 3 else None

    got = wait_until(conditions, timeout=10, what="three conditions")
    assert got == {"Scheduled": "Placed", "Configured": "Applied", "Ready": "Connecting"}
    assert get_tunnel(kubectl, namespace)["metadata"]["generation"] == 1
