"""Install the chart with the pinned helm on the cluster tier's API server.

``helm_binary()``  ``Helm(binary, kubeconfig)(*args, check=True)``
``install(helm, kube, kubectl, workdir, prefix, **values)`` -> generator of one ``Release``
``label_pod_security(kubectl, namespace, level)``
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from support.cluster import REPO, Kubectl
from support.kube import create_namespace, delete_namespace
from support.tiers import missing

ROOT = REPO
CHART = ROOT / "charts" / "routevpn"


def helm_binary() -> Path:
    res = subprocess.run(
        ["bash", str(ROOT / "hack" / "tools.sh"), "path", "helm"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    path = Path(res.stdout.strip())
    if res.returncode != 0 or not path.exists():
        missing("helm: run hack/tools.sh build")
    return path


@dataclass(frozen=True)
class Helm:
    """The pinned helm against the tier's cluster."""

    binary: Path
    kubeconfig: Path

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}:\n{res.stdout}\n{res.stderr}")
        return res


@dataclass(frozen=True)
class Release:
    """One installed release: its name, namespaces and service accounts."""

    name: str
    namespace: str
    agent_namespace: str
    install_stdout: str
    install_stderr: str

    @property
    def operator_sa(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-routevpn-operator"

    @property
    def agent_sa(self) -> str:
        return f"system:serviceaccount:{self.agent_namespace}:{self.name}-routevpn-agent"


def label_pod_security(kubectl: Kubectl, namespace: str, level: str) -> None:
    kubectl(
        "label",
        "namespace",
        namespace,
        "--overwrite",
        f"pod-security.kubernetes.io/enforce={level}",
        f"pod-security.kubernetes.io/warn={level}",
    )


def install(
    helm: Helm,
    kube: client.ApiClient,
    kubectl: Kubectl,
    workdir: Path,
    prefix: str,
    **values: Any,
) -> Generator[Release, None, None]:
    """Install into a fresh `restricted` namespace; the agent into a namespace of its own.
    Uninstalled and both namespaces deleted when the generator is closed."""
    namespace = create_namespace(kube, prefix)
    label_pod_security(kubectl, namespace, "restricted")
    name = f"rv{secrets.token_hex(3)}"
    agent_ns = f"{namespace}-agent"
    vals: dict[str, Any] = {
        "agent": {"namespace": agent_ns},
    }
    for key, sub in values.items():
        vals.setdefault(key, {}).update(sub)
    vfile = workdir / f"values-{name}.yaml"
    vfile.write_text(yaml.safe_dump(vals))
    res = helm("install", name, str(CHART), "--namespace", namespace, "-f", str(vfile))
    try:
        yield Release(name, namespace, agent_ns, res.stdout, res.stderr)
    finally:
        # No kubelet in the cluster tier runs the pre-delete Job: skip hooks here (the node
        # tier runs the chart's uninstall hook for real; test_release_all runs its code).
        helm("uninstall", name, "--namespace", namespace, "--wait", "--no-hooks", check=False)
        delete_namespace(kube, namespace)
        delete_namespace(kube, agent_ns)
