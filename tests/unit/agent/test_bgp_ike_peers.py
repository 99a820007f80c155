"""No BGP session of the node learns a route over the IKE peer of any tunnel on the node,
its own or another tenant's (the RouteLoop of static routes, across tunnels)."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import test_bgp_pass as tb  # type: ignore[import-not-found]  # tests/unit/agent is no package
import yaml

from routevpn.agent.bgp import NodeBird
from routevpn.agent.bgp_step import BgpStep
from routevpn.agent.desired_bgp import forbidding
from routevpn.agent.settings import AgentSettings
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane.plan import ConnPlan, PskCredential, Secret, TunnelPlan

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
net = ipaddress.ip_network


def bgp_tunnel() -> VpnTunnel:
    docs = yaml.safe_load_all((ROOT / "examples" / "bgp" / "tunnel.yaml").read_text())
    obj: dict[str, Any] = next(d for d in docs if d and d.get("kind") == "VpnTunnel")
    obj["metadata"]["namespace"] = "team-a"
    obj["status"] = {"node": "n", "interface": {"name": "vti1", "type": "vti", "key": 7}}
    return VpnTunnel.from_wire(obj)


def tunnel_plan(ref: str, remote: str) -> TunnelPlan:
    ns, name = ref.split("/")
    conn = ConnPlan(name=f"routevpn.{ns}.{name}", local_addrs=("192.0.2.1",),
                    remote_addrs=(remote,), local_id="a", remote_id="b")  # fmt: skip
    return TunnelPlan(ref=ref, conn=conn, auth=PskCredential(Secret("x")))


def test_every_tunnels_ike_peer_is_forbidden_to_every_session(tmp_path: Path) -> None:
    step = BgpStep(AgentSettings(node="n", namespace="routevpn"), NodeBird(tb.FakeBird(), tmp_path))
    # team-a's BGP tunnel (its own peer 203.0.113.1); team-b's plain tunnel, planned after
    # it in the same pass, whose IKE peer lies inside what team-a's far end may send.
    step.plan(("team-a", "dc-east"), bgp_tunnel(), tunnel_plan("team-a/dc-east", "203.0.113.1"),
              None)  # fmt: skip
    step.plan(("team-b", "other"), bgp_tunnel(), tunnel_plan("team-b/other", "198.51.100.7"),
              None)  # fmt: skip
    step.forget(("team-b", "other"))  # ...then gone again: its peer no longer matters
    step.plan(("team-c", "x"), bgp_tunnel(), tunnel_plan("team-c/x", "198.51.100.9"), None)
    step.plans.pop(("team-c", "x"))  # team-c has no BGP: only its IKE peer counts
    asyncio.run(step.sync())
    conf = (tmp_path / "bird.conf").read_text()
    assert "if 198.51.100.9/32 ~ net then reject;" in conf  # another tenant's IKE peer
    assert "if 203.0.113.1/32 ~ net then reject;" in conf  # its own
    assert "198.51.100.7" not in conf  # a forgotten tunnel's peer


def test_forbidding_adds_host_prefixes_of_the_sessions_family_only() -> None:
    plan = tb.PLAN
    got = forbidding(
        plan, [ipaddress.ip_address("203.0.113.5"), ipaddress.ip_address("2001:db8::5")]
    )
    assert got.forbidden == (*plan.forbidden, net("203.0.113.5/32"))
    assert forbidding(got, [ipaddress.ip_address("203.0.113.5")]) is got
