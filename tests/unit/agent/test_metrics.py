"""The agent's per-tunnel series: states, counters at 0 from the start, failovers counted
once per demotion, rekeys and failures only of known tunnels, nothing left after forget."""

from __future__ import annotations

import pytest

from routevpn.agent.metrics import Metrics
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts

pytestmark = pytest.mark.unit

T = {"namespace": "prod", "name": "site-b", "node": "node-a"}
IKE = IkeSaFacts(conn="c", uniqueid="1", state="ESTABLISHED", established=30)
CHILD = ChildSaFacts(name="c", uniqueid="2", state="INSTALLED", bytes_in=1500, packets_in=3)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, {**T, **labels})


def series_of_tunnel(m: Metrics) -> int:
    return sum(
        1
        for family in m.registry.collect()
        for s in family.samples
        if s.labels.get("name") == "site-b"
    )


def test_states_counters_and_established_time() -> None:
    m = Metrics("node-a")
    m.tunnel("prod", "site-b", IKE, CHILD, 1_000.0, ["Active"])
    assert value(m, "routevpn_tunnel_ike_state", state="ESTABLISHED") == 1
    assert value(m, "routevpn_tunnel_ike_state", state="CONNECTING") == 0
    assert value(m, "routevpn_tunnel_child_state", state="INSTALLED") == 1
    assert value(m, "routevpn_tunnel_child_sa_received_bytes") == 1500
    assert value(m, "routevpn_tunnel_child_sa_received_packets") == 3
    assert value(m, "routevpn_tunnel_established_timestamp_seconds") == 970
    assert value(m, "routevpn_tunnel_routes", state="Active") == 1
    assert value(m, "routevpn_tunnel_routes", state="Demoted") == 0
    assert value(m, "routevpn_tunnel_on_demand") == 0
    m.tunnel("prod", "site-b", None, None, 1_000.0, on_demand=True)
    assert value(m, "routevpn_tunnel_on_demand") == 1
    for sa in ("ike", "child"):  # at 0 before the first rekey: rate() sees the first one
        assert value(m, "routevpn_tunnel_rekeys_total", sa=sa) == 0
    assert value(m, "routevpn_tunnel_ike_failures_total") == 0
    assert value(m, "routevpn_tunnel_failovers_total") == 0


def test_a_failover_counts_once_per_demotion() -> None:
    m = Metrics("node-a")
    m.tunnel("prod", "site-b", IKE, CHILD, 1.0, ["Active", "Active"])
    for _ in range(3):  # down, demoted, for three passes: one failover
        m.tunnel("prod", "site-b", None, None, 2.0, ["Demoted", "Demoted"])
    assert value(m, "routevpn_tunnel_routes", state="Demoted") == 2
    assert value(m, "routevpn_tunnel_failovers_total") == 1
    assert value(m, "routevpn_tunnel_ike_state", state="DOWN") == 1
    assert value(m, "routevpn_tunnel_established_timestamp_seconds") is None
    m.tunnel("prod", "site-b", IKE, CHILD, 3.0, ["Active", "Active"])  # fail-back
    m.tunnel("prod", "site-b", None, None, 4.0, ["Demoted", "Active"])
    assert value(m, "routevpn_tunnel_failovers_total") == 2


def test_rekeys_and_failures_counted_from_the_first_event() -> None:
    """charon's failure of a tunnel's first negotiation may come before its first report:
    it is counted all the same, from 0."""
    m = Metrics("node-a")
    m.ike_failed("prod", "site-b")
    assert value(m, "routevpn_tunnel_ike_failures_total") == 1
    assert value(m, "routevpn_tunnel_rekeys_total", sa="child") == 0
    m.tunnel("prod", "site-b", IKE, CHILD, 1.0)
    m.rekeyed("prod", "site-b", "child")
    m.rekeyed("prod", "site-b", "ike")
    m.rekeyed("prod", "site-b", "child")
    m.rekeyed("prod", "site-b", "other")  # not an SA kind: ignored
    m.ike_failed("prod", "site-b")
    assert value(m, "routevpn_tunnel_rekeys_total", sa="child") == 2
    assert value(m, "routevpn_tunnel_rekeys_total", sa="ike") == 1
    assert value(m, "routevpn_tunnel_ike_failures_total") == 2
    m.forget("prod", "site-b")
    assert series_of_tunnel(m) == 0


def test_forget_leaves_no_series_of_the_tunnel() -> None:
    m = Metrics("node-a")
    m.tunnel("prod", "site-b", IKE, CHILD, 1.0, ["Demoted"])
    m.rekeyed("prod", "site-b", "ike")
    assert series_of_tunnel(m) > 30
    m.forget("prod", "site-b")
    assert series_of_tunnel(m) == 0
