"""The operator against a real apiserver: placement, moves, secrets, Ready, deletion."""
# ruff: noqa: F811  (pytest fixtures imported from the harness are test parameters)

from __future__ import annotations

import base64
from typing import Any, cast

from kubernetes import client
from kubernetes.client import ApiException

from routevpn.api import naming
from support.kube import NodeFactory, wait_until
from support.operator import (  # fixtures are imported to be used
    agent_apply,
    agent_finalizer,
    agent_lease,
    condition,
    create_tunnel,
    events_for,
    get_tunnel,
    label,
    psk_secret,
    routevpn_ns,  # noqa: F401
    start_operator,  # noqa: F401
    tunnel_body,
    tunnel_when,
)

GW = {"routevpn.io/gateway": "true"}
OPT_IN = {naming.USAGE_LABEL: naming.USAGE_IKE}


def delivered(kube: client.ApiClient, rns: str, ns: str, name: str) -> Any:
    try:
        return client.CoreV1Api(kube).read_namespaced_secret(naming.secret_name(ns, name), rns)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def test_place_move_ready_and_delete(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: Any,
) -> None:
    a, b = f"{namespace}-a", f"{namespace}-b"
    make_node(a, {**GW, "zone": namespace}, addresses=["192.0.2.10"])
    make_node(b, {**GW, "zone": namespace}, addresses=["192.0.2.11"])
    # Both nodes' agents are live (an hour's Lease): the operator waits for them to tear
    # down, never releasing on its own (test_operator_liveness.py covers agents that aren't).
    for node in (a, b):
        agent_lease(kube, routevpn_ns, node)
    psk_secret(kube, namespace)
    op = start_operator()
    create_tunnel(
        kube,
        namespace,
        tunnel_body("t1", {**GW, "zone": namespace}, interface={"addresses": ["169.254.10.1/30"]}),
    )
    placed = wait_until(
        tunnel_when(kube, namespace, "t1", label),
        timeout=30,
        what="t1 placed",
    )
    first = label(placed)
    assert first is not None
    st = placed["status"]
    assert st["node"] == first and st["interface"]["key"] >= 4096
    assert st["localAddress"] in {"192.0.2.10", "192.0.2.11"}
    assert condition(placed, "Scheduled")["status"] == "True"
    assert condition(placed, "Ready")["reason"] == "WaitingForAgent"
    assert "routevpn.io/operator" in placed["metadata"]["finalizers"]
    # The operator writes the Secret before the label: once labelled, it is there at once
    # (a label without it is another writer's, or a deletion; the log tells which).
    try:
        sec = wait_until(lambda: delivered(kube, routevpn_ns, namespace, "t1"), what="secret")
    except TimeoutError as e:
        raise TimeoutError(f"{e}\n--- operator log:\n{op.log_tail(60)}") from None
    assert sec.data["psk"] == "c2VjcmV0LTE=" and sec.metadata.labels["routevpn.io/node"] == first
    assert "secret" not in str(events_for(kube, namespace, "t1")).lower().replace("secret ", "")

    # Act as the agent: finalizer, then every data-plane condition True.
    agent_finalizer(kube, namespace, "t1", True)
    gen = placed["metadata"]["generation"]
    conds = [
        {
            "type": t,
            "status": "True",
            "reason": "Established",
            "message": "ok",
            "observedGeneration": gen,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
        for t in ("Configured", "IkeEstablished", "ChildSaInstalled", "RoutesInstalled")
    ]
    agent_apply(kube, namespace, "t1", {"conditions": conds})
    ready = wait_until(
        lambda: condition(get_tunnel(kube, namespace, "t1"), "Ready").get("status") == "True",
        timeout=20,
        what="Ready=True after the agent's conditions",
    )
    assert ready
    both = get_tunnel(kube, namespace, "t1")
    assert both is not None
    types = {c["type"] for c in both["status"]["conditions"]}
    assert {"Scheduled", "Ready", "Configured", "RoutesInstalled"} <= types

    # Agent reports a failure: Ready follows with its reason; Scheduled stays.
    agent_apply(
        kube,
        namespace,
        "t1",
        {
            "conditions": [
                {**conds[0]},
                {**conds[1], "status": "False", "reason": "AuthenticationFailed"},
                conds[2],
                conds[3],
            ]
        },
    )
    wait_until(
        lambda: (
            condition(get_tunnel(kube, namespace, "t1"), "Ready").get("reason")
            == "AuthenticationFailed"
        ),
        timeout=20,
        what="Ready follows the agent",
    )
    assert condition(get_tunnel(kube, namespace, "t1"), "Scheduled")["status"] == "True"

    # Relabel the node away: status.node moves first, the label waits for the agent.
    other = b if first == a else a
    client.CoreV1Api(kube).patch_node(first, {"metadata": {"labels": {"zone": "elsewhere"}}})
    moving = wait_until(
        tunnel_when(kube, namespace, "t1", lambda o: o["status"].get("node") == other),
        timeout=20,
        what="moving",
    )
    assert label(moving) == first
    assert condition(moving, "Scheduled")["reason"] == "Scheduling"
    agent_finalizer(kube, namespace, "t1", False)  # the old agent tore down
    wait_until(
        lambda: label(get_tunnel(kube, namespace, "t1")) == other,
        timeout=20,
        what="label follows once the agent finalizer is gone",
    )
    wait_until(
        lambda: (
            (s := delivered(kube, routevpn_ns, namespace, "t1"))
            and s.metadata.labels["routevpn.io/node"] == other
        ),
        what="secret moved",
    )

    # Node deleted under a live agent finalizer: bounded wait, then a Warning.
    agent_finalizer(kube, namespace, "t1", True)
    make_node.delete(other)
    client.CoreV1Api(kube).patch_node(first, {"metadata": {"labels": {"zone": namespace}}})
    wait_until(
        lambda: label(get_tunnel(kube, namespace, "t1")) == first,
        timeout=30,
        what="re-placed after the node was deleted",
    )
    wait_until(
        lambda: any(
            r == "NodeGone" and t == "Warning" for t, r, _ in events_for(kube, namespace, "t1")
        ),
        what="a Warning Event says the gone node's state could not be cleaned",
    )

    # Rotation: the delivered Secret follows with a new hash.
    before = delivered(kube, routevpn_ns, namespace, "t1").metadata.annotations
    client.CoreV1Api(kube).patch_namespaced_secret(
        "psk", namespace, {"data": {"psk": "c2VjcmV0LTI="}}
    )
    wait_until(
        lambda: delivered(kube, routevpn_ns, namespace, "t1").data["psk"] == "c2VjcmV0LTI=",
        timeout=20,
        what="rotated",
    )
    after = delivered(kube, routevpn_ns, namespace, "t1").metadata.annotations
    assert before["routevpn.io/content-hash"] != after["routevpn.io/content-hash"]

    # Deletion with a live agent: waits for the agent, then releases everything.
    agent_finalizer(kube, namespace, "t1", True)
    client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        "routevpn.io", "v1alpha1", namespace, "vpntunnels", "t1"
    )
    wait_until(
        lambda: (
            (get_tunnel(kube, namespace, "t1") or {}).get("metadata", {}).get("deletionTimestamp")
        ),
        what="deleting",
    )
    assert get_tunnel(kube, namespace, "t1") is not None  # held by the agent's finalizer
    agent_finalizer(kube, namespace, "t1", False)
    wait_until(lambda: get_tunnel(kube, namespace, "t1") is None, timeout=20, what="deleted")
    wait_until(lambda: delivered(kube, routevpn_ns, namespace, "t1") is None, what="secret gone")
    assert op.metric("routevpn_operator_reconcile_errors_total") == 0


def test_missing_then_created_secret_and_unplaced_delete(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: Any,
) -> None:
    make_node(f"{namespace}-n", {**GW, "zone": namespace})
    start_operator()
    create_tunnel(kube, namespace, tunnel_body("t", {**GW, "zone": namespace}))
    got = wait_until(
        lambda: condition(get_tunnel(kube, namespace, "t"), "Scheduled"), what="Scheduled reported"
    )
    assert (got["status"], got["reason"]) == ("False", "SecretMissing")
    assert f"{namespace}/psk" in got["message"]
    assert label(get_tunnel(kube, namespace, "t")) is None
    cast(Any, client.CoreV1Api(kube)).create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "psk", "labels": {"routevpn.io/usage": "ike"}},
            "data": {"o": "eA=="},
        },
    )
    wait_until(
        lambda: (
            condition(get_tunnel(kube, namespace, "t"), "Scheduled").get("reason")
            == "SecretInvalid"
        ),
        what="SecretInvalid",
    )
    client.CoreV1Api(kube).patch_namespaced_secret(
        "psk", namespace, {"data": {"psk": base64.b64encode(b"k" * 32).decode()}}
    )
    wait_until(lambda: label(get_tunnel(kube, namespace, "t")), what="placed once valid")
    # Never configured by an agent: deletion is immediate.
    client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        "routevpn.io", "v1alpha1", namespace, "vpntunnels", "t"
    )
    wait_until(lambda: get_tunnel(kube, namespace, "t") is None, timeout=20, what="deleted")
