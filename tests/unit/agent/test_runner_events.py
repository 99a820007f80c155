"""charon's events counted per tunnel by the agent: rekeys and negotiation failures of
this node's tunnels, nothing for a connection that is not one of them."""

from __future__ import annotations

from typing import Any, cast

import pytest

from routevpn.agent.metrics import Metrics
from routevpn.agent.runner import Agent
from routevpn.agent.settings import AgentSettings
from routevpn.api import naming
from routevpn.dataplane.vici_facts import IpsecEvent
from support.fakedriver import FakeDriver

pytestmark = pytest.mark.unit

MINE = ("prod", "site-b")
NOT_MINE = ("prod", "elsewhere")
AUTH_FAILED = "received AUTHENTICATION_FAILED notify"


def count(m: Metrics, name: str, key: tuple[str, str], **labels: str) -> float | None:
    return m.registry.get_sample_value(
        name, {"namespace": key[0], "name": key[1], "node": "node-a", **labels}
    )


def test_rekeys_and_failures_of_this_nodes_tunnels() -> None:
    metrics = Metrics("node-a")
    agent = Agent(AgentSettings(node="node-a", namespace="routevpn"),
                  cast(Any, None), cast(Any, None), FakeDriver(), metrics)  # fmt: skip
    agent.reconciler.state.tunnels[MINE] = {"metadata": {"name": "site-b", "namespace": "prod"}}
    mine, not_mine = naming.conn_name(*MINE), naming.conn_name(*NOT_MINE)
    for event in (
        IpsecEvent(kind="child-rekey", conn=mine),
        IpsecEvent(kind="child-rekey", conn=mine),
        IpsecEvent(kind="ike-rekey", conn=mine),
        IpsecEvent(kind="log", conn=mine, message=AUTH_FAILED),
        IpsecEvent(kind="log", conn=mine, message="IKE_SA established"),  # progress
        IpsecEvent(kind="child-rekey", conn=not_mine),
        IpsecEvent(kind="log", conn=not_mine, message=AUTH_FAILED),
    ):
        agent._on_ipsec(event)
    assert count(metrics, "routevpn_tunnel_rekeys_total", MINE, sa="child") == 2
    assert count(metrics, "routevpn_tunnel_rekeys_total", MINE, sa="ike") == 1
    assert count(metrics, "routevpn_tunnel_ike_failures_total", MINE) == 1
    assert count(metrics, "routevpn_tunnel_rekeys_total", NOT_MINE, sa="child") is None
    assert count(metrics, "routevpn_tunnel_ike_failures_total", NOT_MINE) is None
    assert MINE in agent.dirty
