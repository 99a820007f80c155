"""Least-privilege RBAC and pod security of the rendered chart, rule by rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from routevpn.api import naming
from support.chart import VALUE_SETS, Manifest, containers, find, render
from support.chart_rbac import rules, v

READ = v("get", "list", "watch")


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    return render(VALUE_SETS["separate-agent-namespace"], tmp_path_factory.mktemp("render"))


def test_operator_cluster_role(docs: list[Manifest]) -> None:
    assert rules(find(docs, "ClusterRole", "operator")) == {
        ("", "nodes", READ),
        ("routevpn.io", "vpntunnels", v("get", "list", "watch", "patch")),
        ("routevpn.io", "vpntunnels/status", v("patch")),
        # Users' Secrets by name only: never list or watch (no cluster-wide Secret watch).
        ("", "secrets", v("get")),
        ("", "events", v("create")),
        # tenancy (docs/policy.md): the policies, the labels they select by, and the API
        # server's addresses (the rule is narrowed to the `kubernetes` objects by name)
        ("routevpn.io", "vpntunnelpolicies", READ),
        ("", "namespaces", READ),
        ("", "services:kubernetes", v("get")),
        ("", "endpoints:kubernetes", v("get")),
        # kopf resolves the resources it serves from the CRDs (found on a real node)
        ("apiextensions.k8s.io", "customresourcedefinitions", v("list", "watch")),
    }


def test_operator_role_is_in_the_release_namespace_only(docs: list[Manifest]) -> None:
    role = find(docs, "Role", "operator")
    assert role["metadata"]["namespace"] == "routevpn-system"
    # Its own Lease only, by the name the operator is given; create can't be limited by
    # name in RBAC (the name is in the body).
    deploy = find(docs, "Deployment", "operator")
    args = containers(deploy)["operator"]["args"]
    lease = args[args.index("--lease-name") + 1]
    assert lease == deploy["metadata"]["name"]
    assert rules(role) == {
        ("", "secrets", v("list", "watch", "create", "update", "patch", "delete")),
        ("coordination.k8s.io", f"leases:{lease}", v("get", "update")),
        ("coordination.k8s.io", "leases", v("create")),
        # the agents' liveness Leases: read, never written
        ("coordination.k8s.io", "leases", READ),
    }


def test_agent_cluster_role(docs: list[Manifest]) -> None:
    assert rules(find(docs, "ClusterRole", "agent")) == {
        ("routevpn.io", "vpntunnels", v("get", "list", "watch", "patch")),
        ("routevpn.io", "vpntunnels/status", v("patch")),
        ("", "events", v("create")),
    }


def test_agent_reads_secrets_only_where_the_operator_delivers_them(docs: list[Manifest]) -> None:
    role = find(docs, "Role", "agent")
    assert role["metadata"]["namespace"] == "routevpn-system"
    # list and watch (its informer); it never GETs a Secret. Its liveness Lease: no
    # resourceNames (one Role for every node; `create` can't have them), the node guard
    # keeps it to its own.
    assert rules(role) == {
        ("", "secrets", v("list", "watch")),
        ("coordination.k8s.io", "leases", v("get", "create", "update")),
    }
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
    policy = find(docs, "ValidatingAdmissionPolicy", "spec-guard")
    sa = find(docs, "ServiceAccount", "agent")["metadata"]
    user = f"system:serviceaccount:{sa['namespace']}:{sa['name']}"
    (cond,) = policy["spec"]["matchConditions"]
    assert cond["expression"] == f'request.userInfo.username == "{user}"'
    (resource_rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert resource_rule["resources"] == ["vpntunnels"]  # not vpntunnels/status
    binding = find(docs, "ValidatingAdmissionPolicyBinding", "spec-guard")
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


def test_agent_and_charon_pod_capabilities(docs: list[Manifest]) -> None:
    by_name: dict[str, Manifest] = {}
    for component in ("agent", "charon"):
        ds = find(docs, "DaemonSet", component)
        pod = ds["spec"]["template"]["spec"]
        assert ds["metadata"]["namespace"] == "routevpn-agent"
        assert pod["hostNetwork"] is True
        assert not pod.get("hostPID") and not pod.get("hostIPC")
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        by_name.update(containers(ds))
    added = {
        name: set(c["securityContext"]["capabilities"].get("add", []))
        for name, c in by_name.items()
    }
    assert added == {
        "agent": {"NET_ADMIN", "NET_RAW"},
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
        "--state-dir",
        "/run/routevpn/agent",
        "--http-port",
        "9478",
        "--bind-address",
        "$(HOST_IP)",
        "--mss-clamp",
    ]
    env = {e["name"]: e for e in by_name["agent"]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["ROUTEVPN_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The HTTP port binds the node's primary address, not every address of the node.
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert by_name["charon"]["command"][-1].endswith("exec /usr/lib/ipsec/charon")


def test_charon_pod_has_no_api_access(docs: list[Manifest]) -> None:
    """charon never talks to the API server: no token in its pod, no RBAC of its own."""
    pod = find(docs, "DaemonSet", "charon")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    names = [d["metadata"]["name"] for d in docs if d["kind"].endswith(("Role", "RoleBinding"))]
    assert not [n for n in names if "charon" in n]


#: The node directory of release "rv" in routevpn-system holding charon's VICI socket.
VICI_DIR = "/run/routevpn/routevpn-system/rv"


def _host_paths(ds: Manifest) -> dict[str, str]:
    pod = ds["spec"]["template"]["spec"]
    return {vol["name"]: vol["hostPath"]["path"] for vol in pod["volumes"] if "hostPath" in vol}


def _host_mounts(ds: Manifest) -> dict[tuple[str, str], bool]:
    """(container, volume) -> read-only, for the hostPath volumes."""
    host = _host_paths(ds)
    return {
        (name, m["name"]): m.get("readOnly", False)
        for name, c in containers(ds).items()
        for m in c.get("volumeMounts", [])
        if m["name"] in host
    }


def test_agent_host_mounts_are_the_minimum(docs: list[Manifest]) -> None:
    ds = find(docs, "DaemonSet", "agent")
    assert _host_paths(ds) == {
        "proc-sys-net": "/proc/sys/net",
        "lib-modules": "/lib/modules",
        "vici": VICI_DIR,
        "agent-state": f"{VICI_DIR}/agent",
    }
    # /lib/modules read-only, and only where modules are loaded; /proc/sys/net only in
    # the agent, which sets per-interface sysctls; charon's socket directory read-only
    # (connecting works; replacing the socket or planting files does not); the agent's
    # own record of loaded secrets (keyed digests) in a subdirectory of its own.
    assert _host_mounts(ds) == {
        ("load-kernel-modules", "lib-modules"): True,
        ("agent", "proc-sys-net"): False,
        ("agent", "vici"): True,
        ("agent", "agent-state"): False,
    }
    args = [str(a) for a in containers(ds)["agent"]["args"]]
    assert args[args.index("--state-dir") + 1] == "/run/routevpn/agent"


def test_charon_host_mounts_are_the_socket_directory_only(docs: list[Manifest]) -> None:
    ds = find(docs, "DaemonSet", "charon")
    assert _host_paths(ds) == {"vici": VICI_DIR}
    assert _host_mounts(ds) == {("charon", "vici"): False}
    (vol,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "vici"]
    assert vol["hostPath"]["type"] == "DirectoryOrCreate"
    charon = containers(ds)["charon"]
    # charon's /run (PID file) is private; the socket directory is made 0700 (root's,
    # the kubelet creates it 0755) before charon starts.
    mounts = {m["mountPath"]: m["name"] for m in charon["volumeMounts"]}
    assert mounts == {"/run": "run", "/run/routevpn": "vici", "/etc/routevpn/charon": "conf"}
    assert "emptyDir" in next(
        v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "run"
    )
    assert charon["command"][-1].startswith("chmod 0700 /run/routevpn && ")


def test_each_release_has_its_own_socket_directory(tmp_path: Path) -> None:
    """Another release (another name, or the same name in another namespace) never
    mounts this release's charon socket."""
    dirs = set()
    for release, namespace in (("rv", "a"), ("rv", "b"), ("other", "a")):
        for ds in (d for d in render({}, tmp_path, release=release, namespace=namespace)
                   if d["kind"] == "DaemonSet"):  # fmt: skip
            dirs.add((ds["metadata"]["name"], _host_paths(ds)["vici"]))
    assert {d for _, d in dirs} == {
        "/run/routevpn/a/rv",
        "/run/routevpn/b/rv",
        "/run/routevpn/a/other",
    }


def test_minimal_agent_has_only_the_socket_directories_and_no_extra_capabilities(
    tmp_path: Path,
) -> None:
    docs = render(VALUE_SETS["minimal"], tmp_path)
    ds = find(docs, "DaemonSet", "agent")
    assert _host_paths(ds) == {"vici": VICI_DIR, "agent-state": f"{VICI_DIR}/agent"}
    assert set(containers(ds)) == {"agent"}
    kinds = {d["kind"] for d in docs}
    assert not kinds & {
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
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


def test_node_guard_keys_agent_writes_on_the_bound_node_name(docs: list[Manifest]) -> None:
    policy = find(docs, "ValidatingAdmissionPolicy", "node-guard")
    sa = find(docs, "ServiceAccount", "agent")["metadata"]
    user = f"system:serviceaccount:{sa['namespace']}:{sa['name']}"
    (cond,) = policy["spec"]["matchConditions"]
    assert cond["expression"] == f'request.userInfo.username == "{user}"'
    assert policy["spec"]["failurePolicy"] == "Fail"
    by_group = {
        r["apiGroups"][0]: (set(r["resources"]), set(r["operations"]))
        for r in policy["spec"]["matchConstraints"]["resourceRules"]
    }
    assert by_group == {
        "routevpn.io": ({"vpntunnels", "vpntunnels/status"}, {"UPDATE"}),
        "": ({"events"}, {"CREATE", "UPDATE"}),
        "coordination.k8s.io": ({"leases"}, {"CREATE", "UPDATE"}),
    }
    (node,) = [x for x in policy["spec"]["variables"] if x["name"] == "node"]
    assert "authentication.kubernetes.io/node-name" in node["expression"]
    text = " ".join(x["expression"] for x in policy["spec"]["validations"])
    for field in ("oldObject.metadata.labels", "object.metadata.labels", "reportingInstance"):
        assert field in text
    # The Lease rule is naming.agent_lease_name's: the same prefixes, the same length limit.
    assert f"'{naming.AGENT_LEASE_PREFIX}' + variables.node" in text
    assert f"startsWith('{naming.AGENT_LEASE_HASHED_PREFIX}')" in text
    plain_max = naming.OBJECT_NAME_MAX - len(naming.AGENT_LEASE_PREFIX)
    assert f"size(variables.node) > {plain_max}" in text
    assert "object.spec.holderIdentity == variables.node" in text
    binding = find(docs, "ValidatingAdmissionPolicyBinding", "node-guard")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def test_watch_namespaces_grant_secret_reads_there_only(tmp_path: Path) -> None:
    docs = render(VALUE_SETS["customised"], tmp_path)
    cluster = rules(find(docs, "ClusterRole", "operator"))
    assert not [r for r in cluster if r[1] == "secrets"]
    reads = [d for d in docs if d["kind"] == "Role" and "read-secrets" in d["metadata"]["name"]]
    assert sorted(r["metadata"]["namespace"] for r in reads) == ["tenant-a", "tenant-b"]
    for role in reads:
        assert rules(role) == {("", "secrets", v("get"))}
    args = containers(find(docs, "Deployment", "operator"))["operator"]["args"]
    assert args[args.index("--watch-namespaces") + 1] == "tenant-a,tenant-b"
    agent = containers(find(docs, "DaemonSet", "agent"))["agent"]["args"]
    assert agent[agent.index("--bind-address") + 1] == "192.0.2.7"


def test_mss_clamp_off_reaches_the_agents_command_line(tmp_path: Path) -> None:
    docs = render({"agent": {"mssClamp": False}}, tmp_path)
    args = containers(find(docs, "DaemonSet", "agent"))["agent"]["args"]
    assert "--no-mss-clamp" in args
    assert "--mss-clamp" not in args
