"""The netlink adapter against real netlink, inside throwaway namespaces.

This kernel has no VTI/XFRM link kinds, so a bridge carrying routevpn's alias stands
in for "a tunnel interface routevpn owns": addresses, routes, sysctls and GC do not
depend on the link kind. Creating real VTI/VTI6/XFRM links is proved in tests/lab.
"""

from __future__ import annotations

import errno
import ipaddress
import json

from routevpn.api import naming
from routevpn.dataplane.facts import Change, NetlinkFacts
from routevpn.dataplane.netlink import NetlinkAdapter
from routevpn.dataplane.plan import (
    ConnPlan,
    LinkPlan,
    PskCredential,
    RoutePlan,
    Secret,
    SysctlPlan,
    TunnelPlan,
)
from support.dataplane import NetnsCallError, in_netns, ns_sysctl
from support.netns import Netns

IF4 = ipaddress.ip_interface


def owned_bridge(ns: Netns, name: str, ref_ns: str, ref_name: str) -> None:
    """A link that looks like one routevpn made (its alias says so)."""
    ns.ip("link", "add", name, "type", "bridge")
    ns.ip("link", "set", name, "alias", naming.link_alias(ref_ns, ref_name), "up")


def link_json(ns: Netns, name: str) -> dict[str, object]:
    out: list[dict[str, object]] = json.loads(ns.ip("-j", "-d", "link", "show", name))
    return out[0]


def routes_json(ns: Netns, *args: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(ns.ip("-j", *args, "route", "show", "table", "all"))
    return out


def vti_plan(ref_name: str, ifname: str, **kw: object) -> TunnelPlan:
    link = LinkPlan(
        name=ifname,
        kind="vti",
        alias=naming.link_alias("site", ref_name),
        local=ipaddress.ip_address("192.0.2.1"),
        remote=ipaddress.ip_address("192.0.2.2"),
        key=4096,
    )
    conn = ConnPlan(
        name=naming.conn_name("site", ref_name),
        local_addrs=("192.0.2.1",),
        remote_addrs=("192.0.2.2",),
        local_id="node",
        remote_id="peer",
    )
    auth = PskCredential(Secret("x"))
    return TunnelPlan(ref=f"site/{ref_name}", conn=conn, auth=auth, link=link, **kw)  # type: ignore[arg-type]


async def _addresses(wanted: list[str]) -> tuple[list[Change], list[Change]]:
    async with NetlinkAdapter() as nl:
        index = (await nl._link_by_name("rv0")).index  # type: ignore[union-attr]
        first = await nl.ensure_addresses("site/a", index, [IF4(a) for a in wanted])
        second = await nl.ensure_addresses("site/a", index, [IF4(a) for a in wanted])
        return first, second


def test_addresses_added_removed_and_second_pass_is_empty(node_ns: Netns) -> None:
    owned_bridge(node_ns, "rv0", "site", "a")
    first, second = in_netns(node_ns, _addresses, ["192.0.2.1/31", "2001:db8:100::/127"])
    assert {(c.action, c.detail) for c in first} == {
        ("added", "192.0.2.1/31"),
        ("added", "2001:db8:100::/127"),
    }
    assert second == []
    first, second = in_netns(node_ns, _addresses, ["198.51.100.1/31"])
    assert {(c.action, c.detail) for c in first} == {
        ("added", "198.51.100.1/31"),
        ("removed", "192.0.2.1/31"),
        ("removed", "2001:db8:100::/127"),
    }
    assert second == []
    shown = node_ns.ip("-o", "addr", "show", "dev", "rv0")
    assert "198.51.100.1/31" in shown and "192.0.2.1/31" not in shown
    # the kernel's own IPv6 link-local address is left alone
    assert "fe80::" in shown


async def _routes(routes: list[RoutePlan]) -> tuple[list[Change], list[Change]]:
    async with NetlinkAdapter() as nl:
        index = (await nl._link_by_name("rv0")).index  # type: ignore[union-attr]
        return (
            await nl.ensure_routes("site/a", index, routes),
            await nl.ensure_routes("site/a", index, routes),
        )


def test_routes_replace_metric_table_family_and_leave_foreign_routes(node_ns: Netns) -> None:
    owned_bridge(node_ns, "rv0", "site", "a")
    node_ns.ip("addr", "add", "192.0.2.1/31", "dev", "rv0")
    node_ns.ip("addr", "add", "2001:db8:100::/127", "dev", "rv0", "nodad")
    # someone else's route on the same device, and one with routevpn's dst elsewhere
    node_ns.ip("route", "add", "203.0.113.0/24", "dev", "rv0", "proto", "static")
    net = ipaddress.ip_network
    gw4 = ipaddress.ip_address("192.0.2.0")
    gw6 = ipaddress.ip_address("2001:db8:100::1")
    want = [
        RoutePlan(net("198.51.100.0/24"), "rv0", via=gw4, metric=5),
        RoutePlan(net("2001:db8:1::/48"), "rv0", via=gw6, metric=7, table=100),
        RoutePlan(net("0.0.0.0/0"), "rv0", via=gw4, metric=50, table=100),
    ]
    first, second = in_netns(node_ns, _routes, want)
    assert [c.action for c in first] == ["replaced"] * 3
    assert second == []
    ours = [r for r in routes_json(node_ns) if r.get("protocol") == str(naming.ROUTE_PROTOCOL)]
    ours += [
        r for r in routes_json(node_ns, "-6") if r.get("protocol") == str(naming.ROUTE_PROTOCOL)
    ]
    assert {(r["dst"], r.get("metric"), r.get("table", "main")) for r in ours} == {
        ("198.51.100.0/24", 5, "main"),
        ("2001:db8:1::/48", 7, "100"),
        ("default", 50, "100"),
    }
    # drop one, move another to a new metric: the stale ones go, nothing foreign does
    first, second = in_netns(
        node_ns, _routes, [RoutePlan(net("198.51.100.0/24"), "rv0", via=gw4, metric=9)]
    )
    assert sorted(c.action for c in first) == ["deleted", "deleted", "deleted", "replaced"]
    assert second == []
    main = node_ns.ip("route", "show", "dev", "rv0")
    assert "203.0.113.0/24 proto static" in main
    assert "198.51.100.0/24 via 192.0.2.0 proto 157 metric 9" in main
    assert "metric 5" not in main


def test_route_clashing_with_a_foreign_route_is_refused(node_ns: Netns) -> None:
    owned_bridge(node_ns, "rv0", "site", "a")
    node_ns.ip("addr", "add", "192.0.2.1/31", "dev", "rv0")
    node_ns.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.0", "proto", "static")
    want = [
        RoutePlan(
            ipaddress.ip_network("198.51.100.0/24"),
            "rv0",
            via=ipaddress.ip_address("192.0.2.0"),
        )
    ]
    try:
        in_netns(node_ns, _routes, want)
    except NetnsCallError as e:
        assert e.type_name == "RouteNotOwnedError"
        assert "site/a" in e.message and "198.51.100.0/24" in e.message
    else:
        raise AssertionError("a foreign route was silently replaced")
    assert "proto static" in node_ns.ip("route", "show", "198.51.100.0/24")


def test_netlink_error_is_typed_and_names_the_tunnel(node_ns: Netns) -> None:
    owned_bridge(node_ns, "rv0", "site", "a")
    unreachable = [
        RoutePlan(
            ipaddress.ip_network("198.51.100.0/24"),
            "rv0",
            via=ipaddress.ip_address("203.0.113.9"),  # not on any link: ENETUNREACH
        )
    ]
    try:
        in_netns(node_ns, _routes, unreachable)
    except NetnsCallError as e:
        assert e.type_name == "NetlinkOperationError"
        assert e.attrs["code"] == errno.ENETUNREACH
        assert e.attrs["ref"] == "site/a"
    else:
        raise AssertionError("an unreachable next hop was accepted")


async def _sysctls(wanted: list[SysctlPlan]) -> tuple[list[Change], list[Change]]:
    nl = NetlinkAdapter()
    return nl.ensure_sysctls("site/a", wanted), nl.ensure_sysctls("site/a", wanted)


def test_sysctls_read_before_write_inside_the_namespace(node_ns: Netns) -> None:
    owned_bridge(node_ns, "rv0", "site", "a")
    path = "net/ipv4/conf/rv0/rp_filter"
    before = ns_sysctl(node_ns, path)
    target = "2" if before != "2" else "1"
    first, second = in_netns(node_ns, _sysctls, [SysctlPlan(path, target)])
    assert [c.detail for c in first] == [f"{path}={target}"]
    assert second == []
    assert ns_sysctl(node_ns, path) == target


async def _ensure_link(link: LinkPlan) -> tuple[int, list[Change]]:
    async with NetlinkAdapter() as nl:
        return await nl.ensure_link("site/a", link)


def test_foreign_link_with_the_plans_name_is_never_touched(node_ns: Netns) -> None:
    node_ns.ip("link", "add", "vti4096", "type", "bridge")
    before = link_json(node_ns, "vti4096")
    plan = vti_plan("a", "vti4096")
    assert plan.link is not None
    try:
        in_netns(node_ns, _ensure_link, plan.link)
    except NetnsCallError as e:
        assert e.type_name == "LinkNotOwnedError" and "site/a" in e.message
    else:
        raise AssertionError("a foreign link was taken over")
    after = link_json(node_ns, "vti4096")
    assert after.get("ifalias") is None
    assert (after["ifindex"], after["mtu"], after["flags"]) == (
        before["ifindex"],
        before["mtu"],
        before["flags"],
    )


def test_owned_link_with_other_immutable_attributes_is_recreated(node_ns: Netns) -> None:
    """Our link of the wrong kind is deleted to be created again (here the create of a
    VTI then fails, as this kernel has none: a typed error, nothing left half-made)."""
    owned_bridge(node_ns, "vti4096", "site", "a")
    plan = vti_plan("a", "vti4096")
    assert plan.link is not None
    try:
        in_netns(node_ns, _ensure_link, plan.link)
    except NetnsCallError as e:
        assert e.type_name == "NetlinkOperationError"
        assert e.attrs["code"] == errno.EOPNOTSUPP and e.attrs["ref"] == "site/a"
    else:
        # a kernel with VTI: the link must now be a VTI with our attributes
        info = link_json(node_ns, "vti4096")["linkinfo"]
        assert info["info_kind"] == "vti"  # type: ignore[index]
        return
    assert "vti4096" not in node_ns.ip("-o", "link", "show")


async def _gc(desired: list[TunnelPlan]) -> tuple[list[Change], list[Change], NetlinkFacts]:
    async with NetlinkAdapter() as nl:
        first = await nl.garbage_collect(desired)
        second = await nl.garbage_collect(desired)
        return first, second, await nl.observe()


def test_garbage_collect_removes_only_marked_things_no_longer_desired(node_ns: Netns) -> None:
    owned_bridge(node_ns, "vti4096", "site", "a")
    owned_bridge(node_ns, "vti4097", "site", "b")
    node_ns.ip("link", "add", "other0", "type", "bridge")
    node_ns.ip("link", "set", "other0", "up")
    node_ns.ip("addr", "add", "192.0.2.1/31", "dev", "vti4096")
    node_ns.ip("addr", "add", "198.51.100.1/31", "dev", "other0")
    proto = str(naming.ROUTE_PROTOCOL)
    # a's route (desired), a stale routevpn route on a foreign link, a foreign route
    node_ns.ip("route", "add", "203.0.113.0/25", "dev", "vti4096", "proto", proto)
    node_ns.ip("route", "add", "203.0.113.128/25", "dev", "other0", "proto", proto)
    node_ns.ip("route", "add", "192.0.2.128/25", "dev", "other0", "proto", "static")
    plan = vti_plan(
        "a",
        "vti4096",
        routes=(RoutePlan(ipaddress.ip_network("203.0.113.0/25"), "vti4096"),),
    )
    first, second, facts = in_netns(node_ns, _gc, [plan])
    assert sorted(str(c) for c in first) == [
        "(routevpn route on other0): route deleted 203.0.113.128/25 table 254",
        "site/b: link deleted vti4097",
    ]
    assert second == []
    names = {link.name for link in facts.links}
    assert {"vti4096", "other0"} <= names and "vti4097" not in names
    shown = node_ns.ip("route", "show")
    assert "203.0.113.0/25 dev vti4096 proto 157" in shown
    assert "192.0.2.128/25 dev other0 proto static" in shown
    assert "203.0.113.128/25" not in shown
    # an empty desired state removes everything routevpn owns, and nothing else
    first, _, facts = in_netns(node_ns, _gc, [])
    assert [str(c) for c in first] == ["site/a: link deleted vti4096"]
    assert {link.name for link in facts.links} == {"lo", "other0"}


async def _gc_keeping(keep: list[str]) -> list[Change]:
    async with NetlinkAdapter() as nl:
        return await nl.garbage_collect([], keep)


def test_garbage_collect_keeps_a_tunnel_that_has_no_plan_right_now(node_ns: Netns) -> None:
    """A tunnel that exists but can't be planned (its Secret is late) keeps its link and
    the routes through it; another tunnel's stale link still goes."""
    owned_bridge(node_ns, "vti4096", "site", "a")
    owned_bridge(node_ns, "vti4097", "site", "b")
    proto = str(naming.ROUTE_PROTOCOL)
    node_ns.ip("route", "add", "203.0.113.0/25", "dev", "vti4096", "proto", proto)
    changes = in_netns(node_ns, _gc_keeping, ["site/a"])
    assert [str(c) for c in changes] == ["site/b: link deleted vti4097"]
    assert "203.0.113.0/25 dev vti4096 proto 157" in node_ns.ip("route", "show")
    assert "vti4096" in node_ns.ip("-o", "link", "show")


async def _observe() -> NetlinkFacts:
    async with NetlinkAdapter() as nl:
        return await nl.observe()


def test_observe_reports_links_addresses_and_routevpns_routes_only(node_ns: Netns) -> None:
    """Routes: routevpn's own (every table), never the rest of a possibly full table."""
    owned_bridge(node_ns, "rv0", "site", "a")
    node_ns.ip("link", "set", "rv0", "mtu", "1400")
    node_ns.ip("addr", "add", "192.0.2.1/31", "dev", "rv0")
    proto = str(naming.ROUTE_PROTOCOL)
    node_ns.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.0", "metric", "3", "proto", proto)
    node_ns.ip("route", "add", "203.0.113.0/24", "via", "192.0.2.0", "table", "100", "proto", proto)
    node_ns.ip("route", "add", "198.51.100.0/25", "via", "192.0.2.0", "proto", "static")
    facts = in_netns(node_ns, _observe)
    link = next(lk for lk in facts.links if lk.name == "rv0")
    assert (link.kind, link.alias, link.mtu, link.up) == ("bridge", "routevpn:site/a", 1400, True)
    assert any(a.ifname == "rv0" and str(a.address) == "192.0.2.1/31" for a in facts.addresses)
    route = next(r for r in facts.routes if str(r.dst) == "198.51.100.0/24")
    assert (str(route.via), route.metric, route.ifname, route.table) == ("192.0.2.0", 3, "rv0", 254)
    assert {(str(r.dst), r.table) for r in facts.routes} == {
        ("198.51.100.0/24", 254),
        ("203.0.113.0/24", 100),
    }


async def _apply_policy(plan: TunnelPlan) -> list[Change]:
    async with NetlinkAdapter() as nl:
        return await nl.apply(plan)


def test_policy_mode_plan_changes_nothing_in_netlink(node_ns: Netns) -> None:
    before = node_ns.ip("-d", "link", "show") + node_ns.ip("route", "show", "table", "all")
    plan = TunnelPlan(
        ref="site/p",
        conn=ConnPlan(
            name=naming.conn_name("site", "p"),
            local_addrs=("192.0.2.1",),
            remote_addrs=("192.0.2.2",),
            local_id="a",
            remote_id="b",
        ),
        auth=PskCredential(Secret("x")),
    )
    assert in_netns(node_ns, _apply_policy, plan) == []
    assert node_ns.ip("-d", "link", "show") + node_ns.ip("route", "show", "table", "all") == before
