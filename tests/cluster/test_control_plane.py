"""The control plane itself: pinned version, RBAC and service-account tokens, the
controller-manager's namespace deletion and garbage collection, the serving certificate's
names, and hack/local-cluster.sh's own behaviour (idempotent up, clean down, clear errors).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiException

from support.cluster import (
    REPO,
    SCRIPT,
    ClusterAccess,
    ControlPlane,
    ControlPlaneError,
    Kubectl,
)
from support.kube import (
    NodeFactory,
    create_namespace,
    delete_namespace,
    node_ready,
    wait_until,
)
from support.tiers import missing


def pinned(var: str) -> str:
    """A version pinned in hack/local-cluster.sh (the single place tests read it from)."""
    m = re.search(rf'^{var}="(v[0-9.]+)"', SCRIPT.read_text(), re.MULTILINE)
    assert m, f"{var} not found in {SCRIPT}"
    return m.group(1)


def own_plane(cluster: ClusterAccess) -> ControlPlane:
    """The cluster's ControlPlane, or skip: the test is about ours, not an external one."""
    if cluster.control_plane is None:
        pytest.skip("ROUTEVPN_KUBECONFIG names an external cluster: not ours to inspect")
    return cluster.control_plane


def name(obj: Any) -> str:
    """metadata.name of a typed API object."""
    meta = obj.metadata
    assert meta is not None and meta.name
    return str(meta.name)


def config_map(name: str, **meta: Any) -> client.V1ConfigMap:
    """A ConfigMap body."""
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, **meta), data={"k": "v"})


def test_pins_agree_with_go_modules() -> None:
    k8s, etcd = pinned("K8S_VERSION"), pinned("ETCD_VERSION")
    k8s_mod = (REPO / "hack/k8s/go.mod").read_text()
    etcd_mod = (REPO / "hack/k8s/etcd/go.mod").read_text()
    assert re.search(rf"^require k8s\.io/kubernetes {re.escape(k8s)}$", k8s_mod, re.MULTILINE)
    staging = f"v0.{k8s.removeprefix('v1.')}"
    replaced = re.findall(r"^\s+(k8s\.io/\S+) => \1 (\S+)$", k8s_mod, re.MULTILINE)
    assert len(replaced) > 20
    assert {v for _, v in replaced} == {staging}
    assert re.search(rf"^require go\.etcd\.io/etcd/server/v3 {re.escape(etcd)}$", etcd_mod, re.M)


def test_kubectl_and_server_report_the_pinned_version(cluster: ClusterAccess) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == pinned("K8S_VERSION")
    if cluster.source != "env":
        assert out["serverVersion"]["gitVersion"] == pinned("K8S_VERSION")
        assert out["serverVersion"]["minor"] == pinned("K8S_VERSION").split(".")[1]


def test_rbac_is_on_and_service_account_tokens_work(
    cluster: ClusterAccess, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    assert token.count(".") == 2, "a service-account token is a JWT"

    # A kubeconfig that authenticates with the token only (no admin certificate).
    conf = yaml.safe_load(cluster.kubeconfig.read_text())
    conf["users"] = [{"name": "reader", "user": {"token": token}}]
    for ctx in conf["contexts"]:
        ctx["context"]["user"] = "reader"
    as_reader = Kubectl(kubectl.binary, tmp_path / "reader.kubeconfig")
    as_reader.kubeconfig.write_text(yaml.safe_dump(conf))

    who = json.loads(as_reader("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:reader"

    denied = as_reader("get", "configmaps", "-n", namespace, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert f'User "system:serviceaccount:{namespace}:reader" cannot list resource' in denied.stderr

    kubectl(
        "create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps", "-n", namespace
    )
    kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    wait_until(
        lambda: as_reader("get", "configmaps", "-n", namespace, check=False).returncode == 0,
        timeout=30,
        what="RoleBinding takes effect",
    )
    # Still nothing outside the Role: not secrets, not another namespace.
    assert as_reader("get", "secrets", "-n", namespace, check=False).returncode != 0
    assert as_reader("get", "configmaps", "-n", "default", check=False).returncode != 0


def test_controller_manager_fills_new_namespaces(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)

    def default_sa_and_root_ca() -> bool:
        sas = {name(s) for s in core.list_namespaced_service_account(namespace).items}
        cms = {name(c) for c in core.list_namespaced_config_map(namespace).items}
        return "default" in sas and "kube-root-ca.crt" in cms

    wait_until(default_sa_and_root_ca, timeout=30, what="default SA and kube-root-ca.crt")


def test_namespace_deletion_finishes(kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    ns = create_namespace(kube, "ns-delete")
    try:
        core.create_namespaced_config_map(ns, config_map("content"))
        core.delete_namespace(ns)
        # The namespace controller must empty it and remove the `kubernetes` finalizer.
        delete_namespace(kube, ns, wait=60)
        with pytest.raises(ApiException) as err:
            core.read_namespace(ns)
        assert err.value.status == 404
    finally:
        delete_namespace(kube, ns)


def test_owner_reference_garbage_collection(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    parent = core.create_namespaced_config_map(namespace, config_map("parent"))
    assert parent.metadata is not None and parent.metadata.uid
    owner = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="parent", uid=parent.metadata.uid
    )
    core.create_namespaced_config_map(namespace, config_map("child", owner_references=[owner]))
    core.create_namespaced_config_map(namespace, config_map("bystander"))
    core.delete_namespaced_config_map("parent", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    wait_until(child_gone, timeout=60, what="garbage collector deletes the dependent")
    assert name(core.read_namespaced_config_map("bystander", namespace)) == "bystander"


def test_simulated_nodes(
    cluster: ClusterAccess, make_node: NodeFactory, kube: client.ApiClient
) -> None:
    node_name = f"sim-{secrets.token_hex(4)}"
    node = make_node(node_name, {"routevpn.io/gateway": "true"}, addresses=["192.0.2.10"])
    assert node.metadata is not None and node.metadata.labels
    assert node.metadata.labels["routevpn.io/gateway"] == "true"
    assert node.status is not None and node.status.addresses
    assert [a.address for a in node.status.addresses] == ["192.0.2.10"]
    assert node_ready(kube, node_name) is True
    listed = cluster.kubectl("get", "nodes", "-l", "routevpn.io/gateway=true", "-o", "name")
    assert f"node/{node_name}" in listed.stdout.split()

    core = client.CoreV1Api(kube)

    def taints() -> set[str]:
        spec = core.read_node(node_name).spec
        return {t.key for t in (spec.taints or [])} if spec else set()

    # The node-lifecycle controller does its real job: taints follow Ready.
    wait_until(lambda: "node.kubernetes.io/not-ready" not in taints(), what="not-ready taint off")
    make_node.ready(node_name, False)
    assert node_ready(kube, node_name) is False
    wait_until(lambda: "node.kubernetes.io/not-ready" in taints(), what="not-ready taint on")
    make_node.ready(node_name, True)
    wait_until(lambda: "node.kubernetes.io/not-ready" not in taints(), what="not-ready taint off")
    assert node_ready(kube, node_name) is True

    make_node.delete(node_name)
    wait_until(
        lambda: cluster.kubectl("get", "node", node_name, check=False).returncode != 0,
        timeout=30,
        what=f"node {node_name} deleted",
    )


# --- the serving certificate and kubeconfig overrides ------------------------------


def _server(cluster: ClusterAccess) -> tuple[str, int, Path]:
    conf = yaml.safe_load(cluster.kubeconfig.read_text())
    url = conf["clusters"][0]["cluster"]["server"]
    m = re.fullmatch(r"https://([^:/]+):(\d+)", url)
    assert m, url
    ca = cluster.kubeconfig.parent / "pki" / "ca.crt"
    return m.group(1), int(m.group(2)), ca


@pytest.mark.parametrize("name", ["127.0.0.1", "::1", "localhost", "192.0.2.2", "192.0.2.100"])
def test_serving_certificate_names(cluster: ClusterAccess, name: str) -> None:
    """The names a client may use, incl. 192.0.2.2 (the lab guest's view of this host)."""
    own_plane(cluster)
    host, port, ca = _server(cluster)
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_serving_certificate_rejects_other_names(cluster: ClusterAccess) -> None:
    own_plane(cluster)
    host, port, ca = _server(cluster)
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="mismatch"),
    ):
        ctx.wrap_socket(raw, server_hostname="203.0.113.7")


def test_kubeconfig_with_another_server_url(
    cluster: ClusterAccess, kubeconfig_for: Any, kubectl: Kubectl
) -> None:
    own_plane(cluster)
    _, port, _ = _server(cluster)
    moved = kubeconfig_for(f"https://localhost:{port}")
    out = Kubectl(kubectl.binary, moved)("get", "namespace", "default", "-o", "name").stdout
    assert out.strip() == "namespace/default"
    # The script's own override names the same cluster.
    plane = own_plane(cluster)
    lab = plane.kubeconfig(server=f"https://192.0.2.2:{port}")
    assert f"server: https://192.0.2.2:{port}" in lab.read_text()
    assert plane.kubeconfig() == cluster.kubeconfig


# --- hack/local-cluster.sh behaviour --------------------------------------------------


def _pids(plane: ControlPlane) -> dict[str, int]:
    assert plane.state_dir is not None
    run = plane.state_dir / "run"
    return {p.stem: int(p.read_text()) for p in run.glob("*.pid")} if run.is_dir() else {}


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_up_twice_is_harmless(cluster: ClusterAccess) -> None:
    plane = own_plane(cluster)
    if cluster.source != "session":
        pytest.skip("only on the session's own control plane (a developer's is theirs)")
    before = _pids(plane)
    assert set(before) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    assert plane.up() == cluster.kubeconfig
    assert _pids(plane) == before
    assert all(_alive(p) for p in before.values())


@pytest.fixture
def scratch_plane() -> Iterator[ControlPlane]:
    """A second, throwaway control plane; always stopped and removed."""
    with tempfile.TemporaryDirectory(prefix="routevpn-scratch-") as d:
        plane = ControlPlane.ephemeral(Path(d) / "state")
        try:
            yield plane
        finally:
            plane.down(purge=True)


def test_port_taken_is_a_clear_error(scratch_plane: ControlPlane) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        scratch_plane.api_port = s.getsockname()[1]
        with pytest.raises(ControlPlaneError) as err:
            scratch_plane.up()
    msg = str(err.value)
    assert f"port 127.0.0.1:{scratch_plane.api_port} (kube-apiserver) is already in use" in msg
    assert "ROUTEVPN_APISERVER_PORT" in msg
    assert _pids(scratch_plane) == {}, "nothing may start when a port is taken"


def test_stale_data_dir_is_a_clear_error(scratch_plane: ControlPlane) -> None:
    assert scratch_plane.state_dir is not None
    (scratch_plane.state_dir / "etcd").mkdir(parents=True)
    (scratch_plane.state_dir / "version").write_text("k8s=v1.30.0 etcd=v3.5.0\n")
    with pytest.raises(ControlPlaneError) as err:
        scratch_plane.up()
    assert "stale data dir" in str(err.value)
    assert "down --purge" in str(err.value)
    assert _pids(scratch_plane) == {}


def test_down_stops_exactly_its_own_processes(
    cluster: ClusterAccess, scratch_plane: ControlPlane
) -> None:
    kc = scratch_plane.up()
    assert scratch_plane.healthy()
    pids = _pids(scratch_plane)
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    assert all(_alive(p) for p in pids.values())
    assert Kubectl(cluster.kubectl.binary, kc)("get", "ns", "default").returncode == 0

    scratch_plane.down()
    wait_until(lambda: not any(_alive(p) for p in pids.values()), timeout=30, what="processes gone")
    assert not scratch_plane.healthy()
    # The tier's own cluster is untouched.
    assert cluster.kubectl("get", "ns", "default").returncode == 0


def test_script_is_shellcheck_clean() -> None:
    try:
        res = subprocess.run(
            ["shellcheck", str(SCRIPT)], capture_output=True, text=True, check=False, timeout=60
        )
    except FileNotFoundError:
        missing("shellcheck (hack/apt-packages.txt)")
    assert res.returncode == 0, res.stdout
