"""Nothing lost: a running tunnel keeps its node, allocation and key material through a
broken Secret and a node blip; a node NotReady for good moves its tunnels elsewhere."""
# ruff: noqa: F811  (pytest fixtures imported from the harness are test parameters)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

from routevpn.api import naming
from support.kube import NodeFactory, wait_until
from support.operator import (  # fixtures are imported to be used
    DEFAULT_PSK,
    StartOperator,
    agent_finalizer,
    condition,
    create_tunnel,
    events_for,
    get_tunnel,
    is_placed,
    label,
    psk_secret,
    routevpn_ns,  # noqa: F401
    start_operator,  # noqa: F401
    tunnel_body,
    tunnel_when,
)


def _delivered(kube: client.ApiClient, rns: str, ns: str, name: str) -> Any:
    try:
        return client.CoreV1Api(kube).read_namespaced_secret(naming.secret_name(ns, name), rns)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _warned(kube: client.ApiClient, ns: str, name: str, reason: str) -> Callable[[], bool]:
    return lambda: any(t == "Warning" and r == reason for t, r, _ in events_for(kube, ns, name))


def _placed(kube: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = wait_until(
        tunnel_when(kube, ns, name, is_placed),
        timeout=30,
        what=f"{name} placed",
    )
    return got


def test_placed_tunnel_keeps_running_through_a_missing_then_invalid_secret(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: StartOperator,
) -> None:
    sel = {"zone": namespace}
    make_node(f"{namespace}-n", sel, addresses=["192.0.2.10"])
    psk_secret(kube, namespace)
    op = start_operator()
    create_tunnel(kube, namespace, tunnel_body("t", sel))
    placed = _placed(kube, namespace, "t")
    wait_until(lambda: _delivered(kube, routevpn_ns, namespace, "t"), what="delivered")
    agent_finalizer(kube, namespace, "t", True)  # an agent runs it
    core: Any = client.CoreV1Api(kube)  # its annotations want model classes, not dicts

    core.delete_namespaced_secret("psk", namespace)
    missing = wait_until(
        tunnel_when(
            kube,
            namespace,
            "t",
            lambda o: condition(o, "Scheduled").get("reason") == "SecretMissing",
        ),
        what="Scheduled=False SecretMissing",
    )
    meta = {"name": "psk", "labels": {"routevpn.io/usage": "ike"}}
    core.create_namespaced_secret(namespace, {"metadata": meta, "data": {"x": "eQ=="}})
    invalid = wait_until(
        tunnel_when(
            kube,
            namespace,
            "t",
            lambda o: condition(o, "Scheduled").get("reason") == "SecretInvalid",
        ),
        what="Scheduled=False SecretInvalid",
    )
    for got, reason in ((missing, "SecretMissing"), (invalid, "SecretInvalid")):
        sched = condition(got, "Scheduled")
        assert sched["status"] == "False"
        assert f"{namespace}/psk" in sched["message"]
        assert "keeps running" in sched["message"] and "last delivered" in sched["message"]
        # Label, node, allocation and the agent's finalizer: all as they were.
        assert label(got) == placed["status"]["node"] == got["status"]["node"]
        assert got["status"]["interface"] == placed["status"]["interface"]
        assert "routevpn.io/agent" in got["metadata"]["finalizers"]
        assert condition(got, "Ready")["reason"] == reason
        # The Event is posted after the status write it tells of: poll for it.
        wait_until(_warned(kube, namespace, "t", reason), what=f"a Warning {reason} Event")
    # The agent's material is the last good one, still labelled for its node.
    kept = _delivered(kube, routevpn_ns, namespace, "t")
    assert kept is not None and kept.data["psk"] == DEFAULT_PSK
    assert kept.metadata.labels["routevpn.io/node"] == placed["status"]["node"]

    # Fixed: scheduled again, new material delivered, same allocation.
    core.patch_namespaced_secret("psk", namespace, {"data": {"psk": "c2VjcmV0LTI="}})
    wait_until(
        lambda: condition(get_tunnel(kube, namespace, "t"), "Scheduled").get("status") == "True",
        what="Scheduled=True once the Secret is fixed",
    )
    wait_until(
        lambda: _delivered(kube, routevpn_ns, namespace, "t").data["psk"] == "c2VjcmV0LTI=",
        what="new material delivered",
    )
    after = get_tunnel(kube, namespace, "t")
    assert after is not None and after["status"]["interface"] == placed["status"]["interface"]
    assert op.metric("routevpn_operator_reconcile_errors_total") == 0


def test_placed_tunnel_keeps_its_key_against_an_earlier_created_ask(
    kube: client.ApiClient,
    namespace: str,
    make_node: NodeFactory,
    start_operator: StartOperator,
) -> None:
    sel = {"zone": namespace}
    make_node(f"{namespace}-n", sel)
    psk_secret(kube, namespace)
    start_operator()
    # Created first (and sorting first on a creationTimestamp tie), but waits for its
    # Secret: it asks for the key the next tunnel will be allocated.
    early = tunnel_body("a-early", sel, interface={"key": 4096})
    early["spec"]["auth"]["psk"]["secretRef"]["name"] = "psk-early"
    create_tunnel(kube, namespace, early)
    wait_until(
        lambda: (
            condition(get_tunnel(kube, namespace, "a-early"), "Scheduled").get("reason")
            == "SecretMissing"
        ),
        what="a-early waits for its Secret",
    )
    create_tunnel(kube, namespace, tunnel_body("b-late", sel))
    late = _placed(kube, namespace, "b-late")
    assert late["status"]["interface"]["key"] == 4096
    psk_secret(kube, namespace, "psk-early")
    got = wait_until(
        tunnel_when(
            kube,
            namespace,
            "a-early",
            lambda o: condition(o, "Scheduled").get("reason") == "KeyInUse",
        ),
        what="a-early told the key is in use",
    )
    assert f"{namespace}/b-late" in condition(got, "Scheduled")["message"]
    still = get_tunnel(kube, namespace, "b-late")
    assert still is not None and still["status"]["interface"] == late["status"]["interface"]
    assert label(still) == late["status"]["node"]


def _two_nodes(make_node: NodeFactory, namespace: str) -> dict[str, str]:
    sel = {"zone": namespace}
    make_node(f"{namespace}-a", sel, addresses=["192.0.2.10"])
    make_node(f"{namespace}-b", sel, addresses=["192.0.2.11"])
    return sel


def test_node_notready_longer_than_grace_moves_the_tunnel(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: StartOperator,
) -> None:
    sel = _two_nodes(make_node, namespace)
    psk_secret(kube, namespace)
    start_operator(not_ready_grace=2, orphan_wait=1)
    create_tunnel(kube, namespace, tunnel_body("t", sel))
    first = _placed(kube, namespace, "t")["status"]["node"]
    agent_finalizer(kube, namespace, "t", True)  # its agent will never answer again
    other = f"{namespace}-b" if first.endswith("-a") else f"{namespace}-a"

    make_node.ready(first, False)
    moved = wait_until(
        tunnel_when(kube, namespace, "t", lambda o: is_placed(o) and label(o) == other),
        timeout=30,
        what="moved to the other node after the grace",
    )
    assert condition(moved, "Scheduled")["status"] == "True"
    assert moved["status"]["localAddress"] in {"192.0.2.10", "192.0.2.11"}
    wait_until(
        lambda: (
            (s := _delivered(kube, routevpn_ns, namespace, "t"))
            and s.metadata.labels["routevpn.io/node"] == other
        ),
        what="the key material follows to the new node",
    )

    # Events are posted after the writes they tell of: poll for them too.
    def told() -> bool:
        evs = events_for(kube, namespace, "t")
        gone = any(r == "NodeGone" and t == "Warning" for t, r, _ in evs)
        return gone and any(r == "Moved" for _, r, _ in evs)

    wait_until(told, what="Warning NodeGone and Moved Events")


def test_node_notready_shorter_than_grace_keeps_the_tunnel(
    kube: client.ApiClient,
    namespace: str,
    make_node: NodeFactory,
    start_operator: StartOperator,
) -> None:
    sel = _two_nodes(make_node, namespace)
    psk_secret(kube, namespace)
    # A grace far longer than this test: a blip must never move the tunnel.
    op = start_operator(not_ready_grace=600)
    create_tunnel(kube, namespace, tunnel_body("t", sel))
    placed = _placed(kube, namespace, "t")
    first = placed["status"]["node"]
    agent_finalizer(kube, namespace, "t", True)
    seen = op.metric("routevpn_operator_reconcile_total")

    make_node.ready(first, False)
    # The operator has looked at the tunnel since the node went NotReady...
    wait_until(
        lambda: op.metric("routevpn_operator_reconcile_total") > seen,
        what="the operator reacted to the NotReady node",
    )
    during = get_tunnel(kube, namespace, "t")
    # ...and left it where it is.
    assert during is not None and is_placed(during) and label(during) == first
    assert during["status"]["interface"] == placed["status"]["interface"]
    assert condition(during, "Scheduled")["status"] == "True"

    seen = op.metric("routevpn_operator_reconcile_total")
    make_node.ready(first, True)
    wait_until(
        lambda: op.metric("routevpn_operator_reconcile_total") > seen,
        what="the operator reacted to the node being Ready again",
    )
    after = get_tunnel(kube, namespace, "t")
    assert after is not None and label(after) == first == after["status"]["node"]
    assert after["metadata"]["resourceVersion"] == during["metadata"]["resourceVersion"]
    assert not any(r == "Moved" for _, r, _ in events_for(kube, namespace, "t"))
