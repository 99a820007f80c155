"""The agent's liveness Lease: created once, renewed in place, never fatal when refused."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from routevpn.agent.liveness import LivenessLease, lease_body, renewed
from routevpn.api import naming
from routevpn.kube.client import ConflictError, Obj

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeLeases:
    """Leases in memory, with resourceVersions checked as the API server does."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.writes = 0
        self.fail_next: Exception | None = None
        #: Set once `stored_target` objects have been stored.
        self.stored_enough = asyncio.Event()
        self.stored_target = 0
        self._rv = 0

    def _store(self, body: Mapping[str, Any]) -> Obj:
        self._rv += 1
        obj = copy.deepcopy(dict(body))
        obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self._rv)}
        self.objects[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        if self.stored_target and self._rv >= self.stored_target:
            self.stored_enough.set()
        return copy.deepcopy(obj)

    async def get_lease(self, namespace: str, name: str) -> Obj | None:
        got = self.objects.get((namespace, name))
        return copy.deepcopy(got) if got is not None else None

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> Obj:
        self.writes += 1
        if self.fail_next is not None:
            e, self.fail_next = self.fail_next, None
            raise e
        if (namespace, body["metadata"]["name"]) in self.objects:
            raise ConflictError("409 AlreadyExists")
        return self._store(body)

    async def replace_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> Obj | None:
        self.writes += 1
        have = self.objects.get((namespace, name))
        if have is None:
            return None
        if have["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise ConflictError("409 Conflict")
        return self._store(body)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _spec(api: FakeLeases, node: str = "node-a") -> dict[str, Any]:
    spec: dict[str, Any] = api.objects[("routevpn", naming.agent_lease_name(node))]["spec"]
    return spec


def test_first_renewal_creates_the_lease_then_renews_it_in_place() -> None:
    api, clock = FakeLeases(), Clock()
    lease = LivenessLease(api, "node-a", "routevpn", clock=clock)
    asyncio.run(lease.renew())
    obj = api.objects[("routevpn", "routevpn-agent-node-a")]
    assert obj["metadata"]["labels"] == {naming.AGENT_LEASE_LABEL: naming.AGENT_LEASE_VALUE}
    assert obj["spec"] == {
        "holderIdentity": "node-a",
        "leaseDurationSeconds": 40,
        "acquireTime": "2026-01-01T00:00:00.000000Z",
        "renewTime": "2026-01-01T00:00:00.000000Z",
    }
    clock.now = T0 + timedelta(seconds=10)
    asyncio.run(lease.renew())
    assert _spec(api)["renewTime"] == "2026-01-01T00:00:10.000000Z"
    assert _spec(api)["acquireTime"] == "2026-01-01T00:00:00.000000Z"
    # One write per renewal: no read before each (the last written object is the guard).
    assert api.writes == 2 and lease.renewals == 2


def test_a_restarted_agent_takes_up_its_existing_lease() -> None:
    api, clock = FakeLeases(), Clock()
    asyncio.run(LivenessLease(api, "node-a", "routevpn", clock=clock).renew())
    clock.now = T0 + timedelta(seconds=25)
    again = LivenessLease(api, "node-a", "routevpn", clock=clock)
    asyncio.run(again.renew())
    assert _spec(api)["renewTime"] == "2026-01-01T00:00:25.000000Z"
    assert api.writes == 2  # the second agent read, then replaced: no create


def test_a_conflict_rereads_and_the_next_renewal_works() -> None:
    api, clock = FakeLeases(), Clock()
    lease = LivenessLease(api, "node-a", "routevpn", clock=clock)
    asyncio.run(lease.renew())
    other = copy.deepcopy(api.objects[("routevpn", "routevpn-agent-node-a")])
    api._store(other)  # another writer: our resourceVersion is stale now
    with pytest.raises(ConflictError):
        asyncio.run(lease.renew())
    clock.now = T0 + timedelta(seconds=3)
    asyncio.run(lease.renew())
    assert _spec(api)["renewTime"] == "2026-01-01T00:00:03.000000Z"


def test_a_deleted_lease_is_created_again() -> None:
    api = FakeLeases()
    lease = LivenessLease(api, "node-a", "routevpn", clock=Clock())
    asyncio.run(lease.renew())
    api.objects.clear()
    with pytest.raises(LookupError):
        asyncio.run(lease.renew())
    asyncio.run(lease.renew())
    assert ("routevpn", "routevpn-agent-node-a") in api.objects


def test_renewed_takes_over_a_lease_held_by_another_identity() -> None:
    seen = lease_body("node-b", "routevpn", T0, 40)
    seen["spec"]["holderIdentity"] = "someone-else"
    got = renewed(seen, "node-b", T0 + timedelta(seconds=1), 40)
    assert got["spec"]["holderIdentity"] == "node-b"
    assert got["spec"]["leaseTransitions"] == 1
    assert got["spec"]["acquireTime"] == got["spec"]["renewTime"]


def test_run_keeps_renewing_through_failures() -> None:
    api = FakeLeases()
    api.fail_next = RuntimeError("API server down")
    lease = LivenessLease(api, "node-a", "routevpn", period=0.01, clock=Clock())

    async def until_renewed() -> None:
        api.stored_enough = asyncio.Event()  # of this loop
        api.stored_target = 2
        task = asyncio.create_task(lease.run())
        try:
            async with asyncio.timeout(10):
                await api.stored_enough.wait()
        finally:
            task.cancel()

    asyncio.run(until_renewed())
    assert lease.renewals >= 2
    assert api.writes >= 3  # the failed create, the create, one renewal
