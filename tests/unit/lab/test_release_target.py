"""Which cluster the end-to-end module (tests/node/test_e2e.py) checks, from the
environment: kind/cluster.sh's by default, anything else when told."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import release

KIND = Path(__file__).resolve().parents[3] / "kind"


def test_no_kubeconfig_means_the_lab_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTEVPN_KUBECONFIG", raising=False)
    assert release.external_target() is None


def test_the_defaults_are_kind_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTEVPN_KUBECONFIG", "/x/kubeconfig")
    monkeypatch.setenv("ROUTEVPN_KUBECTL", "/x/kubectl")
    for name in ("RELEASE", "NAMESPACE", "AGENT_NAMESPACE", "TUNNEL", "MANIFEST"):
        monkeypatch.delenv(f"ROUTEVPN_E2E_{name}", raising=False)
    target = release.external_target()
    assert target is not None
    assert (target.kubectl.binary, target.kubectl.kubeconfig) == (
        Path("/x/kubectl"),
        Path("/x/kubeconfig"),
    )
    script = (KIND / "cluster.sh").read_text()
    assert f"RELEASE={target.release}\n" in script
    assert f"NAMESPACE={target.namespace}\n" in script
    values = (KIND / "values.yaml").read_text()
    assert f"namespace: {target.agent_namespace}\n" in values
    assert target.manifest == KIND / "example-tunnel.yaml"
    assert (target.tunnel_namespace, target.tunnel) == ("default", "kind-peer")
    assert f"name: {target.tunnel}\n" in target.manifest.read_text()


def test_another_cluster_is_described_by_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "ROUTEVPN_KUBECONFIG": "/y/kc",
        "ROUTEVPN_KUBECTL": "/y/kubectl",
        "ROUTEVPN_E2E_RELEASE": "vpn",
        "ROUTEVPN_E2E_NAMESPACE": "vpn-system",
        "ROUTEVPN_E2E_AGENT_NAMESPACE": "vpn-agent",
        "ROUTEVPN_E2E_TUNNEL": "tenant-a/site-b",
        "ROUTEVPN_E2E_MANIFEST": "/y/site-b.yaml",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    target = release.external_target()
    assert target is not None
    assert (target.release, target.namespace, target.agent_namespace) == (
        "vpn",
        "vpn-system",
        "vpn-agent",
    )
    assert (target.tunnel_namespace, target.tunnel) == ("tenant-a", "site-b")
    assert target.manifest == Path("/y/site-b.yaml")
