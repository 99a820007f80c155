"""The ``cluster`` tier: a real kube-apiserver (with etcd and kube-controller-manager).

Where the control plane comes from, first match wins:

1. ``ROUTEVPN_KUBECONFIG=/path`` — any existing cluster (kind, a real one). Left
   running. kubectl is ``ROUTEVPN_KUBECTL`` if set, else our pinned build.
2. A developer's ``hack/local-cluster.sh up`` (default state dir and ports), when it is
   up and healthy — reused and left running.
3. Otherwise the fixture starts a control plane of its own (``hack/local-cluster.sh up``
   with a temporary state dir and free loopback ports, so it never collides with a
   developer's) and stops it (by PID) and removes its data at session end.

Binaries not built yet → ``missing()`` (skip on a dev box, fail in CI): run
``hack/local-cluster.sh build`` (hack/setup.sh does).

Fixtures (session scope unless noted):

``cluster``      ``ClusterAccess``: ``.kubeconfig``, ``.kubectl``, ``.source``
                 ("env" | "developer" | "session"), ``.start_seconds``, ``.control_plane``
``kubeconfig``   ``Path`` of the admin kubeconfig
``kubeconfig_for``  ``(server: str) -> Path``: the same credentials with another server
                 URL, e.g. ``https://192.0.2.2:PORT`` for an agent in the QEMU lab guest
``kubectl``      ``Kubectl``: ``kubectl("get", "vpnt", "-A", input=None, check=True)``
                 runs OUR kubectl (pinned build) with our kubeconfig, never PATH's
``kube``         ``kubernetes.client.ApiClient`` configured from our kubeconfig; wrap it:
                 ``CoreV1Api(kube)``, ``CustomObjectsApi(kube)``
``crd``          the VpnTunnel CRD (``routevpn crd``) applied server-side and
                 Established; its names. Request it in any test that uses VpnTunnels.
``namespace``    (function) a fresh namespace named after the test, deleted afterwards
``secret_registry``  the PSKs and keys the session made, and what is scanned for them at
                 its end: logs, Events, VpnTunnels, metrics pages (support.secretscan)
``make_node``    (function) ``make_node(name, labels={}, ready=True, addresses=())``
                 creates a Node (there is no kubelet) with Ready set through the status
                 subresource; ``make_node.ready(name, False)`` marks it NotReady,
                 ``make_node.delete(name)`` deletes it; all are deleted afterwards.
                 No controller changes a Node's Ready condition behind a test's back;
                 the node-lifecycle controller adds/removes the not-ready taint.

Helpers for your own fixtures live in ``support.kube`` (``wait_until``, ``apply_crd``,
``create_node``, ``set_node_ready``, ``node_ready``, …) and ``support.cluster``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from support.cluster import ClusterAccess, ControlPlane, ControlPlaneError, Kubectl, bin_dir
from support.kube import (
    NodeFactory,
    api_client,
    apply_crd,
    create_namespace,
    delete_namespace,
)
from support.secretscan import REGISTRY, SecretRegistry, assert_no_leaks, sweep_cluster
from support.tiers import missing


def _crd_yaml() -> str:
    """Both CRDs (VpnTunnel, VpnTunnelPolicy) as `routevpn crd` prints them."""
    out = []
    for which in ("tunnel", "policy"):
        res = subprocess.run(
            [sys.executable, "-m", "routevpn", "crd", which],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if res.returncode != 0 or "CustomResourceDefinition" not in res.stdout:
            raise RuntimeError(
                f"`routevpn crd {which}` failed ({res.returncode}): {res.stderr.strip()[-2000:]}"
            )
        out.append(res.stdout)
    return "\n".join(out)


def _start(tmp_path_factory: pytest.TempPathFactory) -> Generator[ClusterAccess]:
    t0 = time.monotonic()
    external = os.environ.get("ROUTEVPN_KUBECONFIG")
    bins = bin_dir()
    if external:
        chosen = os.environ.get("ROUTEVPN_KUBECTL")
        ext_kubectl = Path(chosen) if chosen else (bins / "kubectl" if bins else None)
        if ext_kubectl is None:
            missing("kubectl: run hack/local-cluster.sh build, or set ROUTEVPN_KUBECTL")
        assert ext_kubectl is not None
        kc = Path(external)
        yield ClusterAccess(kc, Kubectl(ext_kubectl, kc), "env", time.monotonic() - t0)
        return
    if bins is None:
        missing("etcd/kube-apiserver/kubectl not built: run hack/local-cluster.sh build")
    assert bins is not None
    kubectl_bin = bins / "kubectl"

    dev = ControlPlane.developer()
    if dev.healthy():
        kc = dev.kubeconfig()
        yield ClusterAccess(
            kc, Kubectl(kubectl_bin, kc), "developer", time.monotonic() - t0, control_plane=dev
        )
        return

    cp = ControlPlane.ephemeral(tmp_path_factory.mktemp("control-plane"))
    try:
        kc = cp.up()
    except ControlPlaneError as e:
        cp.down(purge=False)  # stop what did start; keep its logs to read
        pytest.fail(f"the test control plane did not start:\n{e}", pytrace=False)
    try:
        yield ClusterAccess(
            kc, Kubectl(kubectl_bin, kc), "session", time.monotonic() - t0, control_plane=cp
        )
    finally:
        cp.down(purge=True)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterAccess]:
    """The control plane for this session (see the module docstring)."""
    gen = _start(tmp_path_factory)
    access = next(gen)
    t0 = time.monotonic()
    try:
        access.crd_names = apply_crd(access.kubectl, _crd_yaml())
    except Exception as e:  # reported by the `crd` fixture, to the tests that need it
        access.crd_error = f"{type(e).__name__}: {e}"
    _SUMMARY.append(
        f"cluster tier: {access.source} control plane at {access.kubeconfig}, "
        f"ready in {access.start_seconds:.1f}s, CRD applied in {time.monotonic() - t0:.1f}s"
    )
    try:
        yield access
    finally:
        gen.close()


_SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which control plane the tier used and how long it took to be ready."""
    for line in _SUMMARY:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def kubeconfig(cluster: ClusterAccess) -> Path:
    """The admin kubeconfig of the tier's cluster."""
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kubeconfig_for(
    cluster: ClusterAccess, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """``(server) -> Path``: the admin kubeconfig with its server URL replaced."""
    out_dir = tmp_path_factory.mktemp("kubeconfigs")

    def make(server: str) -> Path:
        conf = yaml.safe_load(cluster.kubeconfig.read_text())
        for entry in conf.get("clusters", []):
            entry["cluster"]["server"] = server
        path = out_dir / f"kubeconfig-{len(list(out_dir.iterdir()))}"
        path.write_text(yaml.safe_dump(conf))
        path.chmod(0o600)
        return path

    return make


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterAccess) -> Kubectl:
    """Our pinned kubectl with our kubeconfig."""
    return cluster.kubectl


@pytest.fixture(scope="session")
def kube(cluster: ClusterAccess) -> Iterator[client.ApiClient]:
    """A kubernetes ApiClient for the tier's cluster. At the end of the session, before
    the control plane goes, nothing secret may have leaked (see ``secret_registry``)."""
    api = api_client(cluster.kubeconfig)
    try:
        yield api
        sweep_cluster(api, REGISTRY)
        scanned = sum(1 for _ in REGISTRY.sources())
        gaps = f"; not fetched: {REGISTRY.gaps}" if REGISTRY.gaps else ""
        _SUMMARY.append(f"secret scan: {len(REGISTRY.secrets)} secrets in {scanned} sources{gaps}")
        assert_no_leaks(REGISTRY)
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def secret_registry() -> SecretRegistry:
    """The session's secrets and what to scan for them (support.secretscan.REGISTRY).

    The helpers that make Secrets and keys register them (``support.operator.psk_secret``,
    ``support.pki``, the agent tests' delivered Secrets); processes register their log
    files and leave their /metrics page when stopped; ``support.kube.delete_namespace``
    keeps a namespace's Events and VpnTunnels before it goes. ``kube``'s teardown adds
    what the API server still has and fails the session's last teardown on any leak. A
    test that makes a secret some other way registers it here.
    """
    return REGISTRY


@pytest.fixture(scope="session")
def crd(cluster: ClusterAccess) -> list[str]:
    """The VpnTunnel CRD, applied and Established; the CRD names."""
    if cluster.crd_error:
        # not a missing part but a defect of ours (a CEL rule over the API server's cost
        # budget was one): fail everywhere, never skip
        pytest.fail(f"the VpnTunnel CRD could not be applied: {cluster.crd_error}", pytrace=False)
    return cluster.crd_names


@pytest.fixture
def namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (with its contents) afterwards."""
    name = create_namespace(kube, request.node.name)
    try:
        yield name
    finally:
        delete_namespace(kube, name)


@pytest.fixture
def make_node(kube: client.ApiClient) -> Iterator[NodeFactory]:
    """Factory of simulated Nodes (see the module docstring)."""
    factory = NodeFactory(kube)
    try:
        yield factory
    finally:
        factory.cleanup()
