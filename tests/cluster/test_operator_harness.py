"""Helpers for the operator's cluster tests (no tests here): run `routevpn operator` as a
real subprocess against the tier's apiserver, create tunnels, and act as the node agent
through the API (SSA with fieldManager routevpn-agent, removing its finalizer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from support.cluster import REPO, Kubectl, free_port
from support.kube import create_namespace, delete_namespace, wait_until

GROUP, VERSION, PLURAL = "routevpn.io", "v1alpha1", "vpntunnels"
PEERING_CRDS = REPO / "charts" / "routevpn" / "crds" / "kopf-peering.yaml"


class Operator:
    """One `routevpn operator` process; stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, kubeconfig: Path, namespace: str, peering: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "ROUTEVPN_LOG_LEVEL": "info"}
        argv = [
            sys.executable,
            "-m",
            "routevpn",
            "operator",
            "--namespace",
            namespace,
            "--http-port",
            str(self.port),
            "--http-host",
            "127.0.0.1",
            "--peering",
            peering,
            "--orphan-wait",
            "2",
            "--not-ready-grace",
            "1",
        ]
        self._out = log.open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def metric(self, name: str) -> float:
        """Sum of a metric's samples from /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


@pytest.fixture(scope="module")
def peering_crds(kubectl: Kubectl) -> None:
    """kopf's peering CRDs (as the chart ships them)."""
    from support.kube import apply_crd

    apply_crd(kubectl, PEERING_CRDS.read_text())


@pytest.fixture
def routevpn_ns(kube: client.ApiClient) -> Iterator[str]:
    """The operator's own namespace (delivered Secrets go here)."""
    name = create_namespace(kube, "routevpn")
    try:
        yield name
    finally:
        delete_namespace(kube, name)


@pytest.fixture
def start_operator(
    kube: client.ApiClient,
    kubeconfig: Path,
    routevpn_ns: str,
    crd: list[str],
    peering_crds: None,
    tmp_path: Path,
) -> Iterator[Any]:
    """`start_operator()` -> a running Operator (its own ClusterKopfPeering)."""
    peering = routevpn_ns  # unique per test
    custom = client.CustomObjectsApi(kube)
    custom.create_cluster_custom_object(
        "kopf.dev",
        "v1",
        "clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}},
    )
    started: list[Operator] = []

    def start() -> Operator:
        op = Operator(kubeconfig, routevpn_ns, peering, tmp_path / f"operator-{len(started)}.log")
        started.append(op)
        wait_until(op.healthy, timeout=60, what="operator /healthz")
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()
        custom.delete_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)


def psk_secret(
    kube: client.ApiClient, ns: str, name: str = "psk", value: str = "c2VjcmV0LTE="
) -> None:
    client.CoreV1Api(kube).create_namespaced_secret(
        ns, {"metadata": {"name": name}, "data": {"psk": value}}
    )


def tunnel_body(name: str, selector: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "remote": {"address": "198.51.100.1"},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "psk"}}},
    }
    if "nodeName" not in spec:
        body["nodeSelector"] = selector or {"routevpn.io/gateway": "true"}
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VpnTunnel",
        "metadata": {"name": name},
        "spec": body,
    }


def create_tunnel(kube: client.ApiClient, ns: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def get_tunnel(kube: client.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    try:
        got: dict[str, Any] = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return got


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def label(obj: dict[str, Any] | None) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("labels") or {}).get("routevpn.io/node")


def agent_apply(kube: client.ApiClient, ns: str, name: str, status: dict[str, Any]) -> None:
    """Write status as the agent does: SSA on /status with fieldManager routevpn-agent."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VpnTunnel",
        "metadata": {"name": name, "namespace": ns},
        "status": status,
    }
    client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        name,
        body,
        field_manager="routevpn-agent",
        force=True,
        _content_type="application/apply-patch+yaml",
    )


def agent_finalizer(kube: client.ApiClient, ns: str, name: str, present: bool) -> None:
    """Add or remove routevpn.io/agent (JSON patch guarded by resourceVersion)."""
    custom = client.CustomObjectsApi(kube)
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    fins = [f for f in obj["metadata"].get("finalizers") or [] if f != "routevpn.io/agent"]
    if present:
        fins.append("routevpn.io/agent")
    custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        name,
        {"metadata": {"finalizers": fins, "resourceVersion": obj["metadata"]["resourceVersion"]}},
        _content_type="application/merge-patch+json",
    )


def events_for(kube: client.ApiClient, ns: str, name: str) -> list[tuple[str, str, str]]:
    evs = client.CoreV1Api(kube).list_namespaced_event(ns).items
    return [(e.type, e.reason, e.message) for e in evs if e.involved_object.name == name]
