"""Least-privilege RBAC and pod security of the rendered chart, rule by rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support.chart import VALUE_SETS, Manifest, containers, find, render

Rule = tuple[str, str, frozenset[str]]


def rules(role: Manifest) -> set[Rule]:
    """(apiGroup, resource, verbs) triples of a Role/ClusterRole; no wildcards allowed."""
    out: set[Rule] = set()
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                verbs = frozenset(rule["verbs"])
                assert "*" not in verbs and resource != "*" and group != "*", rule
                out.add((group, resource, verbs))
    return out


def v(*verbs: str) -> frozenset[str]:
    return frozenset(verbs)


READ = v("get", "list", "watch")


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    return render(VALUE_SETS["separate-agent-namespace"], tmp_path_factory.mktemp("render"))


def test_operator_cluster_role(docs: list[Manifest]) -> None:
    assert rules(find(docs, "ClusterRole", "operator")) == {
        ("", "nodes", READ),
        ("routevpn.io", "vpntunnels", v("get", "list", "watch", "patch")),
        ("routevpn.io", "vpntunnels/status", v("patch")),
        ("", "secrets", READ),
        ("", "events", v("create", "patch")),
        ("kopf.dev", "clusterkopfpeerings", v("get", "list", "watch", "patch")),
        # kopf resolves the resources it serves from the CRDs (found on a real node)
        ("apiextensions.k8s.io", "customresourcedefinitions", v("list", "watch")),
    }


def test_operator_role_is_in_the_release_namespace_only(docs: list[Manifest]) -> None:
    role = find(docs, "Role", "operator")
    assert role["metadata"]["namespace"] == "routevpn-system"
    assert rules(role) == {
        ("", "secrets", v("create", "update", "patch", "delete")),
        ("kopf.dev", "kopfpeerings", v("get", "list", "watch", "patch")),
        ("coordination.k8s.io", "leases", v("get", "list", "watch", "create", "update", "patch")),
    }


def test_agent_cluster_role(docs: list[Manifest]) -> None:
    assert rules(find(docs, "ClusterRole", "agent")) == {
        ("routevpn.io", "vpntunnels", v("get", "list", "watch", "patch")),
        ("routevpn.io", "vpntunnels/status", v("patch")),
        ("", "events", v("create", "patch")),
    }


def test_agent_reads_secrets_only_where_the_operator_delivers_them(docs: list[Manifest]) -> None:
    role = find(docs, "Role", "agent")
    assert role["metadata"]["namespace"] == "routevpn-system"
    assert rules(role) == {("", "secrets", READ)}
    binding = find(docs, "RoleBinding", "agent")
    assert binding["metadata"]["namespace"] == "routevpn-system"
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": find(docs, "ServiceAccount", "agent")["metadata"]["name"],
            "namespace": "routevpn-agent",
        }
    ]


def test_bindings_point_at_their_own_roles(docs: list[Manifest]) -> None:
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for component in ("operator", "agent"):
            binding = find(docs, kind, component)
            role = find(docs, role_kind, component)
            assert binding["roleRef"] == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": role_kind,
                "name": role["metadata"]["name"],
            }
            (subject,) = binding["subjects"]
            sa = find(docs, "ServiceAccount", component)
            assert (subject["name"], subject["namespace"]) == (
                sa["metadata"]["name"],
                sa["metadata"]["namespace"],
            )


def test_spec_guard_names_the_agent_service_account(docs: list[Manifest]) -> None:
    policy = find(docs, "ValidatingAdmissionPolicy")
    sa = find(docs, "ServiceAccount", "agent")["metadata"]
    user = f"system:serviceaccount:{sa['namespace']}:{sa['name']}"
    (cond,) = policy["spec"]["matchConditions"]
    assert cond["expression"] == f'request.userInfo.username == "{user}"'
    (resource_rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert resource_rule["resources"] == ["vpntunnels"]  # not vpntunnels/status
    binding = find(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def _restricted_container(c: dict[str, Any]) -> None:
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "privileged" not in sc


def test_operator_pod_meets_restricted(docs: list[Manifest]) -> None:
    deploy = find(docs, "Deployment", "operator")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in vol for vol in pod["volumes"])
    (container,) = pod["containers"]
    _restricted_container(container)
    assert "add" not in container["securityContext"]["capabilities"]
    assert container["args"][:5] == [
        *("operator", "--namespace", "routevpn-system"),
        *("--http-port", "8080"),
    ]
    assert deploy["spec"]["replicas"] == 2


def test_agent_pod_capabilities(docs: list[Manifest]) -> None:
    ds = find(docs, "DaemonSet", "agent")
    pod = ds["spec"]["template"]["spec"]
    assert ds["metadata"]["namespace"] == "routevpn-agent"
    assert pod["hostNetwork"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    by_name = containers(ds)
    added = {
        name: set(c["securityContext"]["capabilities"].get("add", []))
        for name, c in by_name.items()
    }
    assert added == {
        "agent": {"NET_ADMIN"},
        "charon": {"NET_ADMIN", "NET_BIND_SERVICE"},
        "load-kernel-modules": {"SYS_MODULE"},
    }
    for c in by_name.values():
        _restricted_container(c)
        # The image defaults to uid 65532; capabilities only work for uid 0.
        assert c["securityContext"]["runAsUser"] == 0
    assert by_name["agent"]["args"] == [
        "agent",
        "--node",
        "$(NODE_NAME)",
        "--namespace",
        "routevpn-system",
        "--vici-socket",
        "/run/routevpn/charon.vici",
        "--http-port",
        "9478",
    ]
    env = {e["name"]: e for e in by_name["agent"]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["ROUTEVPN_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert by_name["charon"]["command"] == ["/usr/lib/ipsec/charon"]


def test_agent_host_mounts_are_the_minimum(docs: list[Manifest]) -> None:
    ds = find(docs, "DaemonSet", "agent")
    pod = ds["spec"]["template"]["spec"]
    host = {vol["name"]: vol["hostPath"]["path"] for vol in pod["volumes"] if "hostPath" in vol}
    assert host == {"proc-sys-net": "/proc/sys/net", "lib-modules": "/lib/modules"}
    by_name = containers(ds)
    mounts = {
        (name, m["name"]): m.get("readOnly", False)
        for name, c in by_name.items()
        for m in c.get("volumeMounts", [])
        if m["name"] in host
    }
    # /lib/modules read-only, and only where modules are loaded; /proc/sys/net only in
    # the agent, which sets per-interface sysctls.
    assert mounts == {
        ("load-kernel-modules", "lib-modules"): True,
        ("agent", "proc-sys-net"): False,
    }
    # charon's /run (PID file) is private; the VICI socket directory is shared.
    charon_mounts = {m["mountPath"]: m["name"] for m in by_name["charon"]["volumeMounts"]}
    agent_mounts = {m["mountPath"]: m["name"] for m in by_name["agent"]["volumeMounts"]}
    assert charon_mounts["/run"] == "charon-run" and "/run" not in agent_mounts
    assert charon_mounts["/run/routevpn"] == agent_mounts["/run/routevpn"] == "vici"


def test_minimal_agent_has_no_host_paths_and_no_extra_capabilities(tmp_path: Path) -> None:
    docs = render(VALUE_SETS["minimal"], tmp_path)
    ds = find(docs, "DaemonSet", "agent")
    assert all("hostPath" not in vol for vol in ds["spec"]["template"]["spec"]["volumes"])
    assert set(containers(ds)) == {"agent", "charon"}
    kinds = {d["kind"] for d in docs}
    assert not kinds & {
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ClusterKopfPeering",
        "KopfPeering",
        "Service",
    }


def test_agent_namespace_is_labelled_privileged(docs: list[Manifest]) -> None:
    ns = find(docs, "Namespace", "routevpn-agent")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "privileged"


def test_operator_disruption_budget(docs: list[Manifest]) -> None:
    pdb = find(docs, "PodDisruptionBudget", "operator")
    deploy = find(docs, "Deployment", "operator")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == deploy["spec"]["selector"]
