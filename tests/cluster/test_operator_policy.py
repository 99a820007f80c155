"""Tenancy on the real API server with the real operator: the table of hostile tunnels
(tests/data/hostile-vpntunnels.yaml), each refused at admission or contained (a False
Scheduled condition naming what the policy forbids, and nothing of it placed: no node
label, no delivered Secret); and the claims on a node that another namespace's tunnel
can't take, with messages that name nothing of the winner."""

# ruff: noqa: F811  (pytest fixtures imported from the harness are test parameters)

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiException

from routevpn.api import naming
from routevpn.api.policy import POLICY_PLURAL
from support.kube import NodeFactory, create_namespace, delete_namespace, wait_until
from support.mistakes import apply_set
from support.operator import (  # fixtures are imported to be used
    condition,
    create_tunnel,
    get_tunnel,
    is_placed,
    label,
    psk_secret,
    release_tunnels,
    routevpn_ns,  # noqa: F401
    start_operator,  # noqa: F401
    tunnel_body,
)

pytestmark = pytest.mark.cluster

TABLE = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "data" / "hostile-vpntunnels.yaml").read_text()
)
#: The cluster's networks as the chart would pass them (documentation ranges only).
CLUSTER_FLAGS = (
    "--pod-cidr", "198.51.100.0/25",
    "--service-cidr", "2001:db8:96::/112",
    "--api-server-address", "192.0.2.10",
)  # fmt: skip
GATEWAY = {"routevpn.io/gateway": "true"}


def _policy(kube: client.ApiClient, name: str, namespaces: list[str]) -> None:
    body = {
        "apiVersion": naming.API_VERSION,
        "kind": "VpnTunnelPolicy",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}
                ]
            },
            "nodeSelector": GATEWAY,
            "allowedDestinations": ["203.0.113.0/24", "2001:db8:200::/48"],
            "allowedInsideRanges": ["169.254.0.0/16", "2001:db8:100::/56"],
            "allowedTables": [254, 100],
        },
    }
    client.CustomObjectsApi(kube).create_cluster_custom_object(
        naming.GROUP, naming.VERSION, POLICY_PLURAL, body
    )


@pytest.fixture
def policy(kube: client.ApiClient, namespace: str) -> Iterator[str]:
    """A VpnTunnelPolicy (cluster-scoped, so deleted afterwards by hand); its name."""
    name = f"{namespace}-policy"
    yield name
    try:
        client.CustomObjectsApi(kube).delete_cluster_custom_object(
            naming.GROUP, naming.VERSION, POLICY_PLURAL, name
        )
    except ApiException as e:
        if e.status != 404:
            raise


def _spec(case: dict[str, Any], gateway: str, plain: str) -> dict[str, Any]:
    spec = apply_set(TABLE["base"], case.get("set") or {})
    text = json.dumps(spec).replace('"GATEWAY"', json.dumps(gateway))
    return dict(json.loads(text.replace('"PLAIN"', json.dumps(plain))))


def _refused_by_operator(
    kube: client.ApiClient, ns: str, name: str, reason: str
) -> dict[str, Any] | None:
    obj = get_tunnel(kube, ns, name)
    cond = condition(obj, "Scheduled")
    return obj if cond.get("status") == "False" and cond.get("reason") == reason else None


def _delivered(kube: client.ApiClient, routevpn_ns: str, ns: str, name: str) -> bool:
    try:
        client.CoreV1Api(kube).read_namespaced_secret(naming.secret_name(ns, name), routevpn_ns)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def test_every_hostile_tunnel_is_refused_or_contained(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: Any,
    policy: str,
) -> None:
    assert len(TABLE["cases"]) >= 25
    gateway, plain = f"{namespace}-gw", f"{namespace}-plain"
    make_node(gateway, GATEWAY, addresses=["192.0.2.1"])
    make_node(plain, {}, addresses=["192.0.2.2"])
    psk_secret(kube, namespace)
    _policy(kube, policy, [namespace])
    start_operator(without_policy="deny", extra_args=CLUSTER_FLAGS)
    # A tunnel the policy admits is placed: the refusals below are the policy's, not a
    # broken setup's.
    create_tunnel(kube, namespace, tunnel_body("legit", **_spec({}, gateway, plain)))
    contained = []
    for case in TABLE["cases"]:
        body = tunnel_body(case["name"], **_spec(case, gateway, plain))
        if "admission" in case:
            with pytest.raises(ApiException) as refused:
                create_tunnel(kube, namespace, body)
            assert refused.value.status == 422, case["name"]
            assert case["admission"] in str(refused.value.body), (case["name"], refused.value)
        else:
            create_tunnel(kube, namespace, body)
            contained.append(case)
    wait_until(
        lambda: is_placed(get_tunnel(kube, namespace, "legit")), timeout=60, what="legit placed"
    )
    for case in contained:
        obj = wait_until(
            partial(_refused_by_operator, kube, namespace, case["name"], case["reason"]),
            timeout=60,
            what=f"{case['name']}: Scheduled=False {case['reason']}",
        )
        message = condition(obj, "Scheduled")["message"]
        assert case["message"] in message, (case["name"], message)
        assert label(obj) is None and not (obj.get("status") or {}).get("node"), case["name"]
        assert not _delivered(kube, routevpn_ns, namespace, case["name"]), case["name"]
    assert _delivered(kube, routevpn_ns, namespace, "legit")


def test_another_namespace_takes_no_claim_and_learns_nothing(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: Any,
    policy: str,
) -> None:
    gateway = f"{namespace}-gw"
    make_node(gateway, GATEWAY, addresses=["192.0.2.1"])
    other, stranger = create_namespace(kube, "tenant-b"), create_namespace(kube, "no-policy")
    try:
        for ns in (namespace, other, stranger):
            psk_secret(kube, ns)
        _policy(kube, policy, [namespace, other])
        start_operator(without_policy="deny", extra_args=CLUSTER_FLAGS)
        base = _spec({}, gateway, "")
        owner = tunnel_body("owner", **{**base, "interface": {"name": "vti7", **base["interface"]}})
        create_tunnel(kube, namespace, owner)
        wait_until(
            lambda: is_placed(get_tunnel(kube, namespace, "owner")), timeout=60, what="owner"
        )
        _steal(kube, other, base, stranger)
    finally:
        for ns in (other, stranger):
            release_tunnels(kube, ns)
            delete_namespace(kube, ns)
    obj = get_tunnel(kube, namespace, "owner")
    assert is_placed(obj) and obj is not None and obj["status"]["interface"]["name"] == "vti7"


def _steal(kube: client.ApiClient, other: str, base: dict[str, Any], stranger: str) -> None:
    inside = {"addresses": ["169.254.20.1/30"]}
    attempts: dict[str, tuple[dict[str, Any], str]] = {
        # the same route (table 254, metric 0) from another peer
        "steal-route": ({"remote": {"address": "203.0.113.2"}, "interface": inside}, "RouteInUse"),
        # the owner's IKE identity pair (node address - peer address), another route
        "steal-identity": (
            {"interface": inside, "routes": [{"to": "203.0.113.0/26"}]},
            "IdentityInUse",
        ),
        "steal-ifname": (
            {
                "remote": {"address": "203.0.113.3"},
                "interface": {"name": "vti7", "addresses": ["169.254.30.1/30"]},
                "routes": [{"to": "203.0.113.64/26"}],
            },
            "InterfaceNameInUse",
        ),
    }
    for name, (change, _) in attempts.items():
        create_tunnel(kube, other, tunnel_body(name, **{**base, **change}))
    create_tunnel(kube, stranger, tunnel_body("anything", **base))
    for name, (_, reason) in attempts.items():
        obj = wait_until(
            partial(_refused_by_operator, kube, other, name, reason),
            timeout=60,
            what=f"{name}: {reason}",
        )
        message = condition(obj, "Scheduled")["message"]
        assert "a tunnel of another namespace" in message, message
        assert "owner" not in message and "test_another" not in message, message
    obj = wait_until(
        lambda: _refused_by_operator(kube, stranger, "anything", "PolicyViolation"),
        timeout=60,
        what="a namespace without a policy is refused",
    )
    assert "no VpnTunnelPolicy grants tunnels" in condition(obj, "Scheduled")["message"]
