"""The chart against a real kube-apiserver: install, upgrade, uninstall, Pod Security, RBAC.

There is no kubelet, so no container runs; but every object must be accepted
server-side, and the controllers that do run (ReplicaSet, DaemonSet) create the Pods,
so Pod Security admission really judges them: `restricted` where the operator runs,
`privileged` for the agent, as the chart documents.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Generator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from support.cluster import Kubectl
from support.helm import CHART, Helm, Release, helm_binary, install, label_pod_security
from support.kube import create_namespace, delete_namespace, wait_until
from support.tokens import bound_token, token_kubeconfig

ROOT = Path(__file__).resolve().parents[2]
TUNNEL_EXAMPLE = ROOT / "examples" / "ipv4-vti.yaml"


@pytest.fixture(scope="module")
def helm(kubeconfig: Path) -> Helm:
    return Helm(helm_binary(), kubeconfig)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chart-values")


@pytest.fixture(scope="module")
def release(
    helm: Helm, kube: client.ApiClient, kubectl: Kubectl, workdir: Path, crd: list[str]
) -> Generator[Release, None, None]:
    yield from install(helm, kube, kubectl, workdir, "chart")


def _pods(kube: client.ApiClient, namespace: str, component: str) -> list[Any]:
    core: Any = client.CoreV1Api(kube)
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/component={component}"
    )
    items: list[Any] = pods.items
    return items


def _events(kube: client.ApiClient, namespace: str) -> list[str]:
    core: Any = client.CoreV1Api(kube)
    events = core.list_namespaced_event(namespace)
    return [f"{e.reason}: {e.message}" for e in events.items]


def test_install_is_accepted_and_operator_pods_pass_restricted(
    release: Release, kube: client.ApiClient
) -> None:
    # Pod Security warnings would show here: the operator must raise none.
    assert "violate PodSecurity" not in release.install_stderr, release.install_stderr
    # NOTES.txt tells what to check and apply next, with this release's real names.
    notes = release.install_stdout
    assert f"rollout status ds/{release.name}-routevpn-agent" in notes, notes
    assert "kubectl apply -f vpntunnel.yaml" in notes
    assert "enforce=privileged" not in notes  # the agent has a namespace of its own
    apps: Any = client.AppsV1Api(kube)
    deploy = apps.read_namespaced_deployment(f"{release.name}-routevpn-operator", release.namespace)
    assert deploy.spec.replicas == 2
    # The ReplicaSet controller created both Pods: admitted under `restricted`.

    def two_pods() -> list[Any] | None:
        pods = _pods(kube, release.namespace, "operator")
        return pods if len(pods) == 2 else None

    pods = wait_until(two_pods, timeout=60, what="two operator pods admitted")
    assert all(p.spec.service_account_name.endswith("-operator") for p in pods)
    core: Any = client.CoreV1Api(kube)
    ns = core.read_namespace(release.namespace)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_agent_pod_is_admitted_in_its_privileged_namespace(
    release: Release, kube: client.ApiClient, make_node: Any
) -> None:
    core: Any = client.CoreV1Api(kube)
    ns = core.read_namespace(release.agent_namespace)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "privileged"
    node = f"gw-{release.name}"
    make_node(node, {"kubernetes.io/os": "linux"})

    def pod_on_node(component: str) -> Any:
        for p in _pods(kube, release.agent_namespace, component):
            if p.spec.affinity and node in json.dumps(p.spec.affinity.to_dict()):
                return p
        return None

    caps: dict[str, list[str]] = {}
    vici_dirs: set[str] = set()
    for component in ("agent", "charon"):
        pod = wait_until(
            partial(pod_on_node, component), timeout=60, what=f"{component} pod for {node}"
        )
        assert pod.spec.host_network is True
        caps |= {c.name: c.security_context.capabilities.add for c in pod.spec.containers}
        vici_dirs |= {v.host_path.path for v in pod.spec.volumes if v.name == "vici"}
    assert caps == {"agent": ["NET_ADMIN", "NET_RAW"], "charon": ["NET_ADMIN", "NET_BIND_SERVICE"]}
    # one node directory for the release's pair, named after the release
    assert vici_dirs == {f"/run/routevpn/{release.namespace}/{release.name}"}


def test_agent_in_a_restricted_namespace_is_refused(
    helm: Helm,
    kube: client.ApiClient,
    kubectl: Kubectl,
    workdir: Path,
    crd: list[str],
    make_node: Any,
) -> None:
    """What the chart documents: the agent can't run under `restricted`."""
    gen = install(helm, kube, kubectl, workdir, "chart-psa")
    rel = next(gen)
    try:
        # The agent namespace exists (chart-made, privileged); tighten it to show why.
        label_pod_security(kubectl, rel.agent_namespace, "restricted")
        make_node(f"gw-{rel.name}", {"kubernetes.io/os": "linux"})
        refused = wait_until(
            lambda: [e for e in _events(kube, rel.agent_namespace) if "PodSecurity" in e],
            timeout=60,
            what="the DaemonSet's pod refused by Pod Security",
        )
        assert any("hostNetwork" in e or "host namespaces" in e for e in refused), refused
        assert not _pods(kube, rel.agent_namespace, "agent")
    finally:
        gen.close()


def _can_i(kubectl: Kubectl, user: str, verb: str, resource: str, namespace: str | None) -> bool:
    # "a@n": object n of resource a (kubectl's "a/n"); "a/b" here means subresource b,
    # which needs its own flag.
    resource, _, name = resource.partition("@")
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, f"{resource}/{name}" if name else resource, f"--as={user}"]
    args += [f"--subresource={sub}"] if sub else []
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    res = kubectl(*args, check=False)
    assert res.stdout.strip() in ("yes", "no"), res.stdout + res.stderr
    return res.stdout.strip() == "yes"


VT = "vpntunnels.routevpn.io"
OTHER = "tenant-a"  # any namespace that is not routevpn's own
LEASES = "leases.coordination.k8s.io"

# (verb, resource, namespace: "release" | "agent" | OTHER | None for all, allowed)
OPERATOR_MATRIX = [
    ("list", "nodes", None, True),
    ("watch", "nodes", None, True),
    ("patch", "nodes", None, False),
    ("delete", "nodes", None, False),
    ("watch", VT, None, True),
    ("patch", VT, OTHER, True),
    ("patch", f"{VT}/status", OTHER, True),
    ("update", VT, OTHER, False),
    ("create", VT, OTHER, False),
    ("delete", VT, OTHER, False),
    # Users' Secrets: by name only, never listed or watched (no cluster-wide Secret watch).
    ("get", "secrets", OTHER, True),
    ("list", "secrets", None, False),
    ("watch", "secrets", OTHER, False),
    ("list", "secrets", "release", True),
    ("watch", "secrets", "release", True),
    ("create", "secrets", "release", True),
    ("delete", "secrets", "release", True),
    ("create", "secrets", OTHER, False),
    ("delete", "secrets", OTHER, False),
    ("patch", "secrets", OTHER, False),
    ("create", "events", OTHER, True),
    ("delete", "events", OTHER, False),
    # Its own Lease (LEASE: the release's operator name) and no other.
    ("get", f"{LEASES}@LEASE", "release", True),
    ("update", f"{LEASES}@LEASE", "release", True),
    ("create", LEASES, "release", True),
    ("update", f"{LEASES}@another", "release", False),
    ("delete", f"{LEASES}@LEASE", "release", False),
    # listed and watched: the agents' liveness Leases
    ("list", LEASES, "release", True),
    ("update", f"{LEASES}@LEASE", OTHER, False),
    ("get", "configmaps", "release", False),
    ("create", "pods", "release", False),
]

AGENT_MATRIX = [
    ("watch", VT, None, True),
    ("patch", VT, OTHER, True),
    ("patch", f"{VT}/status", OTHER, True),
    ("update", VT, OTHER, False),
    ("create", VT, OTHER, False),
    ("delete", VT, OTHER, False),
    ("get", "secrets", "release", False),  # its informer lists and watches; no GET
    ("list", "secrets", "release", True),
    ("watch", "secrets", "release", True),
    ("get", "secrets", OTHER, False),
    ("list", "secrets", None, False),
    ("get", "secrets", "agent", False),
    ("create", "secrets", "release", False),
    ("create", "events", OTHER, True),
    ("patch", "events", OTHER, False),
    ("get", "nodes", None, False),
    ("list", "pods", "agent", False),
    # RBAC lets an agent update Leases in the release namespace (its liveness Lease: RBAC
    # can't name it per node); the node guard admits only its own node's, and refuses the
    # operator's election Lease (test_chart_tenancy.py proves that with a real token).
    ("update", f"{LEASES}@LEASE", "release", True),
    ("delete", f"{LEASES}@LEASE", "release", False),
    ("update", f"{LEASES}@LEASE", OTHER, False),
    ("get", "configmaps", "agent", False),
]


def _where(release: Release, ns: str | None) -> str | None:
    return {"release": release.namespace, "agent": release.agent_namespace}.get(ns or "", ns)


def _named(release: Release, resource: str) -> str:
    # The operator's Lease is named like its Deployment (--lease-name).
    return resource.replace("@LEASE", f"@{release.name}-routevpn-operator")


@pytest.mark.parametrize(("verb", "resource", "ns", "allowed"), OPERATOR_MATRIX)
def test_operator_can_i(
    release: Release, kubectl: Kubectl, verb: str, resource: str, ns: str | None, allowed: bool
) -> None:
    got = _can_i(kubectl, release.operator_sa, verb, _named(release, resource), _where(release, ns))
    assert got is allowed


@pytest.mark.parametrize(("verb", "resource", "ns", "allowed"), AGENT_MATRIX)
def test_agent_can_i(
    release: Release, kubectl: Kubectl, verb: str, resource: str, ns: str | None, allowed: bool
) -> None:
    got = _can_i(kubectl, release.agent_sa, verb, _named(release, resource), _where(release, ns))
    assert got is allowed


def _tunnel_manifest() -> str:
    docs = [d for d in yaml.safe_load_all(TUNNEL_EXAMPLE.read_text()) if d]
    (tunnel,) = [d for d in docs if d["kind"] == "VpnTunnel"]
    return yaml.safe_dump(tunnel)


def test_agent_may_set_its_finalizer_but_not_change_spec(
    release: Release,
    kubectl: Kubectl,
    kube: client.ApiClient,
    make_node: Any,
    tmp_path: Path,
) -> None:
    ns = create_namespace(kube, "chart-guard")
    try:
        # The agent as it really authenticates: a token bound to its Pod on its node,
        # for a tunnel placed there (the node guard refuses anything else).
        node = f"gw-guard-{release.name}"
        make_node(node)
        manifest = yaml.safe_load(_tunnel_manifest())
        manifest["metadata"]["labels"] = {"routevpn.io/node": node}
        kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(manifest))
        name = manifest["metadata"]["name"]
        sa = release.agent_sa.rsplit(":", 1)[1]
        token = bound_token(kube, release.agent_namespace, sa, node)
        agent = Kubectl(
            kubectl.binary, token_kubeconfig(kubectl.kubeconfig, token, tmp_path / "kc")
        )
        as_agent = ("-n", ns)
        finalizer = {"metadata": {"finalizers": ["routevpn.io/agent"]}}
        wait_until(
            lambda: agent(
                "patch", VT, name, *as_agent, "--type=merge", "-p", json.dumps(finalizer),
                check=False,
            ).returncode == 0,
            timeout=30,
            what="the agent's finalizer on its own node's tunnel",
        )  # fmt: skip
        spec = {"spec": {"interface": {"mtu": 1300}}}

        patch = ("--type=merge", "-p", json.dumps(spec))

        def refused() -> subprocess.CompletedProcess[str] | None:
            # Server-side dry run: admission runs, nothing is stored, so an attempt made
            # before the guard is active can't change the spec behind the test's back.
            res = agent("patch", VT, name, *as_agent, *patch, "--dry-run=server", check=False)
            return res if res.returncode != 0 else None

        # The apiserver learns policies through an informer: allow it a moment.
        # (Were the guard missing, every dry run would succeed and this would time out.)
        wait_until(refused, timeout=30, what="the spec guard refusing a spec patch")
        denied = agent("patch", VT, name, *as_agent, *patch, check=False)
        assert denied.returncode != 0, "the agent changed a VpnTunnel's spec"
        assert "never its spec" in denied.stderr, denied.stderr
        got = json.loads(kubectl("get", VT, name, "-n", ns, "-o", "json").stdout)
        assert got["metadata"]["finalizers"] == ["routevpn.io/agent"]
        assert got["spec"]["interface"]["mtu"] == 1400
        # The admin (not the agent) may still change the spec, and drop the finalizer.
        kubectl("patch", VT, name, "-n", ns, "--type=merge", "-p", json.dumps(spec))
        drop = '{"metadata":{"finalizers":null}}'
        kubectl("patch", VT, name, "-n", ns, "--type=merge", "-p", drop)
    finally:
        delete_namespace(kube, ns)


def test_upgrade_with_changed_values_then_uninstall(
    helm: Helm, kube: client.ApiClient, kubectl: Kubectl, workdir: Path, crd: list[str]
) -> None:
    gen = install(helm, kube, kubectl, workdir, "chart-upgrade")
    rel = next(gen)
    try:
        apps: Any = client.AppsV1Api(kube)
        core: Any = client.CoreV1Api(kube)
        operator = f"{rel.name}-routevpn-operator"
        core.read_namespaced_service(f"{operator}-metrics", rel.namespace)
        vfile = workdir / f"upgrade-{rel.name}.yaml"
        vfile.write_text(
            yaml.safe_dump(
                {
                    "operator": {"replicas": 3},
                    # the dashboard ConfigMap is plain core API: this API server takes it
                    # (the PrometheusRule needs the Prometheus Operator's CRDs: promtool
                    # and kubeconform's render tests check it instead)
                    "metrics": {"service": {"enabled": False}, "dashboard": {"enabled": True}},
                    "agent": {
                        "namespace": rel.agent_namespace,
                        "specGuard": {"enabled": False},
                        "logLevel": "debug",
                    },
                }
            )
        )
        helm("upgrade", rel.name, str(CHART), "--namespace", rel.namespace, "-f", str(vfile))
        assert apps.read_namespaced_deployment(operator, rel.namespace).spec.replicas == 3
        with pytest.raises(ApiException) as gone:
            core.read_namespaced_service(f"{operator}-metrics", rel.namespace)
        assert gone.value.status == 404
        dashboard = core.read_namespaced_config_map(f"{rel.name}-routevpn-dashboard", rel.namespace)
        assert dashboard.metadata.labels["grafana_dashboard"] == "1"
        assert json.loads(dashboard.data["routevpn.json"])["uid"] == "routevpn"
        ds = apps.read_namespaced_daemon_set(f"{rel.name}-routevpn-agent", rel.agent_namespace)
        env = {e.name: e.value for e in ds.spec.template.spec.containers[0].env}
        assert env["ROUTEVPN_LOG_LEVEL"] == "debug"
        # the agent's new template is charon's old one: its DaemonSet was not changed
        charon = apps.read_namespaced_daemon_set(f"{rel.name}-routevpn-charon", rel.agent_namespace)
        assert charon.metadata.generation == 1
        assert charon.spec.update_strategy.type == "OnDelete"
        admission: Any = client.AdmissionregistrationV1Api(kube)
        policies = admission.list_validating_admission_policy()
        ours = [p.metadata.name for p in policies.items if p.metadata.name.startswith(rel.name)]
        # specGuard off: its policy is gone; the node guard (still on) stays.
        assert [n for n in ours if n.endswith("-spec-guard")] == []
        assert [n for n in ours if n.endswith("-node-guard")] != []
        history = helm("history", rel.name, "--namespace", rel.namespace, "-o", "json")
        assert [h["revision"] for h in json.loads(history.stdout)] == [1, 2]

        # --no-hooks: no kubelet here would run the pre-delete Job (test_release_all runs
        # its code against this API server; the node tier runs the Job itself)
        helm("uninstall", rel.name, "--namespace", rel.namespace, "--wait", "--no-hooks")
        with pytest.raises(ApiException) as gone:
            apps.read_namespaced_deployment(operator, rel.namespace)
        assert gone.value.status == 404
        rbac: Any = client.RbacAuthorizationV1Api(kube)
        roles = rbac.list_cluster_role()
        assert not [r for r in roles.items if r.metadata.name.startswith(f"{rel.name}-")]
        # Helm never deletes CRDs: users' VpnTunnels survive an uninstall.
        ext: Any = client.ApiextensionsV1Api(kube)
        assert ext.read_custom_resource_definition("vpntunnels.routevpn.io")
    finally:
        gen.close()
