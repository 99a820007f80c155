"""Allocation under load and with two operator processes; every conflict kind."""
# ruff: noqa: F811  (pytest fixtures imported from the harness are test parameters)

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client

from support.kube import NodeFactory, wait_until
from support.operator import (  # fixtures are imported to be used
    Operator,
    condition,
    create_tunnel,
    get_tunnel,
    list_tunnels,
    psk_secret,
    routevpn_ns,  # noqa: F401
    start_operator,  # noqa: F401
    tunnel_body,
    tunnel_when,
)


def test_200_concurrent_creates_two_operators_unique(
    kube: client.ApiClient, namespace: str, make_node: NodeFactory, start_operator: Any
) -> None:
    sel = {"routevpn.io/gateway": "true", "zone": namespace}
    make_node(f"{namespace}-n", sel)
    psk_secret(kube, namespace)
    first, second = start_operator(), start_operator()
    # Counted from here: the first replica led alone until the second started, and rightly
    # wrote (for tunnels earlier tests left behind in the cluster, say).
    before = [_writes(op) for op in (first, second)]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: create_tunnel(kube, namespace, tunnel_body(f"t{i}", sel)), range(200)
            )
        )

    def placed() -> list[dict[str, Any]] | None:
        items = list_tunnels(kube, namespace)
        ok = [o for o in items if condition(o, "Scheduled").get("status") == "True"]
        return items if len(ok) == 200 else None

    items = wait_until(placed, timeout=120, what="200 tunnels placed")
    keys = [o["status"]["interface"]["key"] for o in items]
    names = [o["status"]["interface"]["name"] for o in items]
    assert len(set(keys)) == 200 and len(set(names)) == 200 and min(keys) >= 4096
    # Only one of the two processes acted (the Lease holder): the standby wrote nothing.
    ops = (first, second)
    after = [_writes(op) for op in ops]
    made = [
        {kind: n - was.get(kind, 0.0) for kind, n in now.items() if n != was.get(kind, 0.0)}
        for was, now in zip(before, after, strict=True)
    ]
    detail = "\n".join(
        f"--- operator {i}: writes {made[i]}\n{op.log_tail(30)}" for i, op in enumerate(ops)
    )
    assert first.active() and not second.active(), f"the lead changed hands\n{detail}"
    assert made[1] == {}, f"the standby wrote: {made}\n{detail}"
    assert sum(made[0].values()) >= 200, f"one status write a tunnel at least: {made}"


def _writes(op: Operator) -> dict[str, float]:
    return op.metric_by_label("routevpn_operator_api_writes_total", "kind")


def _scheduled_reason(want: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: condition(o, "Scheduled").get("reason") == want


def test_every_conflict_kind(
    kube: client.ApiClient, namespace: str, make_node: NodeFactory, start_operator: Any
) -> None:
    make_node(f"{namespace}-n", {"zone": namespace})
    psk_secret(kube, namespace)
    start_operator()
    sel = {"zone": namespace}
    cases = {
        "key": ({"key": 5000}, "KeyInUse"),
        "ifid": ({"type": "xfrm", "ifId": 6000}, "IfIdInUse"),
        "name": ({"name": "wan7"}, "InterfaceNameInUse"),
        "addr": ({"addresses": ["169.254.20.1/30"]}, "AddressInUse"),
    }
    for case, (iface, _) in cases.items():
        create_tunnel(kube, namespace, tunnel_body(f"{case}-a", sel, interface=iface))
        wait_until(
            tunnel_when(
                kube,
                namespace,
                f"{case}-a",
                lambda o: condition(o, "Scheduled").get("status") == "True",
            ),
            what=f"{case}-a placed",
        )
        create_tunnel(kube, namespace, tunnel_body(f"{case}-b", sel, interface=iface))
    for case, (_, reason) in cases.items():
        got = wait_until(
            tunnel_when(kube, namespace, f"{case}-b", _scheduled_reason(reason)),
            what=f"{case}-b {reason}",
        )
        assert f"{namespace}/{case}-a" in condition(got, "Scheduled")["message"]
        assert not (got["metadata"].get("labels") or {}).get("routevpn.io/node")
    # The winner goes: the loser proceeds.
    client.CustomObjectsApi(kube).delete_namespaced_custom_object(
        "routevpn.io", "v1alpha1", namespace, "vpntunnels", "key-a"
    )
    wait_until(
        lambda: (
            condition(get_tunnel(kube, namespace, "key-b"), "Scheduled").get("status") == "True"
        ),
        timeout=30,
        what="key-b placed after key-a is gone",
    )
