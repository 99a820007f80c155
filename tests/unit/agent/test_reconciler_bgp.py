"""A pass with spec.bgp (agent.reconciler with agent.bgp_step) over an in-memory BIRD:
the node's configuration rendered from the tunnel, BgpEstablished and status.bgp, the
metrics, and a node without BIRD where only the BGP tunnels notice.

The real BIRD behind the same client: tests/netns/test_bird_netns.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import test_bgp_pass as tb  # type: ignore[import-not-found]
import test_reconciler as tr  # type: ignore[import-not-found]  # tests/unit/agent is no package
from prometheus_client import generate_latest

from routevpn.agent.bgp import NodeBird
from routevpn.agent.bgp_step import BgpStep
from routevpn.dataplane.bird_facts import BgpSessionFacts

pytestmark = pytest.mark.unit

PROTOCOL = "bgp6_vti1"  # naming.bgp_protocol("vti1", 6)
BGP = {"peerASN": 65001, "peerAddresses": ["2001:db8:100::1"], "accept": ["2001:db8:300::/48"]}


def bgp_tunnel() -> dict[str, Any]:
    obj: dict[str, Any] = tr.tunnel()
    obj["spec"]["bgp"] = copy.deepcopy(BGP)
    return obj


def setup(obj: dict[str, Any], tmp: Path, bird: tb.FakeBird | None) -> tuple[Any, Any]:
    rec, api, _ = tr.setup(obj)
    rec.bgp = BgpStep(rec.settings, NodeBird(bird, tmp))
    return rec, api


def session(state: str = "Established", error: str = "") -> BgpSessionFacts:
    return BgpSessionFacts(
        protocol=PROTOCOL,
        state="up" if state == "Established" else "start",
        bgp_state=state,
        since=tb.SINCE,
        since_text="2026-12-01 15:09:44",
        last_error=error,
        imported=3,
        filtered=1,
    )


def test_bgp_tunnel_configures_bird_and_reports_established(tmp_path: Path) -> None:
    bird = tb.FakeBird([session()])
    rec, api = setup(bgp_tunnel(), tmp_path, bird)
    tr.run(rec, api)
    text = (tmp_path / "bird.conf").read_text()
    assert f"protocol bgp {PROTOCOL}" in text and "2001:db8:300::/48" in text
    assert "neighbor 2001:db8:100::1 as 65001" in text
    assert tr.conds(api)["BgpEstablished"] == ("True", "Established")
    assert tr.conds(api)["Configured"] == ("True", "Applied")
    (got,) = api.objects[tr.KEY]["status"]["bgp"]["sessions"]
    assert got["peerAddress"] == "2001:db8:100::1" and got["state"] == "Established"
    assert got["prefixes"] == {"received": 4, "accepted": 3, "advertised": 0}
    assert got["refused"] == 1
    metrics = generate_latest(rec.metrics.registry).decode()
    assert 'routevpn_tunnel_bgp_session_up{name="site-b",namespace="prod"' in metrics
    # a second pass: same text, BIRD not reconfigured, nothing written
    writes = len(api.writes)
    tr.run(rec, api)
    assert bird.configured == 1 and len(api.writes) == writes


def test_a_session_down_is_the_bgp_conditions_business_only(tmp_path: Path) -> None:
    bird = tb.FakeBird([session("Active", "Socket: Connection refused")])
    rec, api = setup(bgp_tunnel(), tmp_path, bird)
    tr.run(rec, api)
    assert tr.conds(api)["BgpEstablished"] == ("False", "Active")
    assert tr.conds(api)["Configured"] == ("True", "Applied")
    message = {c["type"]: c["message"] for c in api.objects[tr.KEY]["status"]["conditions"]}
    assert "Socket: Connection refused" in message["BgpEstablished"]
    assert message["BgpEstablished"].startswith("tunnel prod/site-b: ")


def test_no_bird_on_the_node(tmp_path: Path) -> None:
    rec, api = setup(bgp_tunnel(), tmp_path, None)
    tr.run(rec, api)
    assert tr.conds(api)["BgpEstablished"] == ("False", "DaemonUnreachable")
    assert tr.conds(api)["Configured"] == ("True", "Applied")
    # a tunnel without spec.bgp on the same kind of node: no BGP condition, no BIRD
    rec, api = setup(tr.tunnel(), tmp_path / "plain", None)
    tr.run(rec, api)
    assert "BgpEstablished" not in tr.conds(api)
    assert not (tmp_path / "plain").exists()


def test_spec_bgp_removed_takes_the_session_and_the_condition_away(tmp_path: Path) -> None:
    bird = tb.FakeBird([session()])
    rec, api = setup(bgp_tunnel(), tmp_path, bird)
    tr.run(rec, api)
    del api.objects[tr.KEY]["spec"]["bgp"]
    api.objects[tr.KEY]["metadata"]["generation"] = 3
    rec.state.tunnels[tr.KEY] = api.get(*tr.KEY)
    bird.sessions = []
    tr.run(rec, api)
    assert "protocol bgp" not in (tmp_path / "bird.conf").read_text()
    assert bird.configured == 2
    assert "BgpEstablished" not in tr.conds(api)
    assert "bgp" not in api.objects[tr.KEY]["status"]
