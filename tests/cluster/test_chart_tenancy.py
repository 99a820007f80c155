"""Who may do what, on a real API server with the chart installed: agents and tenants.

An agent's credentials are real Pod-bound tokens (a Pod object on a node, a
TokenRequest bound to it): the node name the API server puts into the token is what the
chart's node guard keys on. Tenants are ServiceAccounts with a Role in their own
namespace, as docs/security.md tells an admin to grant: VpnTunnels and Secrets there,
never vpntunnels/status. Checked both with `kubectl auth can-i --as` and with real
requests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from routevpn.agent.liveness import LivenessLease
from routevpn.api import naming
from routevpn.kube.client import KubeClient
from support.cluster import Kubectl
from support.helm import Helm, Release, helm_binary, install
from support.kube import create_namespace, create_node, delete_namespace, delete_node, wait_until
from support.secretscan import REGISTRY
from support.tokens import bound_token, service_account_token, token_client

#: The tenants' PSK (registered for the secret scan where a Secret carries it).
TENANT_PSK = "k" * 32

G, V, P = naming.GROUP, naming.VERSION, naming.PLURAL


@pytest.fixture(scope="module")
def release(
    kubeconfig: Path,
    kube: client.ApiClient,
    kubectl: Kubectl,
    tmp_path_factory: pytest.TempPathFactory,
    crd: list[str],
) -> Generator[Release, None, None]:
    helm = Helm(helm_binary(), kubeconfig)
    yield from install(helm, kube, kubectl, tmp_path_factory.mktemp("values"), "tenancy")


@pytest.fixture(scope="module")
def nodes(release: Release, kube: client.ApiClient) -> Iterator[tuple[str, str]]:
    a, b = f"{release.name}-node-a", f"{release.name}-node-b"
    for n in (a, b):
        create_node(kube, n)
    try:
        yield a, b
    finally:
        for n in (a, b):
            delete_node(kube, n)


def tunnel(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": naming.API_VERSION,
        "kind": naming.KIND,
        "metadata": {"name": name, "labels": {naming.NODE_LABEL: node}},
        "spec": {
            "nodeName": node,
            "local": {"address": "192.0.2.1"},
            "remote": {"address": "198.51.100.1"},
            "auth": {"type": "psk", "psk": {"secretRef": {"name": "psk"}}},
        },
    }


def custom(api: client.ApiClient) -> Any:
    return client.CustomObjectsApi(api)


def status_of(api: client.ApiClient, ns: str, name: str, message: str) -> int:
    """HTTP status of an agent-style status apply (server-side, its field manager)."""
    body = {
        "apiVersion": naming.API_VERSION,
        "kind": naming.KIND,
        "metadata": {"namespace": ns, "name": name},
        "status": {"conditions": [{"type": "Configured", "status": "False", "reason": "X",
                                   "message": message, "lastTransitionTime":
                                   "2026-01-01T00:00:00Z"}]},
    }  # fmt: skip
    return _status(
        lambda: custom(api).patch_namespaced_custom_object_status(
            G,
            V,
            ns,
            P,
            name,
            body,
            field_manager="routevpn-agent",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
    )


def _status(call: Callable[[], Any]) -> int:
    try:
        call()
    except ApiException as e:
        return int(e.status)
    return 200


def finalizer_of(api: client.ApiClient, ns: str, name: str) -> int:
    patch = {"metadata": {"finalizers": [naming.AGENT_FINALIZER]}}
    return _status(lambda: custom(api).patch_namespaced_custom_object(G, V, ns, P, name, patch))


def event_from(api: client.ApiClient, ns: str, tunnel_name: str, host: str) -> int:
    body = {
        "metadata": {"name": f"{tunnel_name}.{secrets.token_hex(6)}", "namespace": ns},
        "involvedObject": {"apiVersion": naming.API_VERSION, "kind": naming.KIND,
                           "name": tunnel_name, "namespace": ns},
        "type": "Normal", "reason": "Configured", "message": "m",
        "source": {"component": "routevpn-agent", "host": host},
        "reportingComponent": "routevpn-agent", "reportingInstance": host,
    }  # fmt: skip
    core: Any = client.CoreV1Api(api)
    return _status(lambda: core.create_namespaced_event(ns, body))


@dataclass
class AgentWorld:
    ns: str
    node_a: str
    node_b: str
    agent_a: client.ApiClient


@pytest.fixture
def agent_world(
    release: Release, nodes: tuple[str, str], kube: client.ApiClient, kubeconfig: Path
) -> Iterator[AgentWorld]:
    ns = create_namespace(kube, "tenancy-agent")
    node_a, node_b = nodes
    sa = release.agent_sa.rsplit(":", 1)[1]
    agent_a = token_client(kubeconfig, bound_token(kube, release.agent_namespace, sa, node_a))
    try:
        for name, node in (("on-a", node_a), ("on-b", node_b)):
            custom(kube).create_namespaced_custom_object(G, V, ns, P, tunnel(name, node))
        yield AgentWorld(ns, node_a, node_b, agent_a)
    finally:
        agent_a.close()  # type: ignore[no-untyped-call]
        _drop_finalizers(kube, ns, ("on-a", "on-b"))
        delete_namespace(kube, ns)


def _drop_finalizers(kube: client.ApiClient, ns: str, names: tuple[str, ...]) -> None:
    drop = {"metadata": {"finalizers": None}}
    for name in names:
        try:
            custom(kube).patch_namespaced_custom_object(G, V, ns, P, name, drop)
        except ApiException as e:
            if e.status != 404:
                raise


def test_agent_writes_only_tunnels_of_its_own_node(agent_world: AgentWorld) -> None:
    w = agent_world
    # The API server learns policies through an informer: wait until B is refused.
    wait_until(
        lambda: finalizer_of(w.agent_a, w.ns, "on-b") == 403,
        timeout=30,
        what="the node guard refusing node A's agent on node B's tunnel",
    )
    assert status_of(w.agent_a, w.ns, "on-b", "forged") == 403
    assert event_from(w.agent_a, w.ns, "on-b", w.node_b) == 403
    # Its own node's tunnel: finalizer, status and Events all allowed.
    assert finalizer_of(w.agent_a, w.ns, "on-a") == 200
    assert status_of(w.agent_a, w.ns, "on-a", "ok") == 200
    assert event_from(w.agent_a, w.ns, "on-a", w.node_a) == 200
    # Moving a tunnel onto its node (relabelling) is the operator's, not the agent's.
    relabel = {"metadata": {"labels": {naming.NODE_LABEL: w.node_a}}}
    got = _status(
        lambda: custom(w.agent_a).patch_namespaced_custom_object(G, V, w.ns, P, "on-b", relabel)
    )
    assert got == 403


def lease_write(api: client.ApiClient, ns: str, name: str, holder: str) -> int:
    """Create a Lease `name` held by `holder` as `api`; the HTTP status."""
    body = {"metadata": {"name": name}, "spec": {"holderIdentity": holder}}
    coord: Any = client.CoordinationV1Api(api)
    return _status(lambda: coord.create_namespaced_lease(ns, body))


def test_agent_writes_only_its_own_nodes_liveness_lease(
    agent_world: AgentWorld, release: Release
) -> None:
    w, rns = agent_world, release.namespace
    # The API server learns policies through an informer: wait until B's Lease is refused.
    wait_until(
        lambda: lease_write(w.agent_a, rns, naming.agent_lease_name(w.node_b), w.node_b) == 403,
        timeout=30,
        what="the node guard refusing node A's agent on node B's Lease",
    )
    # Its own Lease's name but another holder; any other Lease (the operator's, say).
    assert lease_write(w.agent_a, rns, naming.agent_lease_name(w.node_a), w.node_b) == 403
    assert lease_write(w.agent_a, rns, f"{release.name}-routevpn-operator", w.node_a) == 403
    # The agent's own renewals, through the agent's own code: created, then replaced.
    lease = LivenessLease(KubeClient(w.agent_a, "routevpn-agent"), w.node_a, rns)
    asyncio.run(lease.renew())
    asyncio.run(lease.renew())
    assert lease.renewals == 2
    got: Any = client.CoordinationV1Api(w.agent_a).read_namespaced_lease(lease.name, rns)
    assert got.spec.holder_identity == w.node_a and got.spec.lease_duration_seconds == 40


def test_agent_token_without_a_node_may_write_nothing(
    agent_world: AgentWorld, release: Release, kube: client.ApiClient, kubeconfig: Path
) -> None:
    w = agent_world
    sa = release.agent_sa.rsplit(":", 1)[1]
    loose = token_client(kubeconfig, service_account_token(kube, release.agent_namespace, sa))
    try:
        wait_until(
            lambda: finalizer_of(loose, w.ns, "on-a") == 403,
            timeout=30,
            what="the node guard refusing a token bound to no Pod",
        )
        assert status_of(loose, w.ns, "on-a", "x") == 403
        assert event_from(loose, w.ns, "on-a", w.node_a) == 403
    finally:
        loose.close()  # type: ignore[no-untyped-call]


# --- tenants ----------------------------------------------------------------------------

TENANT_RULES = [
    {"apiGroups": [G], "resources": [P],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
]  # fmt: skip


@dataclass
class Tenant:
    ns: str
    user: str
    api: client.ApiClient


def _tenant(kube: client.ApiClient, kubeconfig: Path, prefix: str) -> Tenant:
    ns = create_namespace(kube, prefix)
    core: Any = client.CoreV1Api(kube)
    rbac: Any = client.RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "tenant"}})
    rbac.create_namespaced_role(ns, {"metadata": {"name": "tunnels"}, "rules": TENANT_RULES})
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "tunnels"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "tunnels"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}],
        },
    )  # fmt: skip
    meta = {"name": "psk", "labels": {naming.USAGE_LABEL: naming.USAGE_IKE}}
    REGISTRY.add_psk(TENANT_PSK, f"{ns}/psk")
    core.create_namespaced_secret(ns, {"metadata": meta, "stringData": {"psk": TENANT_PSK}})
    custom(kube).create_namespaced_custom_object(G, V, ns, P, tunnel("t", "nowhere"))
    token = service_account_token(kube, ns, "tenant")
    return Tenant(ns, f"system:serviceaccount:{ns}:tenant", token_client(kubeconfig, token))


@pytest.fixture(scope="module")
def tenants(
    release: Release, kube: client.ApiClient, kubeconfig: Path
) -> Iterator[tuple[Tenant, Tenant]]:
    a = _tenant(kube, kubeconfig, "tenant-a")
    b = _tenant(kube, kubeconfig, "tenant-b")
    # A delivered Secret in routevpn's namespace, as the operator writes one.
    core: Any = client.CoreV1Api(kube)
    core.create_namespaced_secret(
        release.namespace,
        {
            "metadata": {
                "name": naming.secret_name(a.ns, "t"),
                "annotations": naming.delivered_annotations(a.ns, "t"),
            },
            "stringData": {"psk": TENANT_PSK},
        },
    )
    try:
        yield a, b
    finally:
        for t in (a, b):
            t.api.close()  # type: ignore[no-untyped-call]
            delete_namespace(kube, t.ns)


def _can_i(kubectl: Kubectl, user: str, verb: str, resource: str, ns: str) -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={user}", "--namespace", ns]
    args += [f"--subresource={sub}"] if sub else []
    res = kubectl(*args, check=False)
    assert res.stdout.strip() in ("yes", "no"), res.stdout + res.stderr
    return res.stdout.strip() == "yes"


VT = f"{P}.{G}"
# (verb, resource, where: "own" | "other" | "routevpn", allowed)
TENANT_MATRIX = [
    ("create", VT, "own", True),
    ("patch", VT, "own", True),
    ("patch", f"{VT}/status", "own", False),
    ("get", "secrets", "own", True),
    ("get", VT, "other", False),
    ("list", VT, "other", False),
    ("get", "secrets", "other", False),
    ("list", "secrets", "other", False),
    ("get", "secrets", "routevpn", False),
    ("list", "secrets", "routevpn", False),
    ("watch", "secrets", "routevpn", False),
]


@pytest.mark.parametrize(("verb", "resource", "where", "allowed"), TENANT_MATRIX)
def test_tenant_can_i(
    tenants: tuple[Tenant, Tenant],
    release: Release,
    kubectl: Kubectl,
    verb: str,
    resource: str,
    where: str,
    allowed: bool,
) -> None:
    for me, other in (tenants, tenants[::-1]):
        ns = {"own": me.ns, "other": other.ns, "routevpn": release.namespace}[where]
        assert _can_i(kubectl, me.user, verb, resource, ns) is allowed


def _outside_calls(me: Tenant, other: Tenant, rns: str) -> list[Callable[[], Any]]:
    """Requests tenant `me` makes outside what it owns: each must be refused (403)."""
    core: Any = client.CoreV1Api(me.api)
    objs = custom(me.api)
    forged = {"status": {"node": "forged"}}
    return [
        lambda: objs.list_namespaced_custom_object(G, V, other.ns, P),
        lambda: objs.get_namespaced_custom_object(G, V, other.ns, P, "t"),
        lambda: core.read_namespaced_secret("psk", other.ns),
        lambda: core.list_namespaced_secret(rns),
        lambda: core.read_namespaced_secret(naming.secret_name(me.ns, "t"), rns),
        lambda: objs.patch_namespaced_custom_object_status(G, V, me.ns, P, "t", forged),
    ]


def test_tenant_requests_stay_in_their_namespace(
    tenants: tuple[Tenant, Tenant], release: Release
) -> None:
    for me, other in (tenants, tenants[::-1]):
        objs = custom(me.api)
        assert objs.get_namespaced_custom_object(G, V, me.ns, P, "t")["metadata"]["name"] == "t"
        for call in _outside_calls(me, other, release.namespace):
            assert _status(call) == 403
        got = json.dumps(objs.get_namespaced_custom_object(G, V, me.ns, P, "t"))
        assert "forged" not in got
