"""The uninstall hook: a pre-delete Job that runs `routevpn release-all` with the least it
needs (the code itself is run against a real API server in tests/cluster/test_release_all.py,
and the Job by a real kubelet in the node tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.chart import Manifest, find, render
from support.chart_rbac import rules, v


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    return render({}, tmp_path_factory.mktemp("hook"))


def test_the_job_runs_release_all_before_the_release_goes(docs: list[Manifest]) -> None:
    job = find(docs, "Job", "uninstall")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["release-all", "--namespace", "routevpn-system"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert job["spec"]["activeDeadlineSeconds"] > 0
    # every object of the hook is a hook too, created before the Job and removed after
    hooked = [d for d in docs if "uninstall" in d["metadata"]["name"]]
    assert {d["kind"] for d in hooked} == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Job",
    }  # fmt: skip
    assert all(d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete" for d in hooked)


def test_the_hook_may_release_tunnels_and_clean_only_its_namespace(docs: list[Manifest]) -> None:
    assert rules(find(docs, "ClusterRole", "uninstall")) == {
        ("routevpn.io", "vpntunnels", v("get", "list", "patch")),
        ("", "events", v("create")),
    }
    role = find(docs, "Role", "uninstall")
    assert role["metadata"]["namespace"] == "routevpn-system"
    assert rules(role) == {
        ("", "secrets", v("list", "delete")),
        ("coordination.k8s.io", "leases", v("list", "delete")),
    }


def test_the_hook_can_be_turned_off(tmp_path: Path) -> None:
    off = render({"uninstallHook": {"enabled": False}}, tmp_path)
    assert not [d for d in off if "uninstall" in d["metadata"]["name"]]
