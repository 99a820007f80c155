"""Two real operator processes on one Lease: one acts, the other stands by and takes over
when the leader dies (SIGKILL), stalls (SIGSTOP) or stops (SIGTERM, at once)."""
# ruff: noqa: F811  (pytest fixtures imported from the harness are test parameters)

from __future__ import annotations

import os
import signal
import time
from typing import Any

from kubernetes import client

from support.kube import NodeFactory, wait_until
from support.operator import (  # fixtures are imported to be used
    Operator,
    StartOperator,
    create_tunnel,
    is_placed,
    psk_secret,
    read_lease,
    routevpn_ns,  # noqa: F401
    start_operator,  # noqa: F401
    tunnel_body,
    tunnel_when,
)

#: The operator's default --lease-duration: how long a standby waits for a silent leader.
LEASE_DURATION = 15.0
#: A standby's retry period (2 s) and the API round trips on top of a lease duration.
MARGIN = 10.0


def _two(
    kube: client.ApiClient, namespace: str, make_node: NodeFactory, start: StartOperator
) -> tuple[dict[str, str], Operator, Operator]:
    sel = {"zone": namespace}
    make_node(f"{namespace}-n", sel)
    psk_secret(kube, namespace)
    first, second = start(), start()
    assert first.active() and not second.active()
    create_tunnel(kube, namespace, tunnel_body("before", sel))
    wait_until(tunnel_when(kube, namespace, "before", is_placed), what="placed by the leader")
    return sel, first, second


def _takes_over(
    kube: client.ApiClient, rns: str, standby: Operator, timeout: float, what: str, t0: float
) -> float:
    """Seconds from `t0` until `standby` leads and the Lease names it, after one take-over."""
    try:
        wait_until(standby.active, timeout=timeout, what=what)
    except TimeoutError as e:
        raise TimeoutError(f"{e}\n--- standby log:\n{standby.log_tail()}") from None
    took = time.monotonic() - t0
    lease = read_lease(kube, rns)
    assert standby.holds(lease)
    assert lease is not None and lease.spec is not None and lease.spec.lease_transitions == 1
    print(f"{what}: {took:.1f} s")  # shown with -s: the figure the README quotes
    return took


def _places(kube: client.ApiClient, namespace: str, sel: dict[str, str], op: Operator) -> None:
    before = op.metric("routevpn_operator_api_writes_total")
    create_tunnel(kube, namespace, tunnel_body("after", sel))
    wait_until(
        tunnel_when(kube, namespace, "after", is_placed),
        timeout=30,
        what="a tunnel created after the take-over placed",
    )
    assert op.metric("routevpn_operator_api_writes_total") > before


def test_sigkilled_leader_the_standby_takes_over_and_places(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: StartOperator,
) -> None:
    sel, first, second = _two(kube, namespace, make_node, start_operator)
    t0 = time.monotonic()
    first.proc.kill()  # SIGKILL: no goodbye, the Lease is left to run out
    first.proc.wait(timeout=10)
    _takes_over(kube, routevpn_ns, second, LEASE_DURATION + MARGIN, "take-over after SIGKILL", t0)
    _places(kube, namespace, sel, second)


def test_stalled_leader_stops_acting_and_exits_once_taken_over(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: StartOperator,
) -> None:
    sel, first, second = _two(kube, namespace, make_node, start_operator)
    t0 = time.monotonic()
    os.kill(first.pid, signal.SIGSTOP)  # a stalled process: alive, but renews nothing
    try:
        what = "take-over from a stalled leader"
        _takes_over(kube, routevpn_ns, second, LEASE_DURATION + MARGIN, what, t0)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    # Woken, the old leader finds its renew deadline long past (it acts no more) and its
    # next renewal refused (409): its view is of a term that ended, so it exits.
    wait_until(
        lambda: first.proc.poll() is not None,
        timeout=30,
        what="the old leader exits once taken over",
    )
    assert first.proc.returncode == 1, first.log_tail()
    assert "was taken over" in first.log.read_text()
    _places(kube, namespace, sel, second)


def test_graceful_stop_hands_over_at_once(
    kube: client.ApiClient,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: StartOperator,
) -> None:
    sel, first, second = _two(kube, namespace, make_node, start_operator)
    t0 = time.monotonic()
    first.stop()  # SIGTERM: the leader releases the Lease on its way out
    assert "released by" in first.log.read_text(), first.log_tail()
    # Well inside a lease duration: a Lease left to run out would not be taken this soon.
    _takes_over(kube, routevpn_ns, second, LEASE_DURATION / 2, "take-over after SIGTERM", t0)
    _places(kube, namespace, sel, second)


def test_one_operator_alone_leads_and_holds_the_lease(
    kube: client.ApiClient, routevpn_ns: str, start_operator: StartOperator
) -> None:
    op = start_operator()
    lease: Any = read_lease(kube, routevpn_ns)
    assert op.holds(lease)
    assert lease.spec.lease_duration_seconds == LEASE_DURATION
    assert lease.spec.lease_transitions == 0
    renewed = lease.spec.renew_time
    wait_until(
        lambda: read_lease(kube, routevpn_ns).spec.renew_time > renewed,  # type: ignore[union-attr]
        what="the leader renews its Lease",
    )
