"""Which replica acts: the Lease election (routevpn.kube.lease) and the operator's use of it.

Every candidate gets a fake clock and a view of one in-memory Lease (resourceVersions,
409s, an API server that can be cut off per candidate): time moves only when a test
moves it, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

import pytest
from kubernetes import client
from pydantic import TypeAdapter

from routevpn.controller import leader
from routevpn.controller.metrics import REGISTRY
from routevpn.kube.lease import LeaderElector, LeaseConflictError, LeaseRecord, Timings
from routevpn.kube.lease_store import lease_body, microtime

T = TypeVar("T")
EPOCH = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
TIMINGS = Timings()  # client-go's: 15 s lease, 10 s renew deadline, 2 s retry period


class Clock:
    """Monotonic seconds moved by hand; a wall clock `skew` seconds off everyone else's."""

    def __init__(self, skew: float = 0.0) -> None:
        self.t = 1000.0
        self.skew = skew

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t - 1000.0 + self.skew)

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


class Server:
    """One Lease as the API server keeps it: resourceVersion bumped on every write."""

    def __init__(self) -> None:
        self.lease: LeaseRecord | None = None
        self.version = 0
        self.writes = 0

    def write(self, record: LeaseRecord) -> LeaseRecord:
        self.version += 1
        self.writes += 1
        self.lease = replace(record, resource_version=str(self.version))
        return self.lease


class Store:
    """A candidate's connection to the Server; `down` makes every call fail, `lose_answer`
    applies the next write but fails to say so. Each call yields once first, so candidates
    stepping together interleave as they would on a real API server."""

    def __init__(self, server: Server) -> None:
        self.ref = "routevpn/routevpn-operator"
        self.server = server
        self.down = False
        self.lose_answer = False

    async def _reach(self) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise OSError("connection refused")

    async def get(self) -> LeaseRecord | None:
        await self._reach()
        return self.server.lease

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        await self._reach()
        if self.server.lease is not None:
            raise LeaseConflictError(self.ref)
        return self._answer(self.server.write(record))

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        await self._reach()
        current = self.server.lease
        if current is None:
            raise LookupError("404")
        if record.resource_version != current.resource_version:
            raise LeaseConflictError(self.ref)
        return self._answer(self.server.write(record))

    def _answer(self, written: LeaseRecord) -> LeaseRecord:
        if self.lose_answer:
            self.lose_answer = False
            raise TimeoutError("read timed out")
        return written


class World:
    """Candidates on one Lease, each with its own store and its own clock (moved together
    by `advance`; their wall clocks may disagree)."""

    def __init__(self) -> None:
        self.server = Server()
        self.stores: dict[str, Store] = {}
        self.clocks: dict[str, Clock] = {}
        self.electors: dict[str, LeaderElector] = {}

    def candidate(self, name: str, skew: float = 0.0) -> LeaderElector:
        clock = Clock(skew)
        if self.clocks:  # joins now: same monotonic reading as the others
            clock.t = next(iter(self.clocks.values())).t
        self.stores[name] = Store(self.server)
        self.clocks[name] = clock
        self.electors[name] = e = LeaderElector(self.stores[name], name, TIMINGS, clock)
        return e

    def advance(self, seconds: float) -> None:
        for clock in self.clocks.values():
            clock.t += seconds

    def step(self, *names: str) -> None:
        """One attempt of each named candidate (tolerating API errors, as `run` does)."""

        async def one(name: str) -> None:
            with contextlib.suppress(OSError):
                await self.electors[name].step()

        run(lambda: asyncio.gather(*(one(n) for n in names)))

    def active(self) -> set[str]:
        return {n for n, e in self.electors.items() if e.active}


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def body() -> T:
        return await make()

    return asyncio.run(body())


def test_a_free_lease_is_taken_at_the_first_attempt() -> None:
    w = World()
    w.candidate("a")
    w.step("a")
    assert w.active() == {"a"}
    lease = w.server.lease
    assert lease is not None
    assert (lease.holder, lease.duration_seconds, lease.transitions) == ("a", 15, 0)
    assert lease.acquire_time == lease.renew_time == EPOCH


def test_the_leader_renews_keeping_acquire_time_and_stays_active() -> None:
    w = World()
    w.candidate("a")
    w.step("a")
    for _ in range(20):  # 40 s of renewals, one every retry period
        w.advance(TIMINGS.retry_period)
        w.step("a")
        assert w.active() == {"a"}
    lease = w.server.lease
    assert lease is not None and lease.acquire_time == EPOCH
    assert lease.renew_time == EPOCH + timedelta(seconds=40)
    assert lease.transitions == 0 and w.server.writes == 21


def test_a_standby_never_takes_a_live_lease() -> None:
    w = World()
    # The leader's wall clock is an hour behind the standby's: to the standby its
    # renewTime looks long expired, which must not matter (only when the standby saw the
    # Lease change counts).
    w.candidate("b", skew=-3600.0)
    w.step("b")
    w.candidate("c", skew=+3600.0)
    for _ in range(30):
        w.step("b", "c")
        assert w.active() == {"b"}
        w.advance(TIMINGS.retry_period)
    lease = w.server.lease
    assert lease is not None and lease.holder == "b" and lease.transitions == 0


def test_an_expired_lease_is_taken_after_a_lease_duration_of_our_own_clock() -> None:
    w = World()
    w.candidate("a")
    w.step("a")
    w.stores["a"].down = True  # the leader dies (SIGKILL): nothing renews the Lease
    w.advance(60.0)  # long before the standby starts
    w.candidate("b")
    w.step("b")  # first sight: the Lease was written a minute ago, by the writer's clock
    w.advance(TIMINGS.lease_duration - 0.5)
    w.step("b")
    assert w.active() == set(), "taken before a whole lease duration since b saw it"
    w.advance(1.0)
    w.step("b")
    assert w.active() == {"b"}
    lease = w.server.lease
    assert lease is not None and (lease.holder, lease.transitions) == ("b", 1)
    assert lease.acquire_time == lease.renew_time == EPOCH + timedelta(seconds=75.5)


def test_a_leader_that_cannot_renew_stops_before_anyone_else_can_start() -> None:
    w = World()
    w.candidate("a")
    w.candidate("b")
    w.step("a")
    w.step("b")
    w.stores["a"].down = True  # the leader is cut off from the API server
    seen: list[tuple[float, frozenset[str]]] = []
    for tenth in range(1, 200):  # 20 s in tenths; each candidate tries every retry period
        w.advance(0.1)
        if tenth % 20 == 0:
            w.step("a", "b")
        seen.append((tenth / 10, frozenset(w.active())))
    assert all(len(act) <= 1 for _, act in seen), "two replicas acted at once"
    a_until = max(t for t, act in seen if "a" in act)
    b_from = min(t for t, act in seen if "b" in act)
    # a stops by itself at its renew deadline (no attempt needed: the clock decides)...
    assert TIMINGS.renew_deadline - 0.15 < a_until < TIMINGS.renew_deadline + 0.05
    # ...and b starts a whole lease duration after it last saw a's renewal.
    assert b_from >= TIMINGS.lease_duration
    assert b_from - a_until >= TIMINGS.lease_duration - TIMINGS.renew_deadline


def test_a_leader_cut_off_for_a_while_resumes_when_nobody_took_over() -> None:
    w = World()
    a = w.candidate("a")
    w.step("a")
    w.stores["a"].down = True
    w.advance(TIMINGS.renew_deadline + 1)
    assert not a.active
    w.stores["a"].down = False
    w.step("a")  # the renewal against a's own resourceVersion proves nobody took over
    assert a.active and not a.over


def test_a_leader_learns_of_a_take_over_from_the_409_and_never_leads_again() -> None:
    w = World()
    a = w.candidate("a")
    w.candidate("b")
    w.step("a")
    w.step("b")
    w.stores["a"].down = True
    w.advance(TIMINGS.lease_duration + 1)
    w.step("b")
    assert w.active() == {"b"}
    w.stores["a"].down = False
    w.step("a")
    assert a.over and not a.active
    w.advance(TIMINGS.retry_period)
    w.step("a", "b")
    assert w.active() == {"b"}
    lease = w.server.lease
    assert lease is not None and lease.holder == "b"


def test_of_two_standbys_racing_for_an_expired_lease_the_409_loses() -> None:
    w = World()
    w.candidate("a")
    w.candidate("b")
    w.candidate("c")
    w.step("a")
    w.step("b", "c")
    w.stores["a"].down = True
    w.advance(TIMINGS.lease_duration + 1)
    w.step("b", "c")  # both read the same expired Lease; both replace it; one gets 409
    assert len(w.active()) == 1
    lease = w.server.lease
    assert lease is not None and w.active() == {lease.holder} and lease.transitions == 1
    loser = w.electors[({"b", "c"} - {lease.holder}).pop()]
    assert not loser.over  # a standby still: the winner may die too


def test_a_renewal_whose_answer_was_lost_is_still_ours() -> None:
    w = World()
    a = w.candidate("a")
    w.step("a")
    w.advance(TIMINGS.retry_period)
    w.stores["a"].lose_answer = True
    w.step("a")  # the write landed, a never heard: its resourceVersion is stale now
    w.advance(TIMINGS.retry_period)
    w.step("a")  # 409, then the Lease still names a with the same transitions: keep it
    w.advance(TIMINGS.retry_period)
    w.step("a")
    assert a.active and not a.over
    lease = w.server.lease
    assert lease is not None and lease.holder == "a" and lease.transitions == 0


def test_release_hands_over_at_the_standbys_next_attempt() -> None:
    w = World()
    a = w.candidate("a")
    w.candidate("b")
    w.step("a")
    w.step("b")
    run(a.release)
    assert not a.active and a.over
    lease = w.server.lease
    assert lease is not None and lease.holder == "" and lease.duration_seconds == 1
    w.step("b")  # no time has passed
    assert w.active() == {"b"}
    lease = w.server.lease
    assert lease is not None and (lease.holder, lease.transitions) == ("b", 1)


def test_wait_returns_once_the_lease_is_taken() -> None:
    w = World()
    a = w.candidate("a")

    async def body() -> bool:
        waiter = asyncio.create_task(a.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        await a.step()
        await asyncio.wait_for(waiter, 5)
        return a.active

    assert run(body)


def test_run_returns_once_another_replica_took_over() -> None:
    w = World()
    a = w.candidate("a")
    w.step("a")
    lease = w.server.lease
    assert lease is not None
    w.server.write(replace(lease, holder="b", transitions=1))
    run(a.run)  # returns without any clock advance: the first renewal meets the 409
    assert a.over and not a.active


def test_lead_reports_a_lost_lease_and_the_gauge_follows_the_clock() -> None:
    w = World()
    a = w.candidate("a")
    lost: list[bool] = []

    async def body() -> None:
        task = asyncio.create_task(leader.lead(a, lambda: lost.append(True)))
        await a.wait()
        assert REGISTRY.get_sample_value("routevpn_operator_leader") == 1.0
        w.clocks["a"].t += TIMINGS.renew_deadline  # stalled: no attempt, the clock decides
        assert REGISTRY.get_sample_value("routevpn_operator_leader") == 0.0
        lease = w.server.lease
        assert lease is not None
        w.server.write(replace(lease, holder="b", transitions=1))
        await asyncio.wait_for(task, 5)

    run(body)
    assert lost == [True]


def test_hand_over_releases_once_writes_in_flight_are_done() -> None:
    w = World()
    a = w.candidate("a")
    w.step("a")
    pool = ThreadPoolExecutor(2)
    pool.submit(lambda: None).result()
    run(lambda: leader.hand_over(a, pool, drain=30))
    lease = w.server.lease
    assert lease is not None and lease.holder == ""


def test_hand_over_keeps_the_lease_while_a_write_hangs() -> None:
    w = World()
    a = w.candidate("a")
    w.step("a")
    pool = ThreadPoolExecutor(2)
    hung = threading.Event()
    pool.submit(hung.wait)
    try:
        run(lambda: leader.hand_over(a, pool, drain=0.01))
    finally:
        hung.set()
    lease = w.server.lease
    assert lease is not None and lease.holder == "a"


def test_timings_keep_the_deadline_inside_the_lease() -> None:
    for bad in ((15, 15.0, 2.0), (15, 10.0, 10.0), (15, 20.0, 2.0), (15, 10.0, 0.0)):
        with pytest.raises(ValueError, match="renew deadline"):
            Timings(*bad)


def test_microtime_has_six_fraction_digits_and_z() -> None:
    assert microtime(EPOCH) == "2026-01-01T12:00:00.000000Z"
    plus2 = datetime(2026, 1, 1, 16, 0, 0, 1234, tzinfo=timezone(timedelta(hours=2)))
    assert microtime(plus2) == "2026-01-01T14:00:00.001234Z"


def test_the_lease_goes_on_the_wire_as_micro_times_through_the_typed_client() -> None:
    # The client validates every body into its model and sends datetimes with isoformat(),
    # which would drop a zero fraction (the API server refuses MicroTimes without one).
    record = LeaseRecord("a", 15, EPOCH, EPOCH + timedelta(microseconds=5), 3, "42")
    body = lease_body("routevpn", "routevpn-operator", record)
    model = TypeAdapter(client.V1Lease).validate_python(body)
    sent = client.ApiClient().sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
    assert sent == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "routevpn-operator", "namespace": "routevpn", "resourceVersion": "42"},
        "spec": {
            "holderIdentity": "a",
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-01-01T12:00:00.000000Z",
            "renewTime": "2026-01-01T12:00:00.000005Z",
            "leaseTransitions": 3,
        },
    }
    released = lease_body("routevpn", "routevpn-operator", replace(record, holder=""))
    assert "holderIdentity" not in released["spec"]


def test_release_after_a_renewal_cut_short_still_frees_the_lease() -> None:
    w = World()
    a = w.candidate("a")
    w.candidate("b")
    w.step("a")
    w.step("b")
    w.advance(TIMINGS.retry_period)
    w.stores["a"].lose_answer = True  # the stop cut the renewal short: it landed unseen
    w.step("a")
    run(a.release)
    lease = w.server.lease
    assert lease is not None and lease.holder == ""
    w.step("b")
    assert w.active() == {"b"}


def test_release_leaves_a_lease_taken_over_meanwhile_alone() -> None:
    w = World()
    a = w.candidate("a")
    w.step("a")
    lease = w.server.lease
    assert lease is not None
    w.server.write(replace(lease, holder="b", transitions=1))
    run(a.release)
    lease = w.server.lease
    assert lease is not None and (lease.holder, lease.transitions) == ("b", 1)
