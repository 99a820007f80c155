"""Route loops and address conflicts are found before anything is applied."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from routevpn.dataplane.plan import ConnPlan, LinkPlan, PskCredential, RoutePlan, Secret, TunnelPlan
from routevpn.dataplane.safety import HostAddress, HostRoute, check

net = ipaddress.ip_network
ip = ipaddress.ip_address
iface = ipaddress.ip_interface

LINK = LinkPlan(
    name="vti4096",
    kind="vti6",
    alias="routevpn:prod/site-b",
    local=ip("2001:db8:0:1::1"),
    remote=ip("2001:db8:0:2::1"),
    key=4096,
)
CONN = ConnPlan(
    name="routevpn.prod.site-b",
    local_addrs=("2001:db8:0:1::1",),
    remote_addrs=("2001:db8:0:2::1", "site-b.example"),
    local_id="a",
    remote_id="b",
)


def plan(routes: tuple[RoutePlan, ...] = (), addresses: tuple[object, ...] = ()) -> TunnelPlan:
    return TunnelPlan(
        ref="prod/site-b",
        conn=CONN,
        auth=PskCredential(Secret("x")),
        link=LINK,
        routes=routes,
        addresses=addresses,  # type: ignore[arg-type]
    )


DEFAULT6 = RoutePlan(net("::/0"), "vti4096", via=ip("2001:db8:100::1"))


def test_default_route_into_the_tunnel_without_a_way_out_is_a_loop() -> None:
    findings = check(plan((DEFAULT6,)), host_routes=[HostRoute(net("::/0"), "eth0", 1024)])
    assert [f.reason for f in findings] == ["RouteLoop"]
    assert "prod/site-b" in findings[0].message and "2001:db8:0:2::1" in findings[0].message


def test_more_specific_route_to_the_peer_outside_the_tunnel_breaks_the_loop() -> None:
    outside = [HostRoute(net("2001:db8:0:2::/64"), "eth0", 1024)]
    assert check(plan((DEFAULT6,)), host_routes=outside) == []


def test_equal_prefix_outside_wins_only_with_a_better_metric() -> None:
    route = replace(DEFAULT6, metric=100)
    assert check(plan((route,)), host_routes=[HostRoute(net("::/0"), "eth0", 50)]) == []
    assert check(plan((route,)), host_routes=[HostRoute(net("::/0"), "eth0", 200)]) != []


def test_routes_on_the_tunnel_itself_or_other_tables_do_not_rescue() -> None:
    host = [
        HostRoute(net("2001:db8:0:2::/64"), "vti4096", 1),
        HostRoute(net("2001:db8:0:2::/64"), "eth0", 1, table=100),
    ]
    assert [f.reason for f in check(plan((DEFAULT6,)), host_routes=host)] == ["RouteLoop"]


def test_inside_prefix_covering_the_peer_is_a_loop() -> None:
    findings = check(plan(addresses=(iface("2001:db8:0:2::5/64"),)))
    assert [f.reason for f in findings] == ["RouteLoop"]
    assert "inside prefix" in findings[0].message


def test_other_family_and_other_tables_are_not_judged() -> None:
    v4 = RoutePlan(net("0.0.0.0/0"), "vti4096", via=ip("192.0.2.1"))
    in_table = replace(DEFAULT6, table=100)
    assert check(plan((v4, in_table))) == []


def test_inside_address_already_on_another_interface_is_a_conflict() -> None:
    host = [
        HostAddress("eth1", iface("2001:db8:100::/127")),
        HostAddress("vti4096", iface("2001:db8:100::1/127")),  # our own link: fine
    ]
    findings = check(
        plan(addresses=(iface("2001:db8:100::/127"), iface("2001:db8:100::1/127"))),
        host_addresses=host,
    )
    assert [f.reason for f in findings] == ["AddressConflict"]
    assert "eth1" in findings[0].message and "prod/site-b" in findings[0].message


def test_policy_mode_has_nothing_to_check() -> None:
    p = TunnelPlan(ref="prod/p", conn=CONN, auth=PskCredential(Secret("x")))
    assert check(p, [HostAddress("eth0", iface("2001:db8:0:2::1/64"))]) == []
