"""bgp.enabled: the agent gets the cluster's networks (the tenancy values the operator gets)
as --protected-cidr, so the node's BIRD refuses learned prefixes over them. The operator
admits an `accept` that holds a protected network on that promise (docs/bgp.md)."""

from __future__ import annotations

import itertools
from pathlib import Path

from support.chart import containers, find, render

TENANCY = {
    "podCIDRs": ["198.51.100.0/25"],
    "serviceCIDRs": ["2001:db8:96::/112"],
    "nodeCIDRs": ["192.0.2.0/26"],
    "apiServerAddresses": ["192.0.2.10"],
}


def agent_args(values: dict[str, object], tmp: Path) -> list[str]:
    agent = find(render(values, tmp), "DaemonSet", "agent")
    return [str(a) for a in containers(agent)["agent"]["args"]]


def test_every_tenancy_network_is_protected_from_bgp(tmp_path: Path) -> None:
    args = agent_args({"bgp": {"enabled": True}, "tenancy": TENANCY}, tmp_path)
    protected = [b for a, b in itertools.pairwise(args) if a == "--protected-cidr"]
    assert protected == [n for key in TENANCY for n in TENANCY[key]]


def test_without_bgp_the_agent_gets_no_protected_networks(tmp_path: Path) -> None:
    assert "--protected-cidr" not in agent_args({"tenancy": TENANCY}, tmp_path)
