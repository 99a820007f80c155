"""The decision for one tunnel: status, label, finalizers, secrets and the move protocol."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from routevpn.api import naming
from routevpn.api.conditions import Reason, Status
from routevpn.controller import bundle
from routevpn.controller.decide import OperatorSettings, World, decide
from routevpn.controller.model import DeliveredRecord, NodeRecord, TunnelRecord, tunnel_from_body
from routevpn.controller.policy import PolicyView
from routevpn.controller.status import changed, desired_status

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PSK = {"s": bundle.Found("Opaque", {"psk": "c2VjcmV0"}, opted_in=True)}


def tunnel(
    label: str | None = None,
    status: dict[str, Any] | None = None,
    finalizers: tuple[str, ...] = (naming.OPERATOR_FINALIZER,),
    deleting: bool = False,
) -> TunnelRecord:
    meta: dict[str, Any] = {
        "namespace": "ns",
        "name": "t",
        "uid": "u",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "generation": 1,
        "resourceVersion": "7",
        "finalizers": list(finalizers),
        "labels": {naming.NODE_LABEL: label} if label else {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return tunnel_from_body(
        {
            "metadata": meta,
            "spec": {
                "nodeSelector": {"gw": "true"},
                "remote": {"address": "198.51.100.1"},
                "auth": {"type": "psk", "psk": {"secretRef": {"name": "s"}}},
            },
            "status": status or {},
        }
    )


#: No policies, and tunnels of namespaces without one admitted: placement alone.
OPEN = PolicyView(without_policy="allow")


def world(nodes: list[str], secrets: dict[str, bundle.UserSecret] | None = None) -> World:
    recs = {
        n: NodeRecord(n, {"gw": "true"}, True, "2026-01-01T00:00:00Z", ("192.0.2.1",))
        for n in nodes
    }
    return World(
        nodes=recs,
        holders_on=lambda _: [],
        user_secrets=PSK if secrets is None else secrets,
        delivered=None,
        now=NOW,
        waiting_for=None,
        settings=OperatorSettings("routevpn", orphan_wait_seconds=10, not_ready_grace_seconds=60),
        policy=OPEN,
    )


def test_first_placement_sets_status_label_secret_and_finalizer() -> None:
    d = decide(tunnel(finalizers=()), {}, world(["a"]), 0)
    assert d.add_operator_finalizer and d.label == "a" and d.label_changed
    assert d.status is not None and d.status["node"] == "a"
    assert d.status["interface"] == {"name": "vti4096", "type": "vti", "key": 4096}
    assert d.status["localAddress"] == "192.0.2.1"
    conds = {c["type"]: c for c in d.status["conditions"]}
    assert conds["Scheduled"]["status"] == "True"
    assert conds["Ready"]["reason"] == Reason.WAITING_FOR_AGENT
    assert d.secret is not None and d.secret["data"] == {"psk": "c2VjcmV0"}
    assert ("Normal", "Placed", "placed on node a") in d.events


def test_second_pass_writes_nothing() -> None:
    d1 = decide(tunnel(), {}, world(["a"]), 0)
    assert d1.status is not None
    d2 = decide(tunnel(label="a", status=d1.status), d1.status, world(["a"]), 0)
    assert not d2.status_changed and not d2.label_changed and not d2.events


def test_move_waits_for_agent_then_relabels() -> None:
    placed = decide(tunnel(), {}, world(["a"]), 0).status
    assert placed is not None
    rec = tunnel(
        label="a", status=placed, finalizers=(naming.OPERATOR_FINALIZER, naming.AGENT_FINALIZER)
    )
    w = world(["b"])  # a is deleted
    d = decide(rec, placed, w, 0)
    assert d.status is not None and d.status["node"] == "b" and not d.label_changed
    sched = d.status["conditions"][0]
    assert (sched["reason"], sched["message"]) == (
        Reason.SCHEDULING,
        "moving from node a to node b",
    )
    assert d.waiting and d.requeue_after is not None
    # After the bounded wait: the agent finalizer goes, with a Warning, and the label moves.
    d = decide(rec, placed, w, 11)
    assert d.remove_agent_finalizer and d.label == "b"
    assert any(e[0] == "Warning" and "node a is gone" in e[2] for e in d.events)
    # A live old node (relabelled away) tears down itself: its finalizer is never dropped.
    w2 = world(["b"])
    nodes = {**w2.nodes, "a": NodeRecord("a", {}, True, "2026-01-01T00:00:00Z", ())}
    d = decide(rec, placed, _with(w2, nodes), 1000)
    assert not d.remove_agent_finalizer and not d.label_changed


def _with(w: World, nodes: dict[str, NodeRecord]) -> World:
    return World(nodes, w.holders_on, w.user_secrets, w.delivered, w.now, None, w.settings, OPEN)


def test_missing_and_invalid_secret() -> None:
    d = decide(tunnel(), {}, world(["a"], secrets={"s": None}), 0)
    assert d.status is not None and d.label is None and d.secret is None
    sched = d.status["conditions"][0]
    assert sched["reason"] == Reason.SECRET_MISSING and "ns/s" in sched["message"]
    d = decide(
        tunnel(),
        {},
        world(["a"], secrets={"s": bundle.Found("Opaque", {"x": "eQ=="}, opted_in=True)}),
        0,
    )
    assert d.status is not None
    assert d.status["conditions"][0]["reason"] == Reason.SECRET_INVALID
    assert "c2VjcmV0" not in str(d.status) and all("c2VjcmV0" not in e[2] for e in d.events)


def test_deletion() -> None:
    never_placed = tunnel(deleting=True)
    d = decide(never_placed, {}, world(["a"]), 0)
    assert d.remove_operator_finalizer and d.released
    live = tunnel(
        label="a", deleting=True, finalizers=(naming.OPERATOR_FINALIZER, naming.AGENT_FINALIZER)
    )
    d = decide(live, {}, world(["a"]), 1000)
    assert not d.remove_operator_finalizer and d.waiting


def test_transition_time_kept_when_status_unchanged() -> None:
    from routevpn.controller.status import Scheduled

    t1 = datetime(2026, 12, 1, 8, 0, 0, tzinfo=UTC)
    t2 = t1 + timedelta(minutes=5)
    first = desired_status({}, 1, Scheduled(Status.TRUE, "Placed", "x"), "a", None, None, t1)
    again = desired_status(first, 1, Scheduled(Status.TRUE, "Placed", "y"), "a", None, None, t2)
    assert again["conditions"][0]["lastTransitionTime"] == "2026-12-01T08:00:00Z"
    sched = Scheduled(Status.FALSE, "NodeNotFound", "z")
    lost = desired_status(again, 1, sched, None, None, None, t2)
    assert lost["conditions"][0]["lastTransitionTime"] == "2026-12-01T08:05:00Z"
    assert changed(first, again) and not changed(again, again)


def _delivered(node: str) -> DeliveredRecord:
    return DeliveredRecord(naming.secret_name("ns", "t"), node, "sha256:old", ("ns", "t"))


def test_placed_tunnel_keeps_running_when_its_secret_goes_missing_or_invalid() -> None:
    placed = decide(tunnel(), {}, world(["a"]), 0).status
    assert placed is not None
    rec = tunnel(
        label="a", status=placed, finalizers=(naming.OPERATOR_FINALIZER, naming.AGENT_FINALIZER)
    )
    cases: list[tuple[dict[str, bundle.UserSecret], str]] = [
        ({"s": None}, Reason.SECRET_MISSING),
        ({"s": bundle.Found("Opaque", {"other": "eQ=="}, opted_in=True)}, Reason.SECRET_INVALID),
    ]
    for secrets, reason in cases:
        w = world(["a"], secrets=secrets)
        w = World(
            w.nodes, w.holders_on, w.user_secrets, _delivered("a"), w.now, None, w.settings, OPEN
        )
        d = decide(rec, placed, w, 0)
        # Label, allocation, node and the delivered Secret all stay.
        assert not d.label_changed and d.label == "a"
        assert d.status is not None and d.status["node"] == "a"
        assert d.status["interface"] == placed["interface"]
        assert d.status["localAddress"] == placed["localAddress"]
        assert d.secret is None and not d.delete_secret and not d.remove_agent_finalizer
        sched = d.status["conditions"][0]
        assert (sched["type"], sched["status"], sched["reason"]) == ("Scheduled", "False", reason)
        assert "ns/s" in sched["message"]
        assert "keeps running" in sched["message"] and "last delivered" in sched["message"]
        assert [(e[0], e[1]) for e in d.events] == [("Warning", reason)]
        # Looked at again with nothing new: nothing more is written.
        again = decide(rec, d.status, w, 0)
        assert not again.status_changed and not again.events and not again.label_changed


def test_never_placed_tunnel_waits_unplaced_for_its_secret() -> None:
    d = decide(tunnel(), {}, world(["a"], secrets={"s": None}), 0)
    assert d.status is not None and "node" not in d.status and "interface" not in d.status
    assert d.label is None and not d.label_changed
    assert "keeps running" not in d.status["conditions"][0]["message"]


def test_fixed_secret_is_delivered_and_scheduled_again() -> None:
    placed = decide(tunnel(), {}, world(["a"]), 0).status
    assert placed is not None
    rec = tunnel(label="a", status=placed)
    w = world(["a"], secrets={"s": None})
    broken = decide(rec, placed, w, 0).status
    assert broken is not None
    w = world(["a"])
    w = World(w.nodes, w.holders_on, w.user_secrets, _delivered("a"), w.now, None, w.settings, OPEN)
    d = decide(tunnel(label="a", status=broken), broken, w, 0)
    assert d.status is not None and d.status["conditions"][0]["status"] == "True"
    assert d.secret is not None and d.status["interface"] == placed["interface"]
