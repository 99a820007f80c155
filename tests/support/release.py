"""One installed routevpn release on a real cluster, seen through kubectl only.

The end-to-end module ``tests/node/test_e2e.py`` runs against a ``Target``: the lab
node's release (the ``node`` tier installs it and brings the seed example up), or any
cluster named by ``ROUTEVPN_KUBECONFIG`` where the chart is installed and one tunnel was
applied, such as the one ``kind/cluster.sh up`` makes (``external_target()`` reads its
description from the environment; the defaults are kind/cluster.sh's).

``Target``  ``pods(target, component)``  ``ready(pod)``  ``pod_summary(pods)``
``tunnel(kubectl, namespace, name)``  ``conditions(tunnel)``
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cluster import Kubectl, bin_dir
from .tiers import missing

REPO = Path(__file__).resolve().parents[2]
#: Argo CD applies server-side with its own field manager; the drift checks do the same.
FIELD_MANAGER = "argocd-controller"


@dataclass(frozen=True)
class Target:
    """Where the release runs and which of its tunnels is up."""

    kubectl: Kubectl
    release: str
    namespace: str  # the release's (operator)
    agent_namespace: str  # agent and charon
    manifest: Path  # the tunnel's manifest, as the user applied it
    tunnel_namespace: str
    tunnel: str
    where: str  # "lab node" or the kubeconfig's path, for messages


def external_target() -> Target | None:
    """The cluster ``ROUTEVPN_KUBECONFIG`` names, described by ``ROUTEVPN_E2E_*``
    (defaults: kind/cluster.sh's release and example tunnel); None when unset."""
    kubeconfig = os.environ.get("ROUTEVPN_KUBECONFIG")
    if not kubeconfig:
        return None
    chosen = os.environ.get("ROUTEVPN_KUBECTL")
    bins = None if chosen else bin_dir()
    binary = Path(chosen) if chosen else (bins / "kubectl" if bins else None)
    if binary is None:
        missing("kubectl: run hack/local-cluster.sh build, or set ROUTEVPN_KUBECTL")
    assert binary is not None
    env = os.environ.get
    tunnel = env("ROUTEVPN_E2E_TUNNEL", "default/kind-peer")
    tunnel_namespace, _, name = tunnel.rpartition("/")
    return Target(
        kubectl=Kubectl(binary, Path(kubeconfig)),
        release=env("ROUTEVPN_E2E_RELEASE", "routevpn"),
        namespace=env("ROUTEVPN_E2E_NAMESPACE", "routevpn-system"),
        agent_namespace=env("ROUTEVPN_E2E_AGENT_NAMESPACE", "routevpn-agent"),
        manifest=Path(env("ROUTEVPN_E2E_MANIFEST", str(REPO / "kind" / "example-tunnel.yaml"))),
        tunnel_namespace=tunnel_namespace or "default",
        tunnel=name,
        where=kubeconfig,
    )


def pods(target: Target, component: str) -> list[dict[str, Any]]:
    """The release's pods of `component` (operator, agent, charon)."""
    namespace = target.namespace if component == "operator" else target.agent_namespace
    selector = (
        f"app.kubernetes.io/component={component},app.kubernetes.io/instance={target.release}"
    )
    out = target.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status", {})
    conds = {c["type"]: c["status"] for c in status.get("conditions", [])}
    return status.get("phase") == "Running" and conds.get("Ready") == "True"


def pod_summary(items: list[dict[str, Any]]) -> str:
    lines = []
    for p in items:
        st = p.get("status", {})
        waiting = [
            f"{c['name']}: {c.get('state')}"
            for c in st.get("containerStatuses", [])
            if not c.get("ready")
        ]
        lines.append(f"{p['metadata']['name']} {st.get('phase')} {waiting}")
    return "\n".join(lines)


def tunnel(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    res = kubectl("get", "vpnt", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(res.stdout) if res.returncode == 0 else None


def conditions(obj: dict[str, Any] | None) -> dict[str, str]:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return {c["type"]: c["status"] for c in conds}
