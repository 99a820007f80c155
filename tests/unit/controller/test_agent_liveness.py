"""Agent liveness: Leases timed by the operator's own clock, and the decision that uses it.

The clock is injected (monotonic seconds): a test says what time it is, nothing sleeps.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from routevpn.api import naming
from routevpn.controller import bundle
from routevpn.controller.agents import AgentLeaseFollower, lease_selector
from routevpn.controller.decide import AGENT_GONE, NODE_GONE, OperatorSettings, World, decide
from routevpn.controller.liveness import AgentLeases, AgentView
from routevpn.controller.model import NodeRecord, TunnelRecord, tunnel_from_body
from routevpn.controller.policy import PolicyView
from routevpn.controller.reconciler import OperatorReconciler
from routevpn.controller.store import Store
from routevpn.kube.watch import WatchItem

RNS = "routevpn"
ORPHAN_WAIT = 10.0
NOW = datetime(2026, 1, 1, tzinfo=UTC)
PSK = {"s": bundle.Found("Opaque", {"psk": "c2VjcmV0"}, opted_in=True)}
IFACE = {"name": "vti4096", "type": "vti", "key": 4096}


def deleting_tunnel(
    node: str, deleting: bool = True, status: dict[str, Any] | None = None
) -> TunnelRecord:
    """Tunnel ns/t labelled for `node`, with both finalizers (its agent configured it)."""
    meta: dict[str, Any] = {
        "namespace": "ns",
        "name": "t",
        "resourceVersion": "7",
        "finalizers": [naming.OPERATOR_FINALIZER, naming.AGENT_FINALIZER],
        "labels": {naming.NODE_LABEL: node},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    spec = {
        "nodeSelector": {"gw": "true"},
        "remote": {"address": "198.51.100.1"},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "s"}}},
    }
    st = status if status is not None else {"node": node, "interface": IFACE}
    return tunnel_from_body({"metadata": meta, "spec": spec, "status": st})


def ready_world(agents: AgentView, nodes: tuple[str, ...] = ("a",)) -> World:
    """Every node Ready and eligible; agents as `agents` says."""
    recs = {n: NodeRecord(n, {"gw": "true"}, True, "2026-01-01T00:00:00Z", ()) for n in nodes}
    return World(
        nodes=recs,
        holders_on=lambda _: [],
        user_secrets=PSK,
        delivered=None,
        now=NOW,
        waiting_for=None,
        settings=OperatorSettings(RNS, orphan_wait_seconds=ORPHAN_WAIT),
        policy=PolicyView(without_policy="allow"),
        agents=agents,
    )


def lease(node: str, renew: str = "2026-01-01T00:00:00.000000Z", duration: int = 40,
          name: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": name or naming.agent_lease_name(node), "namespace": RNS},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": renew},
    }


# --- the view ---------------------------------------------------------------------------


def test_nothing_is_known_before_the_first_listing() -> None:
    leases = AgentLeases()
    assert leases.view(1000.0).not_live_for("a", waited=1000.0) is None


def test_a_lease_is_live_for_its_duration_after_the_operator_saw_it_renewed() -> None:
    leases = AgentLeases()
    leases.seen("list", [lease("a")], now=100.0)
    assert leases.view(139.0).not_live_for("a", waited=39.0) is None
    assert leases.view(139.0).runs_out_in("a") == 1.0
    # Ran out at 140: not live since then (but never longer than the wait so far).
    assert leases.view(150.0).not_live_for("a", waited=50.0) == 10.0
    assert leases.view(150.0).not_live_for("a", waited=4.0) == 4.0
    # No Lease at all: not live for the whole wait.
    assert leases.view(150.0).not_live_for("b", waited=7.0) == 7.0


def test_renewal_is_timed_when_seen_not_by_the_agents_clock() -> None:
    leases = AgentLeases()
    # The agent's clock is an hour behind: the operator does not care.
    leases.seen("list", [lease("a", renew="2025-12-31T23:00:00.000000Z")], now=100.0)
    assert leases.view(120.0).not_live_for("a", waited=20.0) is None
    # A relist with the same renewTime is no renewal: still runs out at 140.
    leases.seen("list", [lease("a", renew="2025-12-31T23:00:00.000000Z")], now=130.0)
    assert leases.view(141.0).not_live_for("a", waited=41.0) == 1.0
    # A new renewTime is: live until 185.
    leases.seen("MODIFIED", [lease("a", renew="2025-12-31T23:00:10.000000Z")], now=145.0)
    assert leases.view(184.0).not_live_for("a", waited=84.0) is None


def test_a_lease_under_another_nodes_name_is_not_believed() -> None:
    leases = AgentLeases()
    forged = lease("a", name=naming.agent_lease_name("b"))
    assert leases.seen("list", [forged], now=0.0) == set()
    assert leases.view(1.0).not_live_for("a", waited=1.0) == 1.0
    assert leases.view(1.0).not_live_for("b", waited=1.0) == 1.0


def test_seen_names_the_nodes_whose_lease_came_or_went() -> None:
    leases = AgentLeases()
    assert leases.seen("list", [lease("a")], now=0.0) == {"a"}
    assert leases.seen("MODIFIED", [lease("a", renew="x")], now=1.0) == set()
    assert leases.seen("ADDED", [lease("b")], now=2.0) == {"b"}
    assert leases.seen("DELETED", [lease("a")], now=3.0) == {"a"}


# --- the decision -----------------------------------------------------------------------


def _decide(w: World, waited: float, status_node: str = "a") -> Any:
    return decide(deleting_tunnel(status_node), {}, w, waited)


def test_a_live_agent_is_waited_for_however_long() -> None:
    leases = AgentLeases()
    leases.seen("list", [lease("a")], now=0.0)
    for t in (1.0, 30.0, 39.9):
        d = _decide(ready_world(leases.view(t)), waited=t)
        assert d.waiting and not d.remove_agent_finalizer and not d.remove_operator_finalizer
    # It looks again once the Lease would have run out and the orphan wait passed.
    d = _decide(ready_world(leases.view(30.0)), waited=30.0)
    assert d.requeue_after is not None and abs(d.requeue_after - (10.0 + ORPHAN_WAIT)) < 0.1


def test_no_lease_waits_the_orphan_wait_then_releases_with_agent_gone() -> None:
    view = AgentLeases()
    view.seen("list", [], now=0.0)
    d = _decide(ready_world(view.view(5.0)), waited=5.0)
    assert d.waiting and not d.remove_agent_finalizer
    assert d.requeue_after is not None and abs(d.requeue_after - 5.0) < 0.1
    d = _decide(ready_world(view.view(10.0)), waited=ORPHAN_WAIT)
    assert d.remove_agent_finalizer and d.remove_operator_finalizer and d.released
    ((etype, reason, message),) = d.events
    assert (etype, reason) == ("Warning", AGENT_GONE)
    for what in ("node a", "vti4096", "routevpn:ns/t", naming.conn_name("ns", "t"),
                 naming.agent_lease_name("a")):  # fmt: skip
        assert what in message, (what, message)


def test_a_stale_lease_counts_from_when_it_ran_out() -> None:
    leases = AgentLeases()
    leases.seen("list", [lease("a")], now=0.0)  # runs out at 40
    d = _decide(ready_world(leases.view(45.0)), waited=45.0)
    assert d.waiting and not d.remove_agent_finalizer  # not live for 5 s only
    d = _decide(ready_world(leases.view(50.0)), waited=50.0)
    assert d.remove_agent_finalizer and d.events[0][1] == AGENT_GONE


def test_a_lease_renewed_during_the_wait_keeps_it_waiting() -> None:
    leases = AgentLeases()
    leases.seen("list", [lease("a")], now=0.0)
    # Ran out at 40; renewed (seen) at 48, before the orphan wait was over.
    assert not _decide(ready_world(leases.view(45.0)), waited=45.0).remove_agent_finalizer
    leases.seen("MODIFIED", [lease("a", renew="2026-01-01T00:00:48.000000Z")], now=48.0)
    for t in (50.0, 80.0, 87.9):
        d = _decide(ready_world(leases.view(t)), waited=t)
        assert d.waiting and not d.remove_agent_finalizer
    # It stops again: runs out at 88, released 10 s later.
    assert not _decide(ready_world(leases.view(97.0)), waited=97.0).remove_agent_finalizer
    assert _decide(ready_world(leases.view(98.0)), waited=98.0).remove_agent_finalizer


def test_a_move_from_a_ready_node_without_a_live_agent_is_bounded_too() -> None:
    view = AgentLeases()
    view.seen("list", [], now=0.0)
    w = ready_world(view.view(ORPHAN_WAIT), nodes=("a", "b"))
    placed = {"node": "b", "interface": IFACE}
    d = decide(deleting_tunnel("a", deleting=False, status=placed), placed, w, ORPHAN_WAIT)
    assert d.remove_agent_finalizer and d.label == "b"
    ((_, reason, message),) = [e for e in d.events if e[0] == "Warning"]
    # status.interface is the new node's: the old one is named by its alias only.
    assert reason == AGENT_GONE and "vti4096" not in message and "routevpn:ns/t" in message


def test_a_gone_node_is_still_node_gone() -> None:
    view = AgentLeases()
    view.seen("list", [], now=0.0)
    w = replace(ready_world(view.view(ORPHAN_WAIT)), nodes={})
    d = _decide(w, waited=ORPHAN_WAIT)
    assert d.remove_agent_finalizer and d.events[0][1] == NODE_GONE


# --- the follower -----------------------------------------------------------------------


def test_the_follower_queues_waiting_tunnels_on_the_first_list_and_on_comings_and_goings() -> None:
    r = OperatorReconciler(Store(), None, None, OperatorSettings(RNS))  # type: ignore[arg-type]
    queued: list[Any] = []
    r.enqueue = lambda key, delay=0.0: queued.append(key)  # type: ignore[method-assign]
    r.store.put_tunnel(deleting_tunnel("a"))
    r.store.put_tunnel(tunnel_from_body({"metadata": {"namespace": "ns", "name": "idle"}}))
    clock = iter(float(t) for t in range(100))
    follower = AgentLeaseFollower(r, clock=lambda: next(clock))
    follower.on_item(WatchItem("leases", "list", ()))
    assert queued == [("ns", "t")]
    follower.on_item(WatchItem("leases", "ADDED", (lease("b"),)))
    assert queued == [("ns", "t")]  # node b's Lease: nobody waits on b
    follower.on_item(WatchItem("leases", "ADDED", (lease("a"),)))
    follower.on_item(WatchItem("leases", "MODIFIED", (lease("a", renew="x"),)))
    follower.on_item(WatchItem("leases", "DELETED", (lease("a", renew="x"),)))
    assert queued == [("ns", "t")] * 3  # came, went; a renewal queues nothing
    assert lease_selector() == "routevpn.io/lease=agent"


def test_without_a_listing_the_view_keeps_every_agent_live() -> None:
    d = _decide(ready_world(AgentView()), waited=1e6)
    assert d.waiting and not d.remove_agent_finalizer and d.requeue_after is None
