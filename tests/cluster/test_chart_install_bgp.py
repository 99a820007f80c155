"""bgp.enabled against a real kube-apiserver: BIRD's container admitted in charon's pods.

No kubelet runs containers here; the DaemonSet controller creates the Pods and Pod
Security admission judges them (`privileged` namespace of the agent and charon).
"""

from __future__ import annotations

import json
from collections.abc import Generator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from support.cluster import Kubectl
from support.helm import Helm, Release, helm_binary, install
from support.kube import wait_until


@pytest.fixture(scope="module")
def helm(kubeconfig: Path) -> Helm:
    return Helm(helm_binary(), kubeconfig)


@pytest.fixture(scope="module")
def release(
    helm: Helm,
    kube: client.ApiClient,
    kubectl: Kubectl,
    tmp_path_factory: pytest.TempPathFactory,
    crd: list[str],
) -> Generator[Release, None, None]:
    workdir = tmp_path_factory.mktemp("chart-bgp")
    yield from install(helm, kube, kubectl, workdir, "bgp", bgp={"enabled": True})


def _pod_on(kube: client.ApiClient, namespace: str, component: str, node: str) -> Any:
    core: Any = client.CoreV1Api(kube)
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"app.kubernetes.io/component={component}"
    )
    for p in pods.items:
        if p.spec.affinity and node in json.dumps(p.spec.affinity.to_dict()):
            return p
    return None


def test_bird_beside_charon_and_the_agents_one_write_mount(
    release: Release, kube: client.ApiClient, make_node: Any
) -> None:
    node = f"gw-{release.name}"
    make_node(node, {"kubernetes.io/os": "linux"})
    pods = {
        c: wait_until(
            partial(_pod_on, kube, release.agent_namespace, c, node),
            timeout=60,
            what=f"{c} pod for {node}",
        )
        for c in ("agent", "charon")
    }
    charon = {c.name: c for c in pods["charon"].spec.containers}
    assert sorted(charon) == ["bird", "charon"]
    assert charon["bird"].security_context.capabilities.add == [
        "NET_ADMIN",
        "NET_RAW",
        "NET_BIND_SERVICE",
    ]
    assert charon["bird"].security_context.capabilities.drop == ["ALL"]
    agent = pods["agent"].spec.containers[0]
    args = list(agent.args)
    assert args[args.index("--bird-socket") + 1] == "/run/routevpn/bird.ctl"
    assert args[args.index("--bgp-local-asn") + 1] == "64512"
    writable = {m.mount_path for m in agent.volume_mounts if not m.read_only}
    assert "/run/routevpn/bird" in writable and "/run/routevpn" not in writable
    base = f"/run/routevpn/{release.namespace}/{release.name}"
    paths = {v.name: v.host_path.path for v in pods["agent"].spec.volumes if v.host_path}
    assert paths["bird-conf"] == f"{base}/bird" and paths["vici"] == base
