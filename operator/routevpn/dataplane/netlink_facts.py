"""Netlink messages read as routevpn's facts, and the constants they need. Pure.

The messages are pyroute2's, passed in by `dataplane.netlink` (the only module that
talks netlink); nothing here opens a socket.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from routevpn.api import naming
from routevpn.dataplane.facts import AddressFacts, LinkFacts, NetlinkFacts, RouteFacts
from routevpn.dataplane.plan import IPInterface, LinkPlan, RoutePlan

AF_UNSPEC = 0
AF_INET = 2
AF_INET6 = 10
RTN_UNICAST = 1
RT_SCOPE_NOWHERE = 255
IFF_UP = 1
RTM_GETROUTE = 26
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
#: Answer a route lookup with the FIB entry that matched, not a per-destination clone.
RTM_F_FIB_MATCH = 0x2000
#: What a FIB lookup answers when no unicast route reaches the address: none at all
#: (ENETUNREACH), or the best match is `unreachable` (EHOSTUNREACH), `prohibit`
#: (EACCES) or `blackhole` (EINVAL) — checked against the kernel in tests/netns.
NO_UNICAST_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL})


def ip_or_none(value: Any) -> Any:
    return ipaddress.ip_address(value) if value else None


def link_facts(msg: Any) -> LinkFacts:
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    facts: dict[str, Any] = {}
    if data is not None and kind in ("vti", "vti6"):
        facts = {
            "local": ip_or_none(data.get_attr("IFLA_VTI_LOCAL")),
            "remote": ip_or_none(data.get_attr("IFLA_VTI_REMOTE")),
            "ikey": data.get_attr("IFLA_VTI_IKEY"),
            "okey": data.get_attr("IFLA_VTI_OKEY"),
            "underlay_index": data.get_attr("IFLA_VTI_LINK") or None,
        }
    elif data is not None and kind == "xfrm":
        facts = {
            "if_id": data.get_attr("IFLA_XFRM_IF_ID"),
            "underlay_index": data.get_attr("IFLA_XFRM_LINK") or None,
        }
    return LinkFacts(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        alias=msg.get_attr("IFLA_IFALIAS"),
        mtu=msg.get_attr("IFLA_MTU"),
        up=bool(msg["flags"] & IFF_UP),
        group=msg.get_attr("IFLA_GROUP") or 0,
        **facts,
    )


def route_facts(msg: Any, names: dict[int, str]) -> RouteFacts | None:
    if msg["type"] != RTN_UNICAST:
        return None
    family = msg["family"]
    # A default route carries no RTA_DST: the kernel means the all-zero address.
    dst = msg.get_attr("RTA_DST") or (
        ipaddress.IPv4Address(0) if family == AF_INET else ipaddress.IPv6Address(0)
    )
    oif = msg.get_attr("RTA_OIF")
    return RouteFacts(
        dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}"),
        oif=oif,
        ifname=names.get(oif) if oif is not None else None,
        via=ip_or_none(msg.get_attr("RTA_GATEWAY")),
        metric=msg.get_attr("RTA_PRIORITY") or 0,
        table=msg.get_attr("RTA_TABLE") or msg["table"],
        proto=msg["proto"],
    )


def effective_metric(route: RoutePlan) -> int:
    """The metric the kernel records: IPv6 turns "no metric" (0) into 1024."""
    return 1024 if route.family == 6 and route.metric == 0 else route.metric


def half_made(link: LinkFacts) -> bool:
    """A tunnel link routevpn created and never marked: in its group, with no alias."""
    return (
        not link.alias and link.group == naming.LINK_GROUP and link.kind in ("vti", "vti6", "xfrm")
    )


def link_matches(have: LinkFacts, want: LinkPlan, underlay_index: int | None) -> bool:
    """Whether `have` already has every attribute of `want` the kernel can't change."""
    if have.kind != want.kind:
        return False
    if want.kind in ("vti", "vti6"):
        return (
            have.local == want.local
            and have.remote == want.remote
            and have.ikey == want.key
            and have.okey == want.key
        )
    return have.if_id == want.if_id and (
        underlay_index is None or have.underlay_index == underlay_index
    )


@dataclass
class View:
    """Links, addresses and routevpn's routes as last dumped, kept current with writes.

    Within a pass (`begin_pass`/`end_pass`) every verb reads this instead of dumping
    netlink again, so a pass over N tunnels costs one dump, not several per tunnel.
    Each write updates it: links are re-read singly after a create or set; addresses and
    routes are recorded as written; a deleted link takes its addresses and routes along.
    `routes` holds routevpn's own routes only (protocol 157, any table and link): other
    routes are never read in bulk (see the module docstring).
    """

    links: dict[int, LinkFacts] = field(default_factory=dict)
    addresses: list[AddressFacts] = field(default_factory=list)
    routes: list[RouteFacts] = field(default_factory=list)

    def facts(self) -> NetlinkFacts:
        return NetlinkFacts(tuple(self.links.values()), tuple(self.addresses), tuple(self.routes))

    def by_name(self, name: str) -> LinkFacts | None:
        return next((link for link in self.links.values() if link.name == name), None)

    def put_link(self, link: LinkFacts) -> None:
        self.links[link.index] = link

    def drop_link(self, index: int) -> None:
        self.links.pop(index, None)
        self.addresses = [a for a in self.addresses if a.index != index]
        self.routes = [r for r in self.routes if r.oif != index]

    def add_address(self, index: int, address: IPInterface) -> None:
        name = self.links[index].name if index in self.links else ""
        self.addresses.append(AddressFacts(index, name, address))

    def drop_address(self, index: int, address: IPInterface) -> None:
        self.addresses = [
            a for a in self.addresses if not (a.index == index and a.address == address)
        ]

    def put_route(self, route: RouteFacts) -> None:
        self.drop_route(route)
        self.routes.append(route)

    def drop_route(self, route: RouteFacts) -> None:
        key = (route.dst, route.table, route.metric)
        self.routes = [r for r in self.routes if (r.dst, r.table, r.metric) != key]
