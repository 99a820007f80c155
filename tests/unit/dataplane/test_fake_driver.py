"""The in-memory driver keeps the real driver's contract for the agent's unit tests."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from routevpn.dataplane.driver import Driver, conn_of
from routevpn.dataplane.ipsec import IpsecAdapter
from routevpn.dataplane.plan import ConnPlan, LinkPlan, PskCredential, RoutePlan, Secret, TunnelPlan
from routevpn.dataplane.real import RealDriver
from routevpn.dataplane.safety import HostRoute
from support.fakedriver import FakeDriver

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
    auth=PskCredential(Secret("x")),
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
        new_psk = replace(PLAN, auth=PskCredential(Secret("y")))
        assert [c.what for c in (await d.apply(new_psk)).changes] == ["route", "secret"]

    asyncio.run(body())


def test_findings_stop_the_apply_and_nothing_is_recorded() -> None:
    async def body() -> None:
        d = FakeDriver(host_routes=[HostRoute(ipaddress.ip_network("0.0.0.0/0"), "eth0", 100)])
        looping = replace(
            PLAN, routes=(RoutePlan(ipaddress.ip_network("0.0.0.0/0"), "vti4096", metric=1),)
        )
        result = await d.apply(looping)
        # It loops to the peer, and it outranks the node's own default route (metric 100).
        reasons = [f.reason for f in result.findings]
        assert not result.applied and reasons == ["ProtectedRoute", "RouteLoop"]
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


class _Phases:
    """Stands in for an adapter: records the pass boundaries the driver sets."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def begin_pass(self) -> None:
        self.log.append("begin")

    def end_pass(self) -> None:
        self.log.append("end")


def test_real_driver_batch_brackets_both_adapters_even_when_the_pass_fails() -> None:
    nl, ipsec = _Phases(), _Phases()
    d = RealDriver(nl, ipsec)  # type: ignore[arg-type]

    async def body() -> None:
        with pytest.raises(RuntimeError):
            async with d.batch():
                assert nl.log == ipsec.log == ["begin"]
                raise RuntimeError("pass failed")

    asyncio.run(body())
    assert nl.log == ipsec.log == ["begin", "end"]


class _Charon:
    """A VICI command session in memory: counts the list calls a pass makes."""

    def __init__(self) -> None:
        self.generation = 1
        self.conns: set[str] = set()
        self.shared: set[str] = set()
        self.sas: set[str] = set()
        self.asked: list[str] = []

    def call(self, ref: str, what: str, fn: Any) -> Any:
        self.asked.append(what)
        return fn(self)

    def get_conns(self) -> dict[str, Any]:
        return {"conns": sorted(self.conns)}

    def get_shared(self) -> dict[str, Any]:
        return {"keys": sorted(self.shared)}

    def load_shared(self, msg: dict[str, Any]) -> None:
        self.shared.add(str(msg["id"]))

    def load_conn(self, msg: dict[str, Any]) -> None:
        self.conns.update(msg)

    def list_sas(self, filters: dict[str, str] | None) -> list[dict[str, Any]]:
        names = (
            sorted(self.sas) if filters is None else [c for c in self.sas if c == filters["ike"]]
        )
        return [{c: {"uniqueid": "1", "state": "ESTABLISHED"}} for c in names]

    def initiate(self, request: dict[str, str]) -> list[Any]:
        self.sas.add(request["ike"])
        return []


def _plans(n: int) -> list[TunnelPlan]:
    out = []
    for i in range(n):
        conn = replace(PLAN.conn, name=f"routevpn.prod.t{i}")
        out.append(replace(PLAN, ref=f"prod/t{i}", conn=conn))
    return out


def test_a_pass_lists_charon_once_and_keeps_the_listing_current() -> None:
    charon = _Charon()
    ipsec = IpsecAdapter("/nonexistent")
    ipsec._cmd = charon  # type: ignore[assignment]
    plans = _plans(5)

    async def one_pass() -> list[str]:
        charon.asked.clear()
        ipsec.begin_pass()
        try:
            changes = []
            for plan in plans:
                changes += await ipsec.load(plan)
                changes += await ipsec.initiate(plan.conn.name)
        finally:
            ipsec.end_pass()
        return [f"{c.what} {c.action}" for c in changes]

    first = asyncio.run(one_pass())
    assert first.count("conn loaded") == 5 and first.count("ike initiating") == 5
    assert charon.asked.count("get-conns") == 1
    assert charon.asked.count("get-shared") == 1
    assert charon.asked.count("list-sas") == 1
    second = asyncio.run(one_pass())
    assert second == []  # nothing changed: nothing loaded, nothing initiated
    assert sorted(set(charon.asked)) == ["get-conns", "get-shared", "list-sas"]
    assert len(charon.asked) == 3
    # outside a pass every question goes to charon again
    charon.asked.clear()
    asyncio.run(ipsec.load(plans[0]))
    asyncio.run(ipsec.load(plans[1]))
    assert charon.asked.count("get-conns") == 2
