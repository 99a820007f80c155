"""End to end, on a real cluster: the release's pods and one tunnel up through it.

One module for every real cluster, through kubectl only:

- the ``node`` tier runs it against the lab node (kubelet + containerd in the QEMU
  guest), where it installs the chart and brings the seed example up (``target``);
- ``kind/cluster.sh e2e`` runs it against the kind cluster ``kind/cluster.sh up`` made,
  named by ``ROUTEVPN_KUBECONFIG`` (its release and tunnel by ``ROUTEVPN_E2E_*``, see
  ``support.release.external_target``; the defaults are kind/cluster.sh's);
- any cluster with the chart installed and a tunnel Ready, the same way.

What needs the node's own shell (traffic, ESP counters, the kernel's SAs, the socket
directory, upgrades and repairs) is in test_node_chart.py, on the lab node only.
"""

from __future__ import annotations

from typing import Any

import pytest

from support import release
from support.release import Target

pytestmark = pytest.mark.timeout(2400)  # the lab node's boot and install, when first


def _node_pods(target: Target) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return release.pods(target, "agent"), release.pods(target, "charon")


def test_operator_agent_and_charon_pods_run_ready(target: Target) -> None:
    ops = release.pods(target, "operator")
    agents, charons = _node_pods(target)
    assert ops and all(map(release.ready, ops)), release.pod_summary(ops)
    assert agents and all(map(release.ready, agents)), release.pod_summary(agents)
    assert charons and all(map(release.ready, charons)), release.pod_summary(charons)
    # one charon beside each agent, on the same nodes
    assert sorted(p["spec"]["nodeName"] for p in agents) == sorted(
        p["spec"]["nodeName"] for p in charons
    )
    # Ready came from the chart's own probes, not from a missing probe
    for agent in agents:
        (c,) = agent["spec"]["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        inits = agent["status"].get("initContainerStatuses", [])
        assert all(s["state"].get("terminated", {}).get("exitCode") == 0 for s in inits), inits
    for charon in charons:
        (c,) = charon["spec"]["containers"]
        assert "swanctl" in c["readinessProbe"]["exec"]["command"]
        assert "swanctl" in c["livenessProbe"]["exec"]["command"]
    for op in ops:
        assert "readinessProbe" in op["spec"]["containers"][0]


def test_live_agent_and_charon_pod_security_context(target: Target) -> None:
    """The chart's security context as the API server stored it on the running Pods."""
    want = {
        "agent": ["NET_ADMIN", "NET_RAW"],
        "charon": ["NET_ADMIN", "NET_BIND_SERVICE"],
        "load-kernel-modules": ["SYS_MODULE"],
    }
    agents, charons = _node_pods(target)
    for pod in agents + charons:
        spec = pod["spec"]
        assert spec["hostNetwork"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not spec.get("hostPID") and not spec.get("hostIPC")
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert not sc.get("privileged", False), c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert sorted(sc["capabilities"]["add"]) == want[c["name"]], c["name"]
            # the pod-level RuntimeDefault is not undone per container
            seccomp = sc.get("seccompProfile", {"type": "RuntimeDefault"})
            assert seccomp == {"type": "RuntimeDefault"}
        # the socket directory: this release's own, mounted read-only by the agent
        (vici,) = [v for v in spec["volumes"] if v["name"] == "vici"]
        assert vici["hostPath"]["path"] == f"/run/routevpn/{target.namespace}/{target.release}"
    for pod in charons:
        assert pod["spec"]["automountServiceAccountToken"] is False


def test_operator_pods_run_as_non_root(target: Target) -> None:
    for pod in release.pods(target, "operator"):
        spec = pod["spec"]
        for c in spec["containers"]:
            sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, sc
            assert sc.get("runAsUser") == 65532, sc
            assert sc.get("privileged", False) is False
            assert sc["capabilities"]["drop"] == ["ALL"], sc
            assert "add" not in sc["capabilities"], sc


def test_kubectl_get_vpnt_shows_sa_facts(target: Target) -> None:
    table = target.kubectl("get", "vpnt", target.tunnel, "-n", target.tunnel_namespace).stdout
    assert "ESTABLISHED" in table and "INSTALLED" in table and "True" in table, table
    tunnel = release.tunnel(target.kubectl, target.tunnel_namespace, target.tunnel)
    status = (tunnel or {})["status"]
    agents, _ = _node_pods(target)
    assert status["node"] in {p["spec"]["nodeName"] for p in agents}
    assert status["ike"]["state"] == "ESTABLISHED"
    child = status["child"]
    assert child["state"] == "INSTALLED"
    assert child["spiIn"] and child["spiOut"], child


def test_no_drift_after_status_was_written(target: Target) -> None:
    """As Argo CD sees it: the tunnel's manifest, applied before, and the controllers'
    status, finalizers and labels written since: a server-side diff shows nothing; a
    sync (server-side apply, no forced conflicts) goes through and changes nothing."""
    manifest = ("-n", target.tunnel_namespace, "-f", str(target.manifest))
    ssa = ("--server-side", f"--field-manager={release.FIELD_MANAGER}")
    before = release.tunnel(target.kubectl, target.tunnel_namespace, target.tunnel)
    for _ in ("before a sync", "after it"):
        res = target.kubectl("diff", *ssa, *manifest, check=False)
        assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr
        target.kubectl("apply", *ssa, *manifest)
    after = release.tunnel(target.kubectl, target.tunnel_namespace, target.tunnel)
    assert before and after
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"] == before["spec"]
