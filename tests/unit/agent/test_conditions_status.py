"""Conditions from observations, and the status diff that keeps unchanged passes write-free."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from routevpn.agent import conditions as c
from routevpn.agent import status as s
from routevpn.agent.desired import DeliveredMaterial, build_plan
from routevpn.agent.traffic import Traffic
from routevpn.api.conditions import ConditionType, Observed, Reason, Status, summarize_ready
from routevpn.api.timefmt import k8s_time
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts
from routevpn.dataplane.plan import TunnelPlan

ROOT = Path(__file__).resolve().parents[3]
CONN = "routevpn.prod.site-b"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def seed_plan() -> TunnelPlan:
    docs = yaml.safe_load_all((ROOT / "examples/seed-ipv6-vti.yaml").read_text())
    obj = next(d for d in docs if d and d.get("kind") == "VpnTunnel")
    obj["metadata"]["namespace"] = "prod"
    obj["status"] = {"interface": {"name": "vti1", "type": "vti", "key": 4096}}
    plan = build_plan(VpnTunnel.from_wire(obj), DeliveredMaterial({"psk": "x" * 32}))
    assert isinstance(plan, TunnelPlan)
    return plan


def child(state: str = "INSTALLED", spi: str = "c0000001", bytes_in: int = 0) -> ChildSaFacts:
    return ChildSaFacts(
        name=CONN,
        uniqueid="2",
        state=state,
        spi_in=spi,
        spi_out="c0000002",
        encr_alg="AES_GCM_16",
        encr_keysize="256",
        bytes_in=bytes_in,
        install_time=10,
        rekey_time=3000,
        life_time=3500,
    )


def ike(state: str = "ESTABLISHED", children: tuple[ChildSaFacts, ...] = ()) -> IkeSaFacts:
    return IkeSaFacts(
        conn=CONN,
        uniqueid="1",
        state=state,
        version="2",
        remote_host="2001:db8:0:2::1",
        encr_alg="AES_GCM_16",
        encr_keysize="256",
        prf_alg="PRF_HMAC_SHA2_384",
        dh_group="ECP_384",
        established=20,
        rekey_time=13000,
        children=children,
    )


def by_type(conds: list[c.Cond]) -> dict[ConditionType, c.Cond]:
    return {x.type: x for x in conds}


def test_all_up_route_mode_makes_ready_true() -> None:
    sa = ike(children=(child(),))
    obs = c.Observation(
        mode="route",
        plan=seed_plan(),
        ike=sa,
        traffic=Traffic(Status.TRUE, Reason.FLOWING, "ok"),
    )
    conds = c.compute(obs, CONN)
    assert [x.type for x in conds] == [
        ConditionType.CONFIGURED,
        ConditionType.IKE_ESTABLISHED,
        ConditionType.CHILD_SA_INSTALLED,
        ConditionType.ROUTES_INSTALLED,
        ConditionType.TRAFFIC_FLOWING,
    ]
    assert all(x.status is Status.TRUE for x in conds)
    assert "vti1" in by_type(conds)[ConditionType.ROUTES_INSTALLED].message
    observed = [Observed(x.type, x.status, x.reason, x.message, 3) for x in conds]
    observed.append(Observed("Scheduled", "True", "Placed", "", 3))
    assert summarize_ready(observed, 3).status is Status.TRUE


def _ready_with(traffic: Traffic | None, mode: str = "route") -> str:
    """Ready's message for an up tunnel whose TrafficFlowing is `traffic`."""
    sa = ike(children=(child(),))
    obs = c.Observation(mode=mode, plan=seed_plan(), ike=sa, traffic=traffic)  # type: ignore[arg-type]
    observed = [Observed(x.type, x.status, x.reason, x.message, 3) for x in c.compute(obs, CONN)]
    observed.append(Observed("Scheduled", "True", "Placed", "", 3))
    summary = summarize_ready(observed, 3)
    assert summary.status is Status.TRUE
    return summary.message


def test_ready_never_claims_traffic_the_sa_did_not_count() -> None:
    """An SA that has counted 0 bytes in: Ready says the tunnel is up, not that it
    carries traffic (it said "the tunnel is up and carrying traffic")."""
    fresh = Traffic(Status.UNKNOWN, Reason.PENDING, "no packet received yet")
    msg = _ready_with(fresh)
    assert msg == (
        "IKE SA established, CHILD SA installed and its routes are installed; "
        "no traffic received through it yet"
    )
    assert "carrying" not in msg and "arrive" not in msg
    assert "yet" in _ready_with(None)
    quiet = Traffic(Status.FALSE, Reason.NO_TRAFFIC_RECEIVED, "nothing for 120s")
    assert _ready_with(quiet).endswith("no traffic received through it lately (see TrafficFlowing)")
    flowing = Traffic(Status.TRUE, Reason.FLOWING, "40 packets in 60s")
    assert _ready_with(flowing).endswith("; packets arrive through the tunnel")
    policy = _ready_with(flowing, mode="policy")
    assert "the kernel's IPsec policies select its traffic" in policy


def test_blocked_plan_reports_pending_and_nothing_further() -> None:
    obs = c.Observation(
        mode="route",
        problem=c.Problem(Reason.PENDING, "waiting for the operator"),
        problem_status=Status.UNKNOWN,
    )
    conds = by_type(c.compute(obs, CONN))
    assert conds[ConditionType.CONFIGURED].status is Status.UNKNOWN
    assert conds[ConditionType.CONFIGURED].reason == Reason.PENDING
    for t in (ConditionType.IKE_ESTABLISHED, ConditionType.CHILD_SA_INSTALLED):
        assert (conds[t].status, conds[t].reason) == (Status.UNKNOWN, Reason.PENDING)


def test_route_loop_finding_fails_configured_and_routes() -> None:
    obs = c.Observation(mode="route", problem=c.Problem("RouteLoop", "route ::/0 covers the peer"))
    conds = by_type(c.compute(obs, CONN))
    assert conds[ConditionType.CONFIGURED].reason == "RouteLoop"
    assert conds[ConditionType.ROUTES_INSTALLED].status is Status.FALSE


def test_charon_failure_names_ike_reason() -> None:
    obs = c.Observation(
        mode="policy",
        plan=seed_plan(),
        failure=c.Problem("AuthenticationFailed", "check the key"),
    )
    conds = by_type(c.compute(obs, CONN))
    assert conds[ConditionType.IKE_ESTABLISHED].status is Status.FALSE
    assert conds[ConditionType.IKE_ESTABLISHED].reason == "AuthenticationFailed"
    routes = conds[ConditionType.ROUTES_INSTALLED]
    assert (routes.status, routes.reason) == (Status.TRUE, Reason.NOT_APPLICABLE)


def test_child_failure_after_ike_is_up() -> None:
    obs = c.Observation(
        mode="route",
        plan=seed_plan(),
        ike=ike(),
        failure=c.Problem("KernelSaInstallFailed", "the kernel refused"),
    )
    conds = by_type(c.compute(obs, CONN))
    assert conds[ConditionType.IKE_ESTABLISHED].status is Status.TRUE
    assert conds[ConditionType.CHILD_SA_INSTALLED].reason == "KernelSaInstallFailed"


def test_best_ike_prefers_established_then_newest() -> None:
    a = IkeSaFacts(conn=CONN, uniqueid="5", state="CONNECTING")
    b = IkeSaFacts(conn=CONN, uniqueid="3", state="ESTABLISHED")
    other = IkeSaFacts(conn="other", uniqueid="9", state="ESTABLISHED")
    assert c.best_ike([a, b, other], CONN) is b
    assert c.best_ike([other], CONN) is None


def test_merge_keeps_transition_time_while_status_is_unchanged() -> None:
    conds = [c.Cond(ConditionType.CONFIGURED, Status.TRUE, "Applied", "ok")]
    first = s.merge_conditions(conds, [], 1, NOW)
    later = NOW + timedelta(minutes=5)
    again = s.merge_conditions(conds, first, 2, later)
    assert again[0]["lastTransitionTime"] == k8s_time(NOW)
    assert again[0]["observedGeneration"] == 2
    flipped = [c.Cond(ConditionType.CONFIGURED, Status.FALSE, "KernelError", "x")]
    assert s.merge_conditions(flipped, first, 2, later)[0]["lastTransitionTime"] == k8s_time(later)


def test_unchanged_pass_needs_no_write_even_with_clock_jitter() -> None:
    sa = ike(children=(child(bytes_in=10),))
    conds = s.merge_conditions(
        c.compute(c.Observation(mode="route", plan=seed_plan(), ike=sa), CONN), [], 1, NOW
    )
    want = s.desired_status(
        conds, s.ike_status(sa, None, NOW), s.child_status(sa.children[0], None, NOW)
    )
    server = {"observedGeneration": 1, "node": "n", **want}  # operator fields beside ours
    assert not s.needs_write(want, server)
    # one second later charon's relative times shift by one: timestamps stay as written
    later = NOW + timedelta(seconds=1)
    conds2 = s.merge_conditions(
        c.compute(c.Observation(mode="route", plan=seed_plan(), ike=sa), CONN),
        server["conditions"],
        1,
        later,
    )
    want2 = s.desired_status(
        conds2,
        s.ike_status(sa, server["ike"], later),
        s.child_status(sa.children[0], server["child"], later),
    )
    assert not s.needs_write(want2, server)
    assert s.transitions(conds2, server) == []


def test_counters_reach_status_only_at_the_period() -> None:
    first = s.child_status(child(bytes_in=10), None, NOW, counters_period=60)
    assert first["bytesIn"] == 10
    soon = s.child_status(child(bytes_in=99), first, NOW + timedelta(seconds=30), 60)
    assert soon["bytesIn"] == 10 and soon["countersAt"] == first["countersAt"]
    due = s.child_status(child(bytes_in=99), first, NOW + timedelta(seconds=61), 60)
    assert due["bytesIn"] == 99
    quiet = s.child_status(child(bytes_in=10), first, NOW + timedelta(seconds=600), 60)
    counters = ("bytesIn", "bytesOut", "packetsIn", "packetsOut", "countersAt")
    # nothing moved: the counters (and their time) stay as written, so no write
    assert {k: quiet[k] for k in counters} == {k: first[k] for k in counters}
    rekeyed = s.child_status(child(spi="cafe0001", bytes_in=3), first, NOW, 60)
    assert rekeyed["bytesIn"] == 3


def test_transitions_and_event_types() -> None:
    new = [
        {"type": "Configured", "status": "True", "reason": "Applied"},
        {"type": "IkeEstablished", "status": "False", "reason": "AuthenticationFailed"},
    ]
    server = {"conditions": [{"type": "Configured", "status": "True", "reason": "Applied"}]}
    moved = s.transitions(new, server)
    assert [m["type"] for m in moved] == ["IkeEstablished"]
    assert s.event_type(moved[0]) == "Warning"


def test_operator_conditions_are_not_compared_or_written() -> None:
    want = s.desired_status(
        [{"type": "Configured", "status": "True", "reason": "Applied", "message": "m"}],
        None,
        None,
    )
    server = {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Pending"},
            {"type": "Configured", "status": "True", "reason": "Applied", "message": "m"},
        ]
    }
    assert not s.needs_write(want, server)
    assert all(x["type"] != "Ready" for x in want["conditions"])
