"""A far end that narrows the traffic selectors to one family, and one CHILD SA per
family: what the conditions, status and failover make of the installed CHILD SAs."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

from routevpn.agent import conditions as c
from routevpn.agent import failover as fo
from routevpn.agent import selectors as sel
from routevpn.agent import status as st
from routevpn.api import naming
from routevpn.api.conditions import ConditionType, Reason, Status
from routevpn.api.fields import DNS_SUBDOMAIN
from routevpn.dataplane import builders
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts, IpsecFacts
from routevpn.dataplane.plan import TunnelPlan
from support import hapair_facts as hp

CONN = naming.conn_name(*hp.PRIMARY)
V6 = CONN + naming.IPV6_CHILD_SUFFIX
BOTH = ("0.0.0.0/0", "::/0")


def dual(per_family: bool = False) -> TunnelPlan:
    """The pair's primary: an IPv4 and an IPv6 route into one interface."""
    p = hp.plan(hp.PRIMARY, hp.route(hp.NET4), hp.route(hp.NET6))
    child = replace(p.conn.child, per_family=per_family)
    return replace(p, conn=replace(p.conn, child=child))


def child(name: str, ts: tuple[str, ...], state: str = "INSTALLED", uid: str = "3") -> ChildSaFacts:
    return ChildSaFacts(name, uid, state, spi_in="c1", spi_out="c2", local_ts=ts, remote_ts=ts)


def child_cond(plan: TunnelPlan, *children: ChildSaFacts) -> c.Cond:
    ike = IkeSaFacts(CONN, "1", "ESTABLISHED", version="2", children=children)
    conds = c.compute(c.Observation(mode="route", plan=plan, ike=ike), CONN)
    return {x.type: x for x in conds}[ConditionType.CHILD_SA_INSTALLED]


def test_families_of_charons_selector_spellings() -> None:
    assert sel.families(["0.0.0.0/0", "::/0"]) == {4, 6}
    assert sel.families(["::/0"]) == {6}
    assert sel.families(["192.0.2.1..192.0.2.9", "2001:db8::/32 [tcp/443]"]) == {4, 6}
    assert sel.families(["dynamic", ""]) == set()


def test_the_far_end_narrowing_to_ipv6_is_reported_not_ready() -> None:
    cond = child_cond(dual(), child(CONN, ("::/0",)))
    assert (cond.status, cond.reason) == (Status.FALSE, Reason.TRAFFIC_SELECTORS_NARROWED)
    assert "::/0 === ::/0" in cond.message and "IPv4" in cond.message
    assert "spec.child.perFamily" in cond.message


def test_what_was_proposed_installed_is_installed() -> None:
    cond = child_cond(dual(), child(CONN, BOTH))
    assert (cond.status, cond.reason) == (Status.TRUE, Reason.INSTALLED)


def test_narrowing_away_a_family_the_tunnel_does_not_route_is_said_but_not_false() -> None:
    v6_only = hp.plan(hp.PRIMARY, hp.route(hp.NET6))
    cond = child_cond(v6_only, child(CONN, ("::/0",)))
    assert (cond.status, cond.reason) == (Status.TRUE, Reason.INSTALLED)
    assert "narrowed" in cond.message


def test_a_listing_without_selectors_judges_nothing() -> None:
    cond = child_cond(dual(), child(CONN, ()))
    assert cond.status is Status.TRUE


def test_per_family_needs_both_child_sas() -> None:
    plan = dual(per_family=True)
    assert builders.child_names(plan) == (CONN, V6)
    half = child_cond(plan, child(CONN, ("0.0.0.0/0",)))
    assert (half.status, half.reason) == (Status.UNKNOWN, Reason.INSTALLING)
    assert "IPv6 not there yet" in half.message
    both = child_cond(plan, child(CONN, ("0.0.0.0/0",)), child(V6, ("::/0",), uid="4"))
    assert (both.status, both.reason) == (Status.TRUE, Reason.INSTALLED)
    assert "IPv4 SPIs" in both.message and "IPv6 SPIs" in both.message


def test_status_carries_the_installed_selectors_of_every_child_sa() -> None:
    plan = dual(per_family=True)
    sas = (child(CONN, ("0.0.0.0/0",)), child(V6, ("::/0",), uid="4"))
    ike = IkeSaFacts(CONN, "1", "ESTABLISHED", children=sas)
    found = sel.installed(sel.children(ike, plan, CONN))
    out = st.child_status(sas[0], None, datetime(2026, 1, 1, tzinfo=UTC), selectors=found)
    assert (out["localTs"], out["remoteTs"]) == (["0.0.0.0/0", "::/0"], ["0.0.0.0/0", "::/0"])


def test_per_family_routes_are_active_only_while_both_child_sas_carry() -> None:
    obj = hp.obj(hp.PRIMARY, [{"to": hp.NET4}, {"to": hp.NET6}])
    obj["spec"]["child"] = {"perFamily": True}
    tunnels = {hp.PRIMARY: obj}

    def up(*children: ChildSaFacts) -> bool:
        ipsec = IpsecFacts(sas=(IkeSaFacts(CONN, "1", "ESTABLISHED", children=children),))
        return hp.PRIMARY in fo.NodeRoutes.of(tunnels, hp.NODE, fo.carrying_conns(ipsec)).up

    assert not up(child(CONN, ("0.0.0.0/0",)))
    assert up(child(CONN, ("0.0.0.0/0",)), child(V6, ("::/0",)))
    obj["spec"]["child"] = {}
    assert up(child(CONN, BOTH))  # one CHILD SA for both families: as before


def test_per_family_conn_has_one_child_per_family_with_the_same_mark() -> None:
    plan = dual(per_family=True)
    assert plan.link is not None
    children = builders.build_conn(plan)[CONN]["children"]
    assert list(children) == [CONN, V6]
    assert (children[CONN]["local_ts"], children[CONN]["remote_ts"]) == (["0.0.0.0/0"],) * 2
    assert (children[V6]["local_ts"], children[V6]["remote_ts"]) == (["::/0"],) * 2
    for ch in children.values():
        assert ch["mark_in"] == ch["mark_out"] == str(plan.link.mark)
    single = builders.build_conn(dual())[CONN]["children"]
    assert list(single) == [CONN] and single[CONN]["local_ts"] == list(BOTH)


def test_ipv6_child_names_never_parse_as_another_tunnel() -> None:
    parsed = naming.parse_conn_name(V6)
    assert parsed == (hp.PRIMARY[0], hp.PRIMARY[1] + "~ipv6")
    assert not re.fullmatch(DNS_SUBDOMAIN, parsed[1])  # no tunnel can have that name
