"""The active operator replica killed (SIGKILL) in the middle of allocating 200 tunnels
(issue 17): the standby takes over within its lease, and over all 200 nothing is handed
out twice on a node and every tunnel is allocated exactly once.

200 tunnels in four namespaces, the same names in each (t0..t49: names alone say nothing
about who is who), VTI and XFRM mixed (one number space per node), each with an inside
address of its own, on two nodes one selector matches. A watch records every allocation
the API server ever showed (support.allocwatch), so a tunnel the new leader re-allocated
differently, even for a moment, is caught.
"""
# ruff: noqa: F811  (pytest fixtures imported from the harness are test parameters)

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client

from support.allocwatch import AllocationWatch
from support.kube import NodeFactory, create_namespace, delete_namespace, wait_until
from support.operator import (  # fixtures are imported to be used
    Operator,
    StartOperator,
    create_tunnel,
    psk_secret,
    read_lease,
    release_tunnels,
    routevpn_ns,  # noqa: F401
    start_operator,  # noqa: F401
    tunnel_body,
)

TUNNELS, NAMESPACES = 200, 4
#: Killed once this many are allocated: some, far from all.
KILL_AT = 20
#: The operator's default --lease-duration, and a standby's retry period plus round trips.
LEASE_DURATION, MARGIN = 15.0, 10.0
RUN = "routevpn.io/test-run"


@pytest.fixture
def tenants(kube: client.ApiClient, namespace: str) -> Iterator[list[str]]:
    """`namespace` and three more, each with the PSK Secret; emptied and deleted after."""
    extra = [create_namespace(kube, f"{namespace}-{i}") for i in range(1, NAMESPACES)]
    try:
        for ns in (namespace, *extra):
            psk_secret(kube, ns)
        yield [namespace, *extra]
    finally:
        for ns in extra:
            release_tunnels(kube, ns)
            delete_namespace(kube, ns)


def _body(i: int, ns: str, sel: dict[str, str], run: str) -> dict[str, Any]:
    """Tunnel number `i`: t<i mod 50>, XFRM every fourth, inside address 169.254.x.y/30."""
    iface: dict[str, Any] = {"addresses": [f"169.254.{i // 60}.{(i % 60) * 4 + 1}/30"]}
    if i % 4 == 3:
        iface["type"] = "xfrm"
    body = tunnel_body(f"t{i // NAMESPACES}", sel, interface=iface)
    body["metadata"]["labels"] = {RUN: run}
    return body


def _first_write(op: Operator, before: float, timeout: float) -> float:
    """Monotonic time of `op`'s first API write after `before` writes (polled)."""
    wait_until(
        lambda: op.metric("routevpn_operator_api_writes_total") > before,
        timeout=timeout,
        interval=0.05,
        what="the standby's first write",
    )
    return time.monotonic()


def test_sigkill_of_the_leader_mid_allocation_of_200(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    tenants: list[str],
    start_operator: StartOperator,
) -> None:
    sel = {"zone": namespace}
    nodes = [f"{namespace}-a", f"{namespace}-b"]
    for node in nodes:
        make_node(node, sel)
    leader, standby = start_operator(), start_operator()
    assert leader.active() and not standby.active()
    standby_writes = standby.metric("routevpn_operator_api_writes_total")
    bodies = [(tenants[i % NAMESPACES], _body(i, tenants[i % NAMESPACES], sel, namespace))
              for i in range(TUNNELS)]  # fmt: skip
    with AllocationWatch(kube, f"{RUN}={namespace}") as seen, ThreadPoolExecutor(8) as pool:
        created = pool.map(lambda nb: create_tunnel(kube, nb[0], nb[1]), bodies)
        wait_until(lambda: seen.count() >= KILL_AT, timeout=120, interval=0.02,
                   what=f"{KILL_AT} tunnels allocated by the leader")  # fmt: skip
        leader.proc.kill()  # SIGKILL: no goodbye, the Lease is left to run out
        t_kill = time.monotonic()
        at_kill = seen.count()
        leader.proc.wait(timeout=10)
        list(created)  # every create went through (raises what one raised)
        try:
            wait_until(standby.active, timeout=LEASE_DURATION + MARGIN, what="standby leads")
            t_write = _first_write(standby, standby_writes, timeout=MARGIN + 30)
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- standby log:\n{standby.log_tail()}") from None
        print(f"kill -> standby's first write: {t_write - t_kill:.1f} s "
              f"({at_kill} of {TUNNELS} allocated at the kill)")  # fmt: skip
        wait_until(lambda: seen.count() == TUNNELS, timeout=300, interval=0.5,
                   what=f"all {TUNNELS} allocated")  # fmt: skip
        latest = seen.latest()
    _assert_once_and_unique(seen, latest, nodes, t_kill)
    lease = read_lease(kube, routevpn_ns)
    assert standby.holds(lease)
    assert lease is not None and lease.spec is not None and lease.spec.lease_transitions == 1
    assert 0 < at_kill < TUNNELS, f"killed at {at_kill} allocated: not in the middle"


def _assert_once_and_unique(
    seen: AllocationWatch, latest: dict[str, Any], nodes: list[str], t_kill: float
) -> None:
    """Every tunnel allocated exactly once (one value ever), on our nodes; nothing handed
    out twice on a node; the standby allocated some (after the kill), the leader some."""
    assert len(latest) == TUNNELS
    twice = {ref: [a for _, a in h] for ref, h in seen.history.items() if len(h) != 1}
    assert not twice, f"allocated more than once: {twice}"
    assert {a.node for a in latest.values()} <= set(nodes)
    assert not seen.duplicates(), f"handed out twice on a node: {seen.duplicates()}"
    kinds = {a.kind for a in latest.values()}
    assert kinds == {"vti", "xfrm"}, kinds
    after = sum(1 for h in seen.history.values() if h[0][0] > t_kill)
    assert 0 < after < TUNNELS, f"{after} allocated after the kill"
