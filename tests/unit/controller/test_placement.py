"""Placement: deterministic choice, stickiness, readiness, local address."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from routevpn.api.conditions import Reason
from routevpn.api.spec import VpnTunnelSpec, parse_spec
from routevpn.controller.model import NodeRecord
from routevpn.controller.placement import down_for_good, local_address, place

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def spec(**over: object) -> VpnTunnelSpec:
    base: dict[str, object] = {
        "nodeSelector": {"gw": "true"},
        "remote": {"address": "198.51.100.1"},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "s"}}},
    }
    base.update(over)
    return parse_spec(base)


def node(name: str, ready: bool = True, since: datetime = NOW, **labels: str) -> NodeRecord:
    return NodeRecord(
        name=name,
        labels={"gw": "true", **labels},
        ready=ready,
        ready_since=since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        internal_ips=("192.0.2.10", "2001:db8::10"),
    )


def test_choice_is_deterministic_and_spreads() -> None:
    nodes = {n: node(n) for n in ("a", "b", "c")}
    chosen = [place(f"ns/t{i}", spec(), None, nodes, NOW, 60).node for i in range(60)]
    assert chosen == [place(f"ns/t{i}", spec(), None, nodes, NOW, 60).node for i in range(60)]
    assert set(chosen) == {"a", "b", "c"}


def test_stays_on_current_node_while_eligible() -> None:
    nodes = {n: node(n) for n in ("a", "b", "c")}
    for cur in nodes:
        assert place("ns/t", spec(), cur, nodes, NOW, 60).node == cur


def test_moves_when_current_stops_matching_or_goes() -> None:
    nodes = {"a": node("a"), "b": node("b")}
    relabelled = {"a": NodeRecord("a", {}, True, "", ()), "b": nodes["b"]}
    assert place("ns/t", spec(), "a", relabelled, NOW, 60).node == "b"
    assert place("ns/t", spec(), "gone", nodes, NOW, 60).node in {"a", "b"}


def test_not_ready_moves_only_after_grace() -> None:
    blip = {"a": node("a", ready=False, since=NOW - timedelta(seconds=5)), "b": node("b")}
    assert place("ns/t", spec(), "a", blip, NOW, 60).node == "a"
    long = {"a": node("a", ready=False, since=NOW - timedelta(seconds=61)), "b": node("b")}
    assert place("ns/t", spec(), "a", long, NOW, 60).node == "b"
    assert down_for_good(long["a"], NOW, 60)


def test_nowhere_reasons() -> None:
    assert place("ns/t", spec(), None, {}, NOW, 60).reason == Reason.NO_MATCHING_NODE
    down = {"a": node("a", ready=False)}
    assert place("ns/t", spec(), None, down, NOW, 60).reason == Reason.NODE_NOT_READY
    by_name = spec(nodeSelector=None, nodeName="x")
    got = place("ns/t", by_name, None, {}, NOW, 60)
    assert (got.node, got.reason) == (None, Reason.NODE_NOT_FOUND)


def test_local_address_follows_remote_family() -> None:
    assert local_address(spec(), node("a")) == "192.0.2.10"
    v6 = spec(remote={"address": "2001:db8:1::1"})
    assert local_address(v6, node("a")) == "2001:db8::10"
    explicit = spec(local={"address": "192.0.2.99"})
    assert local_address(explicit, node("a")) == "192.0.2.99"
