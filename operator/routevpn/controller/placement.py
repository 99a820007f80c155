"""Placement: which node a tunnel runs on. Pure.

A tunnel stays where it is while that node stays eligible (no needless moves: a move
tears the tunnel down and re-keys it). A new placement is chosen by rendezvous hashing
of `namespace/name` over the eligible nodes: deterministic across restarts and replicas,
spread across nodes, and only the tunnels of a lost node move when a node goes.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from routevpn.api.conditions import Reason
from routevpn.api.spec import VpnTunnelSpec
from routevpn.api.timefmt import parse_k8s_time
from routevpn.controller.model import NodeRecord


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the tunnel should run, or why nowhere (reason, message)."""

    node: str | None
    reason: str
    message: str


def _score(ref: str, node: str) -> bytes:
    return hashlib.sha256(f"{ref}\0{node}".encode()).digest()


def down_for_good(node: NodeRecord, now: datetime, grace_seconds: float) -> bool:
    """True when the node has been NotReady longer than the grace period.

    A node that blips NotReady (kubelet restart, a slow heartbeat) keeps its tunnels;
    moving them would cost a re-key for nothing.
    """
    if node.ready:
        return False
    since = parse_k8s_time(node.ready_since)
    if since is None:
        return True
    return (now - since).total_seconds() >= grace_seconds


def matches(spec: VpnTunnelSpec, node: NodeRecord) -> bool:
    """Does the node satisfy spec.nodeName / spec.nodeSelector (readiness aside)?"""
    if spec.node_name is not None:
        return node.name == spec.node_name
    return all(node.labels.get(k) == v for k, v in (spec.node_selector or {}).items())


def place(
    ref: str,
    spec: VpnTunnelSpec,
    current: str | None,
    nodes: Mapping[str, NodeRecord],
    now: datetime,
    grace_seconds: float,
) -> Placement:
    """Choose the node for tunnel `ref` (currently on `current`, or None)."""
    if current is not None:
        node = nodes.get(current)
        if node is not None and matches(spec, node) and not down_for_good(node, now, grace_seconds):
            return Placement(current, Reason.PLACED, f"placed on node {current}")
    candidates = [n for n in nodes.values() if matches(spec, n) and n.ready]
    if not candidates:
        return _nowhere(spec, nodes)
    best = max(candidates, key=lambda n: _score(ref, n.name))
    return Placement(best.name, Reason.PLACED, f"placed on node {best.name}")


def _nowhere(spec: VpnTunnelSpec, nodes: Mapping[str, NodeRecord]) -> Placement:
    if spec.node_name is not None:
        if spec.node_name not in nodes:
            return Placement(None, Reason.NODE_NOT_FOUND, f"node {spec.node_name} does not exist")
        return Placement(None, Reason.NODE_NOT_READY, f"node {spec.node_name} is not Ready")
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.node_selector or {}).items()))
    matching = [n for n in nodes.values() if matches(spec, n)]
    if matching:
        names = ", ".join(sorted(n.name for n in matching)[:5])
        return Placement(
            None, Reason.NODE_NOT_READY, f"no Ready node matches {selector} (NotReady: {names})"
        )
    return Placement(None, Reason.NO_MATCHING_NODE, f"no node matches {selector}")


def local_address(spec: VpnTunnelSpec, node: NodeRecord | None) -> str | None:
    """The outer local address: spec.local.address, else the node's InternalIP of the
    remote's family (the first InternalIP when the remote is a DNS name)."""
    if spec.local is not None and spec.local.address is not None:
        return spec.local.address
    if node is None or not node.internal_ips:
        return None
    try:
        family: int | None = ipaddress.ip_address(spec.remote.address).version
    except ValueError:
        family = None
    for ip in node.internal_ips:
        try:
            if family is None or ipaddress.ip_address(ip).version == family:
                return ip
        except ValueError:
            continue
    return None
