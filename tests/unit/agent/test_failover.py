"""Which routes of a tunnel are demoted, and why (agent.failover): pure decisions."""

from __future__ import annotations

from typing import Any

import pytest

from routevpn.agent import failover as fo
from routevpn.api import naming
from routevpn.api.status import RouteState
from routevpn.dataplane.facts import IkeSaFacts, IpsecFacts
from support.hapair_facts import (
    BACKUP,
    NET4,
    NET6,
    NODE,
    PAIR,
    PENALTY,
    PRIMARY,
    obj,
    plan,
    route,
    sa,
)


def node(*up: IkeSaFacts, tunnels: dict[Any, Any] | None = None) -> fo.NodeRoutes:
    carrying = fo.carrying_conns(IpsecFacts(sas=up))
    return fo.NodeRoutes.of(tunnels or PAIR, NODE, carrying)


def test_a_down_tunnel_is_demoted_while_another_up_one_routes_the_same_networks() -> None:
    view = node(sa(BACKUP))
    primary = fo.decide_routes(PRIMARY, plan(PRIMARY, route(NET4, 100), route(NET6)), view)
    assert [(d.state, d.reason, d.route.metric) for d in primary] == [
        (RouteState.DEMOTED, fo.SA_DOWN, 100 + PENALTY),
        (RouteState.DEMOTED, fo.SA_DOWN, 1024 + PENALTY),  # IPv6 0 is the kernel's 1024
    ]
    assert "prod/backup (up) carries it" in primary[0].message
    backup = fo.decide_routes(BACKUP, plan(BACKUP, route(NET4, 200)), view)
    assert [(d.state, d.reason, d.route.metric) for d in backup] == [
        (RouteState.ACTIVE, fo.SA_INSTALLED, 200)
    ]


def test_with_no_tunnel_up_every_route_stays_at_its_metric_fail_closed() -> None:
    view = node()
    decided = fo.decide_routes(PRIMARY, plan(PRIMARY, route(NET4, 100), route(NET6)), view)
    assert [(d.state, d.reason) for d in decided] == [(RouteState.ACTIVE, fo.FAIL_CLOSED)] * 2
    assert [d.to_wire()["metric"] for d in decided] == [100, 1024]
    assert "never sent in clear" in decided[0].message


def test_an_up_tunnel_is_active_whatever_the_others_do() -> None:
    decided = fo.decide_routes(PRIMARY, plan(PRIMARY, route(NET4, 100)), node(sa(PRIMARY)))
    assert decided[0].state is RouteState.ACTIVE and decided[0].reason == fo.SA_INSTALLED
    assert decided[0].to_wire() == {
        "to": NET4, "table": 254, "metric": 100, "state": "Active",
        "reason": "SaInstalled", "message": decided[0].message,
    }  # fmt: skip


def test_only_the_same_destination_in_the_same_table_is_a_sibling() -> None:
    tunnels = {
        PRIMARY: obj(PRIMARY, [{"to": NET4, "metric": 100}]),
        BACKUP: obj(BACKUP, [{"to": NET4, "table": 100}, {"to": "198.51.100.0/25"}]),
    }
    view = node(sa(BACKUP), tunnels=tunnels)
    assert view.siblings([PRIMARY]) == set()
    decided = fo.decide_routes(PRIMARY, plan(PRIMARY, route(NET4, 100)), view)
    assert decided[0].reason == fo.FAIL_CLOSED


def test_siblings_are_the_tunnels_sharing_a_destination() -> None:
    third = ("other", "elsewhere")
    tunnels = {**PAIR, third: obj(third, [{"to": "203.0.113.0/24"}])}
    view = node(tunnels=tunnels)
    assert view.siblings([PRIMARY]) == {BACKUP}
    assert view.siblings([third]) == set()


def test_a_rekeying_child_still_carries_and_a_tunnel_being_deleted_does_not() -> None:
    assert fo.carrying_conns(IpsecFacts(sas=(sa(PRIMARY, "REKEYED"),))) == {
        naming.conn_name(*PRIMARY)
    }
    assert fo.carrying_conns(IpsecFacts(sas=(sa(PRIMARY, "CREATED"),))) == frozenset()
    deleting = {**PAIR, BACKUP: obj(BACKUP, [{"to": NET4}], deletionTimestamp="2026-01-01")}
    view = node(sa(BACKUP), tunnels=deleting)
    decided = fo.decide_routes(PRIMARY, plan(PRIMARY, route(NET4, 100)), view)
    assert decided[0].reason == fo.FAIL_CLOSED


def test_without_a_listing_of_charon_the_tunnels_that_were_up_stay_up() -> None:
    before = node(sa(BACKUP))
    assert before.refresh(PAIR, NODE, None).up == {BACKUP}
    assert before.refresh(PAIR, NODE, IpsecFacts()).up == frozenset()


def test_demoted_metrics_keep_distinct_claims_distinct_and_fit_32_bits() -> None:
    """The claim rule: a claim's metric is in [0, 2**31); its demoted key is in the upper
    half, one to one, so it never meets another claim's key, active or demoted."""
    top = naming.ROUTE_METRIC_MAX
    assert naming.demoted_metric(0) == PENALTY
    assert naming.demoted_metric(top) == 2**32 - 1
    assert naming.demoted_metric(5) != naming.demoted_metric(6)
    assert naming.demoted_metric(1) > top
    with pytest.raises(ValueError):
        naming.demoted_metric(top + 1)
