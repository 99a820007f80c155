"""Routes follow the SA on real netlink: demotion, make before break, fail closed.

Two tunnel interfaces of an HA pair (veth links carrying routevpn's alias: this kernel
has no VTI, and the route logic does not depend on the link kind) route the same IPv4
and IPv6 networks at metrics 100 (primary) and 200 (backup); the node also has a
default route of its own out of an "uplink", which is where traffic would leak in
clear. The decisions come from `agent.failover`, the changes from the netlink adapter,
and the kernel's own route lookup (`ip route get`) says where a packet goes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct

from pyroute2.netlink.rtnl.rtmsg import rtmsg  # type: ignore[import-untyped]

from routevpn.agent import failover as fo
from routevpn.api import naming
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts, IpsecFacts
from routevpn.dataplane.netlink import NetlinkAdapter
from routevpn.dataplane.plan import RoutePlan
from support.dataplane import in_netns
from support.netns import Netns

NODE = "node-a"
PRIMARY = ("site", "primary")
BACKUP = ("site", "backup")
IFNAME = {PRIMARY: "rv1", BACKUP: "rv2"}
METRIC = {PRIMARY: 100, BACKUP: 200}
NETS = ("198.51.100.0/24", "2001:db8:200::/48")
PROBES = ("198.51.100.7", "2001:db8:200::7")
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
NETLINK_ROUTE = 0
EVENTS = {24: "RTM_NEWROUTE", 25: "RTM_DELROUTE"}

Seen = list[tuple[str, str, int]]


def _objects() -> dict[tuple[str, str], dict[str, object]]:
    return {
        key: {
            "metadata": {"namespace": key[0], "name": key[1], "labels": {naming.NODE_LABEL: NODE}},
            "spec": {"routes": [{"to": n, "metric": METRIC[key]} for n in NETS]},
            "status": {"node": NODE},
        }
        for key in (PRIMARY, BACKUP)
    }


def _decide(key: tuple[str, str], *up: tuple[str, str]) -> tuple[fo.RouteDecision, ...]:
    sas = tuple(
        IkeSaFacts(c, "1", "ESTABLISHED", children=(ChildSaFacts(c, "1", "INSTALLED"),))
        for c in (naming.conn_name(*k) for k in up)
    )
    view = fo.NodeRoutes.of(_objects(), NODE, fo.carrying_conns(IpsecFacts(sas=sas)))
    routes = tuple(
        RoutePlan(ipaddress.ip_network(n), IFNAME[key], metric=METRIC[key]) for n in NETS
    )
    return tuple(fo.decide_route(key, r, view) for r in routes)


async def _ensure(key: tuple[str, str], routes: list[RoutePlan]) -> Seen:
    """Make `key`'s routes `routes`; routevpn's route messages the kernel sent, in order.

    A plain netlink socket joined to the route groups before the change hears every
    RTM_NEWROUTE / RTM_DELROUTE in the order the kernel made them.
    """
    mon = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    mon.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
    mon.setblocking(False)
    try:
        async with NetlinkAdapter() as nl:
            link = await nl._link_by_name(IFNAME[key])
            assert link is not None
            await nl.ensure_routes(naming.tunnel_ref(*key), link.index, routes)
        seen: Seen = []
        with contextlib.suppress(BlockingIOError):
            while True:
                seen += _parse(mon.recv(1 << 16))
        return seen
    finally:
        mon.close()


def _parse(data: bytes) -> Seen:
    out: Seen = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind in EVENTS:
            msg = rtmsg(data[offset : offset + length])
            msg.decode()
            if msg["proto"] == naming.ROUTE_PROTOCOL:
                dst = f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}"
                out.append((EVENTS[kind], dst, int(msg.get_attr("RTA_PRIORITY") or 0)))
        offset += (length + 3) & ~3
    return out


def _apply(ns: Netns, key: tuple[str, str], decided: tuple[fo.RouteDecision, ...]) -> Seen:
    return in_netns(ns, _ensure, key, [d.route for d in decided])


def _via(ns: Netns) -> list[str]:
    """The device the kernel picks for a packet to each probe address."""
    out = []
    for probe in PROBES:
        words = ns.ip("route", "get", probe).split()
        out.append(words[words.index("dev") + 1])
    return out


def _node(ns: Netns) -> None:
    # veth pairs (this kernel has no dummy links either): a link with carrier
    for key, ifname in IFNAME.items():
        ns.ip("link", "add", ifname, "type", "veth", "peer", "name", f"{ifname}p")
        ns.ip("link", "set", f"{ifname}p", "up")
        ns.ip("link", "set", ifname, "alias", naming.link_alias(*key), "up")
    ns.ip("link", "add", "uplink", "type", "veth", "peer", "name", "uplinkp")
    ns.ip("link", "set", "uplinkp", "up")
    ns.ip("link", "set", "uplink", "up")
    ns.ip("addr", "add", "192.0.2.10/24", "dev", "uplink")
    ns.ip("addr", "add", "2001:db8:1::10/64", "dev", "uplink", "nodad")
    # the node's own default routes, preferred (metric 1) over anything routevpn sets
    ns.ip("route", "add", "default", "via", "192.0.2.1", "metric", "1")
    ns.ip("-6", "route", "add", "default", "via", "2001:db8:1::1", "metric", "1")


def test_demotion_is_make_before_break_and_both_down_fails_closed(node_ns: Netns) -> None:
    _node(node_ns)
    # both up: the primary carries, the backup waits at its own metric
    _apply(node_ns, PRIMARY, _decide(PRIMARY, PRIMARY, BACKUP))
    _apply(node_ns, BACKUP, _decide(BACKUP, PRIMARY, BACKUP))
    assert _via(node_ns) == ["rv1", "rv1"]

    # the primary's SA goes down: demoted, the demoted key added before the old goes
    decided = _decide(PRIMARY, BACKUP)
    assert {d.state.value for d in decided} == {"Demoted"}
    seen = _apply(node_ns, PRIMARY, decided)
    for net in NETS:
        mine = [(event, metric) for event, dst, metric in seen if dst == net]
        assert mine == [("RTM_NEWROUTE", 100 + 2**31), ("RTM_DELROUTE", 100)], seen
    assert _via(node_ns) == ["rv2", "rv2"]

    # the backup goes down too: the primary comes back to its metric (fail closed);
    # traffic goes into a tunnel interface, never out of the uplink's default route
    decided = _decide(PRIMARY)
    assert {d.reason for d in decided} == {fo.FAIL_CLOSED}
    _apply(node_ns, PRIMARY, decided)
    _apply(node_ns, BACKUP, _decide(BACKUP))
    assert _via(node_ns) == ["rv1", "rv1"]

    # only the backup comes back, then the primary: each move adds before it deletes
    _apply(node_ns, PRIMARY, _decide(PRIMARY, BACKUP))
    assert _via(node_ns) == ["rv2", "rv2"]
    seen = _apply(node_ns, PRIMARY, _decide(PRIMARY, PRIMARY, BACKUP))
    for net in NETS:
        mine = [(event, metric) for event, dst, metric in seen if dst == net]
        assert mine == [("RTM_NEWROUTE", 100), ("RTM_DELROUTE", 100 + 2**31)], seen
    assert _via(node_ns) == ["rv1", "rv1"]
