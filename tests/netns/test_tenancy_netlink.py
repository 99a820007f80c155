"""Hostile tunnels against real netlink in a throwaway namespace: what the agent refuses
even when the operator let it through (defence in depth), and one tenant's route that
another tunnel can neither take over nor remove.

Each case reads the namespace's real facts, runs the agent's safety check on them
exactly as `RealDriver.apply` does, and applies only what passes: the test then looks
at the kernel — the hostile route really isn't there, the other route really is intact.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from typing import Any

import pytest

from routevpn.api import naming
from routevpn.dataplane import safety
from routevpn.dataplane.netlink import NetlinkAdapter
from routevpn.dataplane.plan import ConnPlan, LinkPlan, PskCredential, RoutePlan, Secret, TunnelPlan
from routevpn.dataplane.real import _host_facts
from support.dataplane import NetnsCallError, in_netns
from support.netns import Netns

pytestmark = pytest.mark.netns

NET = ipaddress.ip_network
IP = ipaddress.ip_address


def owned_bridge(ns: Netns, name: str, ref_ns: str, ref_name: str) -> None:
    """A link that looks like one routevpn made for `ref_ns/ref_name` (its alias says so);
    this kernel has no VTI, and nothing here depends on the link kind."""
    ns.ip("link", "add", name, "type", "bridge")
    ns.ip("link", "set", name, "alias", naming.link_alias(ref_ns, ref_name), "up")


def vti_plan(ref_name: str, ifname: str) -> TunnelPlan:
    link = LinkPlan(
        name=ifname,
        kind="vti",
        alias=naming.link_alias("site", ref_name),
        local=IP("192.0.2.1"),
        remote=IP("198.51.100.1"),
        key=4096,
    )
    conn = ConnPlan(
        name=naming.conn_name("site", ref_name),
        local_addrs=("192.0.2.1",),
        remote_addrs=("198.51.100.1",),
        local_id="node",
        remote_id="peer",
    )
    return TunnelPlan(ref=f"site/{ref_name}", conn=conn, auth=PskCredential(Secret("x")), link=link)


def _node(ns: Netns) -> None:
    """A node: an uplink with its own address and default route, one tunnel link."""
    ns.ip("link", "add", "uplink0", "type", "bridge")  # no dummy module here
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "uplink0")
    ns.ip("link", "set", "uplink0", "up")
    ns.ip("route", "add", "default", "via", "192.0.2.254", "metric", "100")
    owned_bridge(ns, "rv0", "site", "a")
    ns.ip("addr", "add", "169.254.10.1/30", "dev", "rv0")


def routes(ns: Netns, *args: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(ns.ip("-j", *args, "route", "show", "table", "all"))
    return out


async def _check_and_apply(plan: TunnelPlan) -> list[str]:
    """What RealDriver.apply does before charon: check, then (only if clean) addresses and
    routes on the tunnel's link (a bridge stands in for it: this kernel has no VTI)."""
    async with NetlinkAdapter() as nl:
        addrs, host_routes = _host_facts(plan, await nl.observe_for(plan))
        findings = safety.check(plan, addrs, host_routes)
        if not findings:
            index = (await nl._link_by_name("rv0")).index  # type: ignore[union-attr]
            await nl.ensure_addresses(plan.ref, index, plan.addresses)
            await nl.ensure_routes(plan.ref, index, plan.routes)
        return [f"{f.reason}: {f.message}" for f in findings]


def plan_with(*routes_: RoutePlan, inside: str = "169.254.10.1/30") -> TunnelPlan:
    base = vti_plan("a", "rv0")
    return replace(base, addresses=(ipaddress.ip_interface(inside),), routes=routes_)


HOSTILE = {
    "default-route-at-metric-0-beats-the-node's": (
        plan_with(RoutePlan(NET("0.0.0.0/0"), "rv0", via=IP("169.254.10.2"))),
        "ProtectedRoute",
        "outrank the node's own route",
    ),
    "/32-to-the-node's-own-address": (
        plan_with(RoutePlan(NET("192.0.2.1/32"), "rv0")),
        "ProtectedRoute",
        "node's own address 192.0.2.1",
    ),
    "route-in-the-local-table": (
        plan_with(RoutePlan(NET("203.0.113.0/24"), "rv0", table=255)),
        "ProtectedRoute",
        "table 255 is the kernel's own",
    ),
    "route-to-cloud-metadata": (
        plan_with(RoutePlan(NET("169.254.169.254/32"), "rv0")),
        "ProtectedRoute",
        "never routed into a tunnel",
    ),
    "multicast-route": (
        plan_with(RoutePlan(NET("224.0.0.0/4"), "rv0")),
        "ProtectedRoute",
        "never routed into a tunnel",
    ),
    "inside-network-holding-the-node's-address": (
        plan_with(inside="192.0.2.100/24"),
        "AddressConflict",
        "holds the node's address 192.0.2.1",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_plan_is_refused_and_nothing_reaches_the_kernel(node_ns: Netns, case: str) -> None:
    _node(node_ns)
    before = routes(node_ns) + routes(node_ns, "-6")
    plan, reason, fragment = HOSTILE[case]
    findings = in_netns(node_ns, _check_and_apply, plan)
    assert any(f.startswith(reason) and fragment in f for f in findings), findings
    assert routes(node_ns) + routes(node_ns, "-6") == before
    assert not [r for r in routes(node_ns) if r.get("protocol") == str(naming.ROUTE_PROTOCOL)]
    assert "default via 192.0.2.254 dev uplink0 metric 100" in node_ns.ip("route", "show")


async def _install(ref: str, route: RoutePlan) -> None:
    async with NetlinkAdapter() as nl:
        index = (await nl._link_by_name(route.dev)).index  # type: ignore[union-attr]
        await nl.ensure_routes(ref, index, [route])


async def _takeover(route: RoutePlan) -> str:
    async with NetlinkAdapter() as nl:
        index = (await nl._link_by_name("rv1")).index  # type: ignore[union-attr]
        try:
            await nl.ensure_routes("other/b", index, [route])
        except Exception as e:
            # Its own (empty) wish list must not remove the other tunnel's route either.
            await nl.ensure_routes("other/b", index, [])
            return type(e).__name__
        return "replaced"


def test_another_tunnels_route_is_neither_taken_over_nor_removed(node_ns: Netns) -> None:
    _node(node_ns)
    theirs = RoutePlan(NET("203.0.113.0/24"), "rv0", via=IP("169.254.10.2"))
    in_netns(node_ns, _install, "site/a", theirs)
    owned_bridge(node_ns, "rv1", "other", "b")
    node_ns.ip("addr", "add", "169.254.20.1/30", "dev", "rv1")
    before = node_ns.ip("route", "show", "203.0.113.0/24")
    assert "dev rv0" in before and f"proto {naming.ROUTE_PROTOCOL}" in before
    mine = RoutePlan(NET("203.0.113.0/24"), "rv1", via=IP("169.254.20.2"))
    assert in_netns(node_ns, _takeover, mine) == "RouteNotOwnedError"
    assert node_ns.ip("route", "show", "203.0.113.0/24") == before


async def _claim_link(name: str) -> str:
    async with NetlinkAdapter() as nl:
        plan = vti_plan("a", name)
        assert plan.link is not None
        try:
            await nl.ensure_link(plan.ref, plan.link)
        except Exception as e:
            return type(e).__name__
        return "claimed"


@pytest.mark.parametrize("name", ["lo", "uplink0"])
def test_a_node_interface_name_is_never_taken_over(node_ns: Netns, name: str) -> None:
    _node(node_ns)
    before = node_ns.ip("-o", "link", "show", name)
    try:
        got = in_netns(node_ns, _claim_link, name)
    except NetnsCallError as e:
        got = e.type_name
    assert got == "LinkNotOwnedError"
    assert node_ns.ip("-o", "link", "show", name) == before
