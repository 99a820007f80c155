"""The chart installed on the lab node, and the seed example up through it.

``install(lab_node, workdir)`` -> generator of one ``Installed`` (``helm install`` with
values that only point at the local images; every pod Ready through the chart's probes;
uninstalled at the end as a safety net). ``bring_up_seed(installed)`` -> generator of
one ``Seed`` (the far end configured by hand in the guest, the cluster admin's policy,
the seed example applied server-side as Argo CD would; Ready). ``installed.target`` is
what the end-to-end module (tests/node/test_e2e.py) runs against.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import farend, release
from . import node as labnode
from .kube import wait_until
from .tiers import missing

ROOT = labnode.REPO
CHART = labnode.CHART
RELEASE = "routevpn"
NAMESPACE = "routevpn-system"
AGENT_NAMESPACE = str(labnode.CHART_VALUES["agent"]["namespace"])
# Emulated CPUs: Python start-up and kopf's first sync take a while.
PODS_READY_TIMEOUT = 600.0
TUNNEL_READY_TIMEOUT = 300.0

SEED = ROOT / "examples" / "seed-ipv6-vti.yaml"
TUNNEL = "site-b"
TUNNEL_NS = "default"
#: What the cluster admin grants the seed's namespace (docs/policy.md): the chart denies
#: tunnels in a namespace no VpnTunnelPolicy selects.
SEED_POLICY = ROOT / "examples" / "tenancy" / "seed-policy.yaml"


@dataclass(frozen=True)
class Installed:
    """The release on the lab node."""

    node: labnode.LabNode
    helm: Path
    values: Path
    started: float  # monotonic clock at `helm install`
    install_seconds: float

    @property
    def target(self) -> release.Target:
        return release.Target(
            kubectl=self.node.kubectl,
            release=RELEASE,
            namespace=NAMESPACE,
            agent_namespace=AGENT_NAMESPACE,
            manifest=SEED,
            tunnel_namespace=TUNNEL_NS,
            tunnel=TUNNEL,
            where="the lab node",
        )

    def run_helm(self, *args: str, check: bool = True) -> str:
        res = subprocess.run(
            [str(self.helm), "--kubeconfig", str(self.node.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        assert res.returncode == 0 or not check, (
            f"helm {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
        )
        return res.stdout

    def pods(self, component: str) -> list[dict[str, Any]]:
        return release.pods(self.target, component)


def _helm_binary() -> Path:
    path = labnode.helm_binary()
    if path is None:
        missing("helm: run hack/tools.sh build")
    assert path is not None
    return path


def _wait_all_ready(inst: Installed) -> None:
    def all_ready() -> bool:
        ops = inst.pods("operator")
        node_pods = inst.pods("agent") + inst.pods("charon")
        return len(ops) == 2 and len(node_pods) == 2 and all(map(release.ready, ops + node_pods))

    try:
        wait_until(all_ready, timeout=PODS_READY_TIMEOUT, interval=2.0, what="chart pods Ready")
    except TimeoutError as e:
        pods = [p for c in ("operator", "agent", "charon") for p in inst.pods(c)]
        events = inst.node.kubectl("get", "events", "-A", check=False).stdout[-4000:]
        summary = release.pod_summary(pods)
        raise TimeoutError(f"{e}\n{summary}\n{events}\n{inst.node.diagnostics()}") from e


def install(lab_node: labnode.LabNode, workdir: Path) -> Iterator[Installed]:
    """`helm install` on the lab node, every pod Ready; uninstalled at the end (the
    node tier's last test uninstalls and checks the node after it: this is a safety net)."""
    values = workdir / "values.yaml"
    values.write_text(yaml.safe_dump(labnode.CHART_VALUES))
    kubectl = lab_node.kubectl
    kubectl("create", "namespace", NAMESPACE)
    # the operator's namespace enforces `restricted`, as docs/install.md says to
    kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
    t0 = time.monotonic()
    inst = Installed(lab_node, _helm_binary(), values, t0, 0.0)
    inst.run_helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(values))
    try:
        _wait_all_ready(inst)
        yield Installed(lab_node, inst.helm, values, t0, time.monotonic() - t0)
    finally:
        inst.run_helm(
            "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m",
            "--ignore-not-found", check=False,
        )  # fmt: skip
        kubectl("delete", "namespace", NAMESPACE, AGENT_NAMESPACE, "--wait=false", check=False)


def seed_psk() -> str:
    for doc in yaml.safe_load_all(SEED.read_text()):
        if doc and doc.get("kind") == "Secret":
            return str(doc["stringData"]["psk"])
    raise AssertionError(f"{SEED.name} holds no Secret")


@dataclass
class Seed:
    """The seed tunnel applied on the node, against the far end set up by hand."""

    tunnel: dict[str, Any]
    install_to_ready: float


def bring_up_seed(installed: Installed) -> Iterator[Seed]:
    """The far end, the policy and the seed example, Ready; all removed at the end."""
    node = installed.node
    node.run(farend.setup_script(seed_psk()))
    try:
        node.kubectl("apply", "--server-side", "-f", str(SEED_POLICY))
        node.kubectl(
            "apply", "--server-side", f"--field-manager={release.FIELD_MANAGER}",
            "-n", TUNNEL_NS, "-f", str(SEED),
        )  # fmt: skip

        def ready() -> dict[str, Any] | None:
            t = release.tunnel(node.kubectl, TUNNEL_NS, TUNNEL)
            return t if release.conditions(t).get("Ready") == "True" else None

        try:
            tunnel = wait_until(
                ready, timeout=TUNNEL_READY_TIMEOUT, interval=2.0, what="seed Ready"
            )
        except TimeoutError as e:
            last = release.tunnel(node.kubectl, TUNNEL_NS, TUNNEL)
            raise TimeoutError(f"{e}\n{json.dumps(last, indent=1)[-3000:]}") from e
        seed = Seed(tunnel, time.monotonic() - installed.started)
        node.figures["helm install → pods Ready"] = installed.install_seconds
        node.figures["helm install → seed tunnel Ready"] = seed.install_to_ready
        yield seed
    finally:
        node.kubectl("delete", "-n", TUNNEL_NS, "-f", str(SEED), "--wait=true", check=False,
                     timeout=300)  # fmt: skip
        node.run(farend.teardown_script(), check=False)
        node.kubectl("delete", "-f", str(SEED_POLICY), "--ignore-not-found", check=False)
