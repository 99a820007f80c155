"""`routevpn release-all` (the chart's pre-delete hook) against the real API server.

After it, no tunnel keeps a finalizer that nothing would remove once routevpn is gone
(deleting one completes at once), a foreign finalizer is kept, each released tunnel has
an Event saying what stays on its node, and the operator's Secrets and the agents' Leases
in its namespace are gone while other Secrets there stay.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from routevpn.api import naming
from routevpn.controller import bundle
from support.kube import create_namespace, delete_namespace, wait_until
from support.operator import create_tunnel, delete_tunnel, get_tunnel, tunnel_body

pytestmark = pytest.mark.usefixtures("crd")


def _finalize(custom: Any, ns: str, name: str, finalizers: list[str]) -> None:
    custom.patch_namespaced_custom_object(
        naming.GROUP, naming.VERSION, ns, naming.PLURAL, name,
        {"metadata": {"finalizers": finalizers}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip


def test_release_all_leaves_no_tunnel_undeletable(
    kube: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    core: Any = client.CoreV1Api(kube)
    custom: Any = client.CustomObjectsApi(kube)
    coord: Any = client.CoordinationV1Api(kube)
    system = create_namespace(kube, "routevpn-release")
    try:
        create_tunnel(kube, namespace, tunnel_body("held", nodeName="node-a"))
        create_tunnel(kube, namespace, tunnel_body("foreign", nodeName="node-a"))
        _finalize(custom, namespace, "held", [naming.OPERATOR_FINALIZER, naming.AGENT_FINALIZER])
        _finalize(custom, namespace, "foreign", ["example.com/keep", naming.OPERATOR_FINALIZER])
        managed = {"app.kubernetes.io/managed-by": bundle.MANAGED_BY}
        core.create_namespaced_secret(system, {"metadata": {"name": "d1", "labels": managed}})
        core.create_namespaced_secret(system, {"metadata": {"name": "someone-elses"}})
        agent_lease = {naming.AGENT_LEASE_LABEL: naming.AGENT_LEASE_VALUE}
        coord.create_namespaced_lease(
            system, {"metadata": {"name": "routevpn-agent-node-a", "labels": agent_lease}}
        )
        coord.create_namespaced_lease(system, {"metadata": {"name": "other-lease"}})

        out = subprocess.run(
            [sys.executable, "-m", "routevpn", "release-all", "--namespace", system,
             "--kubeconfig", str(kubeconfig)],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        # release-all is cluster-wide and the control plane is the session's: other
        # modules' tunnels may be there too, so it is judged on this test's own two
        said_out = out.stderr + out.stdout
        for name in ("held", "foreign"):
            assert f"{namespace}/{name}: released" in said_out, said_out
        assert "released 0 tunnel(s)" not in said_out, said_out

        held = get_tunnel(kube, namespace, "held") or {}
        assert not held["metadata"].get("finalizers")
        foreign = get_tunnel(kube, namespace, "foreign") or {}
        assert foreign["metadata"]["finalizers"] == ["example.com/keep"]
        assert [s.metadata.name for s in core.list_namespaced_secret(system).items] == [
            "someone-elses"
        ]
        assert [x.metadata.name for x in coord.list_namespaced_lease(system).items] == [
            "other-lease"
        ]

        def said() -> list[Any]:
            return [
                e for e in core.list_namespaced_event(namespace).items
                if e.reason == "Uninstalled" and e.involved_object.name == "held"
            ]  # fmt: skip

        (event,) = wait_until(said, timeout=15, what="the Uninstalled Event")
        assert naming.conn_name(namespace, "held") in event.message

        # deleting it now completes without anyone acting
        delete_tunnel(kube, namespace, "held")
        wait_until(lambda: get_tunnel(kube, namespace, "held") is None, timeout=15)
        # and running it again finds nothing more to do
        again = subprocess.run(
            [sys.executable, "-m", "routevpn", "release-all", "--namespace", system,
             "--kubeconfig", str(kubeconfig)],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        again_out = again.stderr + again.stdout
        assert f"{namespace}/" not in again_out, again_out
        assert "released " in again_out, again_out
    finally:
        with contextlib.suppress(ApiException):
            _finalize(custom, namespace, "foreign", [])
        delete_namespace(kube, system)
