"""A pass reads the health probes' verdict (agent.reconciler with agent.prober): a
failing probe demotes a tunnel whose SA is up while its sibling carries, the condition
says so, and the tunnel's target is what the probe set is asked to probe."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import test_reconciler as tr  # type: ignore[import-not-found]  # tests/unit/agent is no package

from routevpn.agent.probe import Target
from routevpn.agent.prober import Key, ProbeSet

pytestmark = pytest.mark.unit


class FakeProbes(ProbeSet):
    """The probe set without sockets: the test says which tunnels fail."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: dict[Key, Target | None] = {}
        self.failed: frozenset[Key] = frozenset()

    def ensure(self, key: Key, target: Target | None) -> None:
        self.targets[key] = target

    def failing(self) -> frozenset[Key]:
        return self.failed

    def note(self, key: Key) -> str:
        return f"health check of {key[1]} unanswered"


def conditions(api: Any, key: Key) -> dict[str, str]:
    status = api.objects[key].get("status") or {}
    return {c["type"]: c["message"] for c in status.get("conditions", [])}


def test_a_failing_probe_demotes_the_tunnel_and_its_first_answer_promotes_it() -> None:
    rec, api, drv = tr._pair(up=[tr.KEY, tr.BACKUP_KEY])
    check = {"address": "2001:db8:100::1", "interval": "2s", "failures": 4}
    for key in (tr.KEY, tr.BACKUP_KEY):
        rec.state.tunnels[key]["spec"]["healthCheck"] = check
    probes = FakeProbes()
    rec.probes = probes
    asyncio.run(rec.run_pass([tr.KEY]))
    assert probes.targets[tr.KEY] == Target("vti1", "2001:db8:100::", "2001:db8:100::1", 2.0, 4)
    assert tr._route_states(api, tr.KEY) == [("Active", "SaInstalled", 100)]
    probes.failed = frozenset({tr.KEY})  # what the prober's on_change marks for a pass
    asyncio.run(rec.run_pass([tr.KEY]))
    assert tr._metrics(drv, tr.KEY) == [100 + 2**31]
    assert tr._route_states(api, tr.KEY) == [("Demoted", "ProbeFailed", 100 + 2**31)]
    assert tr._route_states(api, tr.BACKUP_KEY) == [("Active", "SaInstalled", 200)]
    assert "health check of site-b unanswered" in conditions(api, tr.KEY)["RoutesInstalled"]
    probes.failed = frozenset()
    asyncio.run(rec.run_pass([tr.KEY]))
    assert tr._route_states(api, tr.KEY) == [("Active", "SaInstalled", 100)]
    assert "health check" not in conditions(api, tr.KEY)["RoutesInstalled"]


def test_a_failing_probe_of_a_tunnel_whose_sa_is_down_changes_nothing() -> None:
    rec, api, _drv = tr._pair(up=[tr.BACKUP_KEY])
    probes = FakeProbes()
    probes.failed = frozenset({tr.KEY})
    rec.probes = probes
    asyncio.run(rec.run_pass([tr.KEY]))
    assert tr._route_states(api, tr.KEY) == [("Demoted", "SaDown", 100 + 2**31)]
    assert probes.targets[tr.KEY] is None  # no healthCheck in its spec: nothing probed
