"""The agent's MSS clamp: the node's configured interfaces reach the driver, with the
MTU the plan gives each; nothing when disabled; the set empties with the last tunnel."""

from __future__ import annotations

import asyncio
import copy

import test_reconciler as tr  # type: ignore[import-not-found]  # tests/unit/agent is no package

from routevpn.agent.metrics import Metrics
from routevpn.agent.reconciler import AgentReconciler
from routevpn.agent.settings import AgentSettings
from routevpn.dataplane.errors import DataplaneError
from routevpn.dataplane.facts import Change
from support.fakedriver import FakeDriver


def test_a_configured_tunnels_interface_is_clamped_to_its_mtu() -> None:
    rec, api, drv = tr.setup(tr.tunnel())
    tr.run(rec, api)
    link = drv.plans["prod/site-b"].link
    assert link is not None
    assert drv.clamped == {"vti1": link.mtu}


def test_the_clamp_goes_with_the_last_tunnel() -> None:
    rec, api, drv = tr.setup(tr.tunnel())
    tr.run(rec, api)
    api.objects[tr.KEY]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    rec.state.tunnels[tr.KEY] = api.get(*tr.KEY) or {}
    tr.run(rec, api)
    assert drv.calls[-1] == "remove prod/site-b"
    assert drv.clamped == {}


def test_disabled_clamps_nothing() -> None:
    obj = tr.tunnel()
    api = tr.MemoryApi({tr.KEY: obj})
    drv = FakeDriver(host_routes=[tr.UNDERLAY])
    drv.clamped = {"stale": 1400}  # a table left by an earlier run with the clamp on
    settings = AgentSettings(node=tr.NODE, namespace="routevpn", mss_clamp=False)
    rec = AgentReconciler(settings, api, api, drv, Metrics(tr.NODE))
    rec.state.tunnels[tr.KEY] = copy.deepcopy(obj)
    rec.state.secrets[tr.KEY] = tr.secret()
    tr.run(rec, api)
    assert drv.plans  # the tunnel itself is configured
    assert drv.clamped == {}


class _BrokenNft(FakeDriver):
    async def clamp_mss(self, links: object) -> list[Change]:
        raise DataplaneError("node", "nft: not found")


def test_a_failing_clamp_does_not_stop_the_tunnel() -> None:
    rec, api, drv = tr.setup(tr.tunnel(), _BrokenNft(host_routes=[tr.UNDERLAY]))
    tr.run(rec, api)
    assert rec.clamp.failing
    assert tr.conds(api)["Configured"] == ("True", "Applied")
    assert asyncio.run(rec.clamp.apply(drv)) == []
