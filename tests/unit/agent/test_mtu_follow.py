"""The interface MTU follows the installed CHILD SA's inner MTU unless the spec sets one."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from routevpn.agent import mtu
from routevpn.agent import status as st
from routevpn.agent.desired import DEFAULT_MTU, DeliveredMaterial, build_plan
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane.facts import (
    AddressFacts,
    ChildSaFacts,
    Facts,
    IkeSaFacts,
    IpsecFacts,
    LinkFacts,
    NetlinkFacts,
)
from routevpn.dataplane.plan import TunnelPlan

ROOT = Path(__file__).resolve().parents[3]
CONN = "routevpn.prod.site-b"
LOCAL = "2001:db8:0:1::1"  # the seed example's local address (IPv6 outer)


def seed(mtu_spec: int | None = None) -> tuple[VpnTunnel, TunnelPlan]:
    docs = yaml.safe_load_all((ROOT / "examples/seed-ipv6-vti.yaml").read_text())
    obj: dict[str, Any] = next(d for d in docs if d and d.get("kind") == "VpnTunnel")
    obj["metadata"]["namespace"] = "prod"
    obj["status"] = {"interface": {"name": "vti1", "type": "vti", "key": 4096}}
    if mtu_spec is not None:
        obj["spec"]["interface"]["mtu"] = mtu_spec
    tunnel = VpnTunnel.from_wire(obj)
    plan = build_plan(tunnel, DeliveredMaterial({"psk": "x" * 32}))
    assert isinstance(plan, TunnelPlan)
    return tunnel, plan


def facts(
    underlay_mtu: int = 1500,
    encr: str = "AES_GCM_16",
    integ: str = "",
    encap: bool = False,
    state: str = "INSTALLED",
    vti_mtu: int | None = None,
) -> Facts:
    links = [LinkFacts(2, "eth0", None, None, underlay_mtu, True)]
    if vti_mtu is not None:
        links.append(LinkFacts(7, "vti1", "vti6", "routevpn:prod/site-b", vti_mtu, True))
    child = ChildSaFacts(
        name=CONN, uniqueid="2", state=state, encr_alg=encr, integ_alg=integ, encap=encap
    )
    ike = IkeSaFacts(conn=CONN, uniqueid="1", state="ESTABLISHED", children=(child,))
    addr = AddressFacts(2, "eth0", ipaddress.ip_interface(f"{LOCAL}/64"))
    return Facts(NetlinkFacts(tuple(links), (addr,)), IpsecFacts((CONN,), (ike,)))


def test_inner_mtu_of_the_installed_sa_over_the_underlay() -> None:
    _, plan = seed()
    assert mtu.inner_mtu(plan, facts()) == 1426  # IPv6 outer, AES-GCM-16
    assert mtu.inner_mtu(plan, facts(1400)) == 1326
    assert mtu.inner_mtu(plan, facts(encr="AES_CBC", integ="HMAC_SHA2_256_128")) == 1406
    assert mtu.inner_mtu(plan, facts(encap=True)) == 1418
    assert mtu.inner_mtu(plan, facts(state="REKEYED")) is None  # none installed
    assert mtu.inner_mtu(plan, None) is None


def test_interface_mtu_follows_unless_the_spec_sets_it() -> None:
    tunnel, plan = seed()
    assert plan.link is not None and plan.link.mtu == DEFAULT_MTU
    followed = mtu.follow(plan, tunnel, 1426, facts())
    assert followed.link is not None and followed.link.mtu == 1426
    # IPv6 inside: never below 1280, which IPv6 needs
    low = mtu.follow(plan, tunnel, 1100, facts())
    assert low.link is not None and low.link.mtu == 1280
    pinned, pinned_plan = seed(mtu_spec=1300)
    kept = mtu.follow(pinned_plan, pinned, 1426, facts())
    assert kept.link is not None and kept.link.mtu == 1300


def test_a_peer_down_for_a_while_leaves_the_interface_mtu_as_it_is() -> None:
    tunnel, plan = seed()
    down = facts(state="DELETING", vti_mtu=1426)
    kept = mtu.follow(plan, tunnel, mtu.inner_mtu(plan, down), down)
    assert kept.link is not None and kept.link.mtu == 1426
    # a new interface (nothing on the node yet) starts at the default
    fresh = mtu.follow(plan, tunnel, None, facts(state="DELETING"))
    assert fresh.link is not None and fresh.link.mtu == DEFAULT_MTU


def test_inner_mtu_reaches_status() -> None:
    child = ChildSaFacts(name=CONN, uniqueid="2", state="INSTALLED", spi_in="c1", spi_out="c2")
    wire = st.child_status(child, None, datetime(2026, 1, 1, tzinfo=UTC), 60, 1426)
    assert wire["innerMtu"] == 1426
    assert "innerMtu" not in st.child_status(child, None, datetime(2026, 1, 1, tzinfo=UTC), 60)


def test_a_pass_that_could_not_observe_keeps_the_inner_mtu_seen_last() -> None:
    """charon restarting: no facts at all, yet the SAs in the kernel carry traffic, so
    the interface must not fall back to the default MTU meanwhile."""
    tunnel, plan = seed()
    follower = mtu.MtuFollower()
    seen, inner = follower.follow(plan, tunnel, facts(1400))
    assert inner == 1326 and seen.link is not None and seen.link.mtu == 1326
    blind, inner = follower.follow(plan, tunnel, None)
    assert inner is None and blind.link is not None and blind.link.mtu == 1326
    follower.forget(plan.ref)
    fresh, _ = follower.follow(plan, tunnel, None)
    assert fresh.link is not None and fresh.link.mtu == DEFAULT_MTU
