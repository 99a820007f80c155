"""The netlink adapter beside tables it does not own, against real netlink.

A node may carry full BGP tables, so the adapter reads only routevpn's routes (a dump
the kernel filters by protocol) and asks single questions about the rest: an exclusive
create that the kernel refuses when a key is taken, and a FIB lookup of the route to
each peer for the route loop check. These tests prove that nothing foreign is touched,
that our own routes are still repaired, that the conflict checks still fire, and that a
second pass changes nothing. Bridges carrying routevpn's alias stand in for tunnel
interfaces (this kernel has no VTI/XFRM; see test_dataplane_netlink.py).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from pathlib import Path

from routevpn.api import naming
from routevpn.dataplane import safety
from routevpn.dataplane.facts import Change, NetlinkFacts
from routevpn.dataplane.netlink import NetlinkAdapter
from routevpn.dataplane.plan import ConnPlan, LinkPlan, PskCredential, RoutePlan, Secret, TunnelPlan
from support.dataplane import NetnsCallError, in_netns
from support.netns import Netns

NET = ipaddress.ip_network
ADDR = ipaddress.ip_address
IFACE = ipaddress.ip_interface
PROTO = str(naming.ROUTE_PROTOCOL)
# Foreign routes loaded beside ours (in main and in table 100), so that reading them
# all, or touching any, would show; the full-size case is benchmarks/bench_full_tables.py.
FOREIGN_PER_TABLE = 2000


def owned_bridge(ns: Netns, name: str) -> None:
    """A link that looks like one routevpn made for tunnel site/<name>."""
    ns.ip("link", "add", name, "type", "bridge")
    ns.ip("link", "set", name, "alias", naming.link_alias("site", name), "up")


def underlay(ns: Netns) -> None:
    """An interface standing for the node's uplink, with a v4 and a v6 prefix."""
    ns.ip("link", "add", "up0", "type", "bridge")
    ns.ip("link", "set", "up0", "up")
    ns.ip("addr", "add", "192.0.2.10/28", "dev", "up0")
    ns.ip("addr", "add", "2001:db8:0:1::10/64", "dev", "up0", "nodad")


def load_foreign(ns: Netns, tmp: Path) -> None:
    """FOREIGN_PER_TABLE IPv6 /64s and IPv4 /32s in main and table 100, protocol bgp."""
    lines = []
    for table, base in (("main", 0x1000), ("100", 0x2000)):
        for i in range(FOREIGN_PER_TABLE // 2):
            lines.append(
                f"route add 2001:db8:{base:x}:{i:x}::/64 via 2001:db8:0:1::1 "
                f"proto bgp table {table}"
            )
            lines.append(
                f"route add 169.254.{base >> 8}.{i % 256}/32 via 192.0.2.1 "
                f"proto bgp table {table} metric {i // 256}"
            )
    batch = tmp / "foreign.batch"
    batch.write_text("\n".join(lines) + "\n")
    ns.ip("-batch", str(batch))


def _addrconf(row: dict[str, object]) -> bool:
    """A route IPv6 address configuration adds by itself once a link has carrier (its
    link-local address and route, the multicast route): a bridge without ports gets
    carrier some time after it is set up, so these come and go with timing, not with
    anything anyone did."""
    dst = str(row.get("dst", ""))
    return row.get("protocol") == "kernel" and dst.startswith(("fe80:", "ff00:"))


def foreign_routes(ns: Netns) -> list[str]:
    """Every route not routevpn's (text of `ip route show table all`, both families),
    but IPv6's own link-local and multicast routes (`_addrconf`)."""
    out: list[str] = []
    for family in ("-4", "-6"):
        rows: list[dict[str, object]] = json.loads(
            ns.ip("-j", family, "route", "show", "table", "all")
        )
        out += [
            json.dumps(r, sort_keys=True)
            for r in rows
            if r.get("protocol") != PROTO and not _addrconf(r)
        ]
    return sorted(out)


def ours(ns: Netns) -> set[tuple[str, str, str]]:
    """routevpn's routes as (dst, gateway, table)."""
    out: set[tuple[str, str, str]] = set()
    for family in ("-4", "-6"):
        rows: list[dict[str, object]] = json.loads(
            ns.ip("-j", family, "route", "show", "table", "all", "proto", PROTO)
        )
        out |= {(str(r["dst"]), str(r.get("gateway")), str(r.get("table", "main"))) for r in rows}
    return out


WANT: dict[str, list[RoutePlan]] = {
    "rv0": [
        RoutePlan(NET("2001:db8:1000:5::/64"), "rv0", via=ADDR("2001:db8:100::1"), table=100),
        RoutePlan(NET("2001:db8:e0::/48"), "rv0", via=ADDR("2001:db8:100::1")),
        RoutePlan(NET("198.51.100.0/24"), "rv0", via=ADDR("192.0.2.33")),
    ],
    "rv1": [
        RoutePlan(NET("2001:db8:e1::/48"), "rv1", via=ADDR("2001:db8:101::1")),
        RoutePlan(NET("203.0.113.0/24"), "rv1", via=ADDR("192.0.2.35"), metric=10, table=100),
    ],
}


async def _pass(want: dict[str, list[RoutePlan]]) -> list[Change]:
    """One pass over the links' routes, as the driver runs it (one view for all)."""
    changes: list[Change] = []
    async with NetlinkAdapter() as nl:
        nl.begin_pass()
        try:
            facts = await nl.observe()
            for name, routes in want.items():
                index = next(lk.index for lk in facts.links if lk.name == name)
                changes += await nl.ensure_routes(f"site/{name}", index, routes)
        finally:
            nl.end_pass()
    return changes


def tunnels(ns: Netns) -> None:
    owned_bridge(ns, "rv0")
    owned_bridge(ns, "rv1")
    ns.ip("addr", "add", "192.0.2.32/31", "dev", "rv0")
    ns.ip("addr", "add", "192.0.2.34/31", "dev", "rv1")
    ns.ip("addr", "add", "2001:db8:100::/127", "dev", "rv0", "nodad")
    ns.ip("addr", "add", "2001:db8:101::/127", "dev", "rv1", "nodad")


def test_foreign_routes_are_never_touched_and_ours_are_repaired(
    node_ns: Netns, tmp_path: Path
) -> None:
    underlay(node_ns)
    tunnels(node_ns)
    load_foreign(node_ns, tmp_path)
    # our destinations, held by others elsewhere: another protocol at another metric,
    # the same prefix in a table we don't use for it, and on our own link
    node_ns.ip("-6", "route", "add", "2001:db8:e0::/48", "via", "2001:db8:0:1::1", "metric", "5")
    node_ns.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.1", "table", "200")
    node_ns.ip("route", "add", "203.0.113.0/24", "dev", "rv1", "proto", "static", "table", "100")
    before = foreign_routes(node_ns)
    assert len(before) > 2 * FOREIGN_PER_TABLE

    first = in_netns(node_ns, _pass, WANT)
    assert sorted(c.detail for c in first) == sorted(
        f"{r.dst} table {r.table}" for routes in WANT.values() for r in routes
    )
    assert in_netns(node_ns, _pass, WANT) == []  # idempotent: the second pass changes nothing
    expected = {
        ("2001:db8:1000:5::/64", "2001:db8:100::1", "100"),
        ("2001:db8:e0::/48", "2001:db8:100::1", "main"),
        ("198.51.100.0/24", "192.0.2.33", "main"),
        ("2001:db8:e1::/48", "2001:db8:101::1", "main"),
        ("203.0.113.0/24", "192.0.2.35", "100"),
    }
    assert ours(node_ns) == expected

    # drift: one of ours deleted, another pointed elsewhere by hand; both repaired
    node_ns.ip("-6", "route", "del", "2001:db8:e1::/48", "proto", PROTO)
    node_ns.ip(
        "route", "replace", "198.51.100.0/24", "via", "192.0.2.1", "dev", "up0", "proto", PROTO
    )
    repaired = in_netns(node_ns, _pass, WANT)
    assert sorted(c.detail for c in repaired) == [
        "198.51.100.0/24 table 254",
        "2001:db8:e1::/48 table 254",
    ]
    assert in_netns(node_ns, _pass, WANT) == []
    assert ours(node_ns) == expected

    # a route no longer wanted goes; nothing foreign ever changed
    fewer = {"rv0": WANT["rv0"], "rv1": WANT["rv1"][:1]}
    assert [c.action for c in in_netns(node_ns, _pass, fewer)] == ["deleted"]
    assert foreign_routes(node_ns) == before


def test_a_key_held_by_another_route_is_refused_by_the_kernel(
    node_ns: Netns, tmp_path: Path
) -> None:
    """Connected prefixes and non-unicast routes count as taken, like any other route."""
    underlay(node_ns)
    tunnels(node_ns)
    load_foreign(node_ns, tmp_path)
    node_ns.ip("route", "add", "blackhole", "203.0.113.0/24", "table", "100", "metric", "10")
    cases = [
        # the kernel's connected route of rv0's inside prefix (table main, metric 0)
        RoutePlan(NET("192.0.2.32/31"), "rv0"),
        # a blackhole route someone keeps at our destination
        WANT["rv1"][1],
        # one of the foreign full-table routes
        RoutePlan(NET("2001:db8:2000:7::/64"), "rv0", via=ADDR("2001:db8:100::1"), table=100),
    ]
    before = foreign_routes(node_ns)
    for route in cases:
        try:
            in_netns(node_ns, _pass, {route.dev: [route]})
        except NetnsCallError as e:
            assert e.type_name == "RouteNotOwnedError", e
            assert str(route.dst) in e.message and f"site/{route.dev}" in e.message
        else:
            raise AssertionError(f"{route.dst}: a route of someone else's was taken over")
    assert foreign_routes(node_ns) == before
    assert ours(node_ns) == set()


async def _check(plan: TunnelPlan) -> tuple[list[str], NetlinkFacts, NetlinkFacts]:
    """The driver's safety check for `plan` (observe_for → safety.check), and the facts."""
    async with NetlinkAdapter() as nl:
        facts = await nl.observe_for(plan)
        own = plan.link.name if plan.link is not None else None
        addrs = [safety.HostAddress(a.ifname, a.address) for a in facts.addresses]
        routes = [
            safety.HostRoute(r.dst, r.ifname or "", r.metric, r.table)
            for r in facts.routes
            if r.ifname is not None and r.ifname != own
        ]
        findings = safety.check(plan, addrs, routes)
        return [f.reason for f in findings], facts, await nl.observe()


def test_conflict_checks_use_single_lookups(node_ns: Netns, tmp_path: Path) -> None:
    underlay(node_ns)
    owned_bridge(node_ns, "vti4096")
    load_foreign(node_ns, tmp_path)
    # the peer is 2001:db8:0:2::1; a default route into the tunnel covers it
    plan = TunnelPlan(
        ref="site/vti4096",
        conn=ConnPlan(
            name=naming.conn_name("site", "vti4096"),
            local_addrs=("2001:db8:0:1::10",),
            remote_addrs=("2001:db8:0:2::1",),
            local_id="node",
            remote_id="peer",
        ),
        auth=PskCredential(Secret("x")),
        link=LinkPlan(
            name="vti4096",
            kind="vti6",
            alias=naming.link_alias("site", "vti4096"),
            local=ADDR("2001:db8:0:1::10"),
            remote=ADDR("2001:db8:0:2::1"),
            key=4096,
        ),
        addresses=(IFACE("2001:db8:100::/127"),),
        routes=(RoutePlan(NET("::/0"), "vti4096", via=ADDR("2001:db8:100::1")),),
    )

    # no route reaches the peer outside the tunnel: a loop
    reasons, facts, plain = in_netns(node_ns, _check, plan)
    assert reasons == ["RouteLoop"]
    assert facts == plain  # nothing found to add; and no foreign route is ever listed
    assert all(r.proto == naming.ROUTE_PROTOCOL for r in plain.routes)

    # a more specific route through the uplink rescues it: found by one lookup
    node_ns.ip("-6", "route", "add", "2001:db8:0:2::/64", "via", "2001:db8:0:1::1")
    reasons, facts, plain = in_netns(node_ns, _check, plan)
    assert reasons == []
    assert [str(r.dst) for r in facts.routes if r not in plain.routes] == ["2001:db8:0:2::/64"]

    # a blackhole for the peer carries no IKE: a loop again
    node_ns.ip("-6", "route", "add", "blackhole", "2001:db8:0:2::1/128")
    assert in_netns(node_ns, _check, plan)[0] == ["RouteLoop"]
    node_ns.ip("-6", "route", "del", "blackhole", "2001:db8:0:2::1/128")

    # any route via the uplink more specific than ours rescues it, however wide
    node_ns.ip("-6", "route", "del", "2001:db8:0:2::/64")
    node_ns.ip("-6", "route", "add", "2001:db8::/32", "via", "2001:db8:0:1::1", "proto", "bgp")
    assert in_netns(node_ns, _check, plan)[0] == []

    # the inside address already on another interface: AddressConflict (addresses dump)
    node_ns.ip("addr", "add", "2001:db8:100::/127", "dev", "up0", "nodad")
    assert in_netns(node_ns, _check, plan)[0] == ["AddressConflict"]

    # a plan whose routes cover no peer asks the kernel nothing and adds nothing
    narrow = replace(
        plan,
        addresses=(IFACE("2001:db8:101::/127"),),
        routes=(RoutePlan(NET("2001:db8:e0::/48"), "vti4096", via=ADDR("2001:db8:101::1")),),
    )
    reasons, facts, plain = in_netns(node_ns, _check, narrow)
    assert reasons == [] and facts == plain
