"""The in-memory driver keeps the real driver's contract for the agent's unit tests."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace

from routevpn.dataplane.driver import Driver, FakeDriver, RealDriver, conn_of
from routevpn.dataplane.plan import ConnPlan, LinkPlan, PskAuth, RoutePlan, Secret, TunnelPlan
from routevpn.dataplane.safety import HostRoute

_REAL: type[Driver] = RealDriver  # type-checked: the real driver meets the Protocol

LINK = LinkPlan(
    name="vti4096",
    kind="vti",
    alias="routevpn:prod/a",
    local=ipaddress.ip_address("192.0.2.1"),
    remote=ipaddress.ip_address("198.51.100.2"),
    key=4096,
)
PLAN = TunnelPlan(
    ref="prod/a",
    conn=ConnPlan(
        name="routevpn.prod.a",
        local_addrs=("192.0.2.1",),
        remote_addrs=("198.51.100.2",),
        local_id="a",
        remote_id="b",
    ),
    auth=PskAuth(Secret("x")),
    link=LINK,
    addresses=(ipaddress.ip_interface("169.254.10.1/30"),),
    routes=(RoutePlan(ipaddress.ip_network("203.0.113.0/24"), "vti4096"),),
)


def as_driver(d: Driver) -> Driver:
    """mypy checks here that both implementations satisfy the Protocol."""
    return d


def test_conn_of_matches_naming() -> None:
    assert conn_of("prod/a") == "routevpn.prod.a"
    assert conn_of("prod/a.b") == "routevpn.prod.a.b"


def test_second_apply_reports_zero_changes_and_a_change_is_seen() -> None:
    async def body() -> None:
        d = as_driver(FakeDriver())
        first = await d.apply(PLAN)
        assert first.applied and first.changed
        assert {c.what for c in first.changes} == {
            "link", "address", "route", "sysctl", "secret", "conn"
        }  # fmt: skip
        assert (await d.apply(PLAN)).changes == ()
        moved = replace(PLAN, routes=(replace(PLAN.routes[0], metric=5),))
        assert [c.what for c in (await d.apply(moved)).changes] == ["route"]
        new_psk = replace(PLAN, auth=PskAuth(Secret("y")))
        assert [c.what for c in (await d.apply(new_psk)).changes] == ["route", "secret"]

    asyncio.run(body())


def test_findings_stop_the_apply_and_nothing_is_recorded() -> None:
    async def body() -> None:
        d = FakeDriver(host_routes=[HostRoute(ipaddress.ip_network("0.0.0.0/0"), "eth0", 100)])
        looping = replace(
            PLAN, routes=(RoutePlan(ipaddress.ip_network("0.0.0.0/0"), "vti4096", metric=1),)
        )
        result = await d.apply(looping)
        assert not result.applied and [f.reason for f in result.findings] == ["RouteLoop"]
        assert d.plans == {}

    asyncio.run(body())


def test_failure_injection_remove_observe_and_gc() -> None:
    async def body() -> None:
        d = FakeDriver(fail={"prod/bad": RuntimeError("boom")})
        try:
            await d.apply(replace(PLAN, ref="prod/bad"))
        except RuntimeError as e:
            assert str(e) == "boom"
        else:
            raise AssertionError("injected failure not raised")
        await d.apply(PLAN)
        other = replace(PLAN, ref="prod/b", conn=replace(PLAN.conn, name="routevpn.prod.b"))
        await d.apply(other)
        facts = await d.observe()
        assert sorted(facts.ipsec.conns) == ["routevpn.prod.a", "routevpn.prod.b"]
        gone = await d.garbage_collect([PLAN])
        assert [str(c) for c in gone] == ["prod/b: conn unloaded routevpn.prod.b"]
        assert await d.garbage_collect([PLAN]) == []
        assert [c.ref for c in await d.remove("prod/a")] == ["prod/a"]
        assert await d.remove("prod/a") == []

    asyncio.run(body())
