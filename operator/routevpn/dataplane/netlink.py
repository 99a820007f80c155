"""Links, addresses, routes and sysctls of the network namespace this process is in.

The only module importing pyroute2. It uses `AsyncIPRoute` because the agent is an
asyncio (kopf) program: every request is awaited on the loop, nothing blocks it.

It works on the namespace the process (or thread that opened it) is in and takes no
namespace argument on purpose: sysctls are written through /proc/sys, which always
shows the caller's own namespace, so an adapter told to act on another namespace would
split its writes between two. Tests run it inside a throwaway namespace instead.

Idempotence: every verb reads first and writes only what differs, and returns the
`Change`s it made, so a second pass over the same plan reports none. The errno
values tolerated are exactly those meaning "already so" for that request (the kernel
uses different ones per object: EEXIST on add; ENODEV for a gone link, EADDRNOTAVAIL
for a gone address, ESRCH for a gone route); everything else is raised as
`NetlinkOperationError` naming the tunnel.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import AsyncIPRoute, NetlinkError  # type: ignore[import-untyped]

from routevpn.api import naming
from routevpn.dataplane import builders
from routevpn.dataplane.errors import (
    LinkNotOwnedError,
    NetlinkOperationError,
    RouteNotOwnedError,
    SysctlError,
)
from routevpn.dataplane.facts import (
    AddressFacts,
    Change,
    LinkFacts,
    NetlinkFacts,
    RouteFacts,
)
from routevpn.dataplane.plan import (
    IPInterface,
    LinkPlan,
    RoutePlan,
    SysctlPlan,
    TunnelPlan,
)

log = logging.getLogger(__name__)

AF_INET = 2
AF_INET6 = 10
RTN_UNICAST = 1
RT_SCOPE_NOWHERE = 255
IFF_UP = 1
#: Family value that makes the kernel dump routes of every family (see pyroute2 docs).
ALL_FAMILIES = 255
RTPROT_KERNEL = 2


def _ip(value: Any) -> Any:
    return ipaddress.ip_address(value) if value else None


def _link_facts(msg: Any) -> LinkFacts:
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    facts: dict[str, Any] = {}
    if data is not None and kind in ("vti", "vti6"):
        facts = {
            "local": _ip(data.get_attr("IFLA_VTI_LOCAL")),
            "remote": _ip(data.get_attr("IFLA_VTI_REMOTE")),
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
        **facts,
    )


def _route_facts(msg: Any, names: dict[int, str]) -> RouteFacts | None:
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
        via=_ip(msg.get_attr("RTA_GATEWAY")),
        metric=msg.get_attr("RTA_PRIORITY") or 0,
        table=msg.get_attr("RTA_TABLE") or msg["table"],
        proto=msg["proto"],
    )


def owned_by(route: RouteFacts, index: int) -> bool:
    """Is `route` the tunnel's whose link is `index`? routevpn's protocol number AND that
    link: another tunnel's route (same protocol, another link) is never ours to replace."""
    return route.proto == naming.ROUTE_PROTOCOL and route.oif == index


def effective_metric(route: RoutePlan) -> int:
    """The metric the kernel records: IPv6 turns "no metric" (0) into 1024."""
    return 1024 if route.family == 6 and route.metric == 0 else route.metric


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
class _View:
    """Links, addresses and routes as last dumped, kept current with the adapter's writes.

    Within a pass (`begin_pass`/`end_pass`) every verb reads this instead of dumping
    netlink again, so a pass over N tunnels costs one dump, not several per tunnel.
    Each write updates it: links are re-read singly after a create or set; addresses and
    routes are recorded as written; a connected prefix route is recorded for an added
    address as the kernel adds one; a deleted link takes its addresses and routes along.
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
        if address.network.prefixlen < address.max_prefixlen:
            metric = 0 if address.version == 4 else 256
            self.put_route(
                RouteFacts(address.network, index, name, None, metric, 254, RTPROT_KERNEL)
            )

    def drop_address(self, index: int, address: IPInterface) -> None:
        self.addresses = [
            a for a in self.addresses if not (a.index == index and a.address == address)
        ]
        if address.network.prefixlen < address.max_prefixlen:
            self.routes = [
                r
                for r in self.routes
                if not (r.oif == index and r.dst == address.network and r.proto == RTPROT_KERNEL)
            ]

    def put_route(self, route: RouteFacts) -> None:
        self.drop_route(route)
        self.routes.append(route)

    def drop_route(self, route: RouteFacts) -> None:
        key = (route.dst, route.table, route.metric)
        self.routes = [r for r in self.routes if (r.dst, r.table, r.metric) != key]


class NetlinkAdapter:
    """Idempotent verbs on the current network namespace. Use as `async with`."""

    def __init__(self, proc_sys: Path = Path("/proc/sys")) -> None:
        self._proc_sys = proc_sys
        self._ipr: AsyncIPRoute | None = None
        self._in_pass = False
        self._view: _View | None = None

    async def __aenter__(self) -> NetlinkAdapter:
        self._ipr = AsyncIPRoute()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the netlink socket."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    @property
    def ipr(self) -> AsyncIPRoute:
        """The open socket (opened lazily so the adapter also works without `async with`)."""
        if self._ipr is None:
            self._ipr = AsyncIPRoute()
        return self._ipr

    async def _call(self, ref: str, what: str, ok: Collection[int], coro: Any) -> bool:
        """Await a request; False when it failed with an errno in `ok` ("already so")."""
        try:
            await coro
        except NetlinkError as e:
            if e.code in ok:
                return False
            raise NetlinkOperationError(ref, what, e.code, str(e.args[-1])) from e
        return True

    # -- passes --------------------------------------------------------------------

    def begin_pass(self) -> None:
        """From now until `end_pass`, dump netlink once and keep that view current."""
        self._in_pass = True
        self._view = None

    def end_pass(self) -> None:
        """Forget the pass's view: every later read dumps netlink again."""
        self._in_pass = False
        self._view = None

    async def _current(self) -> _View:
        """The pass's view (dumped on first use), or a fresh one outside a pass."""
        if self._in_pass and self._view is not None:
            return self._view
        view = await self._dump()
        if self._in_pass:
            self._view = view
        return view

    async def _get_link(self, name: str) -> LinkFacts | None:
        """One link by name (a single request, not a dump)."""
        try:
            reply = await self.ipr.link("get", ifname=name)
            # pyroute2's async "get" answers a list, its dumps an async iterator
            msgs = [m async for m in reply] if hasattr(reply, "__aiter__") else list(reply)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        return _link_facts(msgs[0]) if msgs else None

    # -- observe -------------------------------------------------------------------

    async def links(self) -> list[LinkFacts]:
        """Every link in this namespace."""
        return [_link_facts(m) async for m in await self.ipr.link("dump")]

    async def observe(self) -> NetlinkFacts:
        """Links, addresses and unicast routes of every table, as typed facts.

        Within a pass: the pass's view (this pass's own changes included).
        """
        return (await self._current()).facts()

    async def _dump(self) -> _View:
        links = await self.links()
        names = {link.index: link.name for link in links}
        addrs = [
            AddressFacts(
                index=m["index"],
                ifname=names.get(m["index"], ""),
                address=ipaddress.ip_interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}"),
            )
            async for m in await self.ipr.addr("dump")
        ]
        routes: list[RouteFacts] = []
        async for m in await self.ipr.route("dump", family=ALL_FAMILIES):
            fact = _route_facts(m, names)
            if fact is not None:
                routes.append(fact)
        return _View({link.index: link for link in links}, addrs, routes)

    async def _link_by_name(self, name: str) -> LinkFacts | None:
        for link in await self.links():
            if link.name == name:
                return link
        return None

    def _invalidate(self) -> None:
        """After writes the view does not track (remove, garbage collection)."""
        self._view = None

    # -- links ---------------------------------------------------------------------

    async def ensure_link(self, ref: str, link: LinkPlan) -> tuple[int, list[Change]]:
        """Make `link` exist with its attributes, alias, MTU and up; returns its index.

        A link of that name without routevpn's alias belongs to someone else and is
        never touched (`LinkNotOwnedError`). One of ours whose immutable attributes differ
        (kind, endpoints, key, if_id, underlay) is deleted and created again.
        """
        changes: list[Change] = []
        view = await self._current()
        underlay_index: int | None = None
        if link.underlay is not None:
            under = view.by_name(link.underlay)
            if under is None:
                raise NetlinkOperationError(
                    ref, f"find underlay {link.underlay}", errno.ENODEV, "no such device"
                )
            underlay_index = under.index
        have = view.by_name(link.name)
        if have is not None and naming.parse_link_alias(have.alias) is None:
            raise LinkNotOwnedError(
                ref, f"interface {link.name} exists and is not routevpn's; not touching it"
            )
        if have is not None and not link_matches(have, link, underlay_index):
            await self._call(
                ref, f"delete {link.name}", {errno.ENODEV}, self.ipr.link("del", index=have.index)
            )
            view.drop_link(have.index)
            changes.append(Change(ref, "link", "deleted", f"{link.name} (attributes changed)"))
            have = None
        if have is None:
            kwargs = builders.build_link(link, underlay_index)
            created = await self._call(
                ref,
                f"create {link.kind} {link.name}",
                {errno.EEXIST},
                self.ipr.link("add", **kwargs),
            )
            if created:
                changes.append(Change(ref, "link", "created", f"{link.kind} {link.name}"))
            have = await self._get_link(link.name)
            if have is None:
                raise NetlinkOperationError(ref, f"create {link.name}", errno.ENODEV, "vanished")
            view.put_link(have)
        settings = builders.build_link_settings(link)
        if have.alias != link.alias or have.mtu != link.mtu or not have.up:
            await self._call(
                ref, f"set {link.name}", (), self.ipr.link("set", index=have.index, **settings)
            )
            view.put_link(await self._get_link(link.name) or have)
            changes.append(Change(ref, "link", "configured", f"{link.name} mtu {link.mtu} up"))
        for change in changes:
            log.info("%s", change)
        return have.index, changes

    async def delete_owned_link(self, ref: str, name: str) -> list[Change]:
        """Delete link `name` if it is routevpn's (its alias says so); else leave it."""
        have = await self._link_by_name(name)
        if have is None or naming.parse_link_alias(have.alias) is None:
            return []
        deleted = await self._call(
            ref, f"delete {name}", {errno.ENODEV}, self.ipr.link("del", index=have.index)
        )
        if not deleted:
            return []
        change = Change(ref, "link", "deleted", name)
        log.info("%s", change)
        return [change]

    # -- addresses -------------------------------------------------------------------

    async def ensure_addresses(
        self, ref: str, index: int, wanted: Iterable[IPInterface]
    ) -> list[Change]:
        """Add missing addresses on link `index`, remove those no longer wanted.

        IPv6 link-local addresses are the kernel's own and are left alone.
        """
        want = set(wanted)
        view = await self._current()
        have = {a.address for a in view.addresses if a.index == index}
        changes: list[Change] = []
        for addr in sorted(want - have, key=str):
            kwargs = builders.build_address(index, addr)
            added = await self._call(
                ref, f"add {addr}", {errno.EEXIST}, self.ipr.addr("add", **kwargs)
            )
            view.add_address(index, addr)
            if added:
                changes.append(Change(ref, "address", "added", str(addr)))
        for addr in sorted(have - want, key=str):
            if addr.version == 6 and addr.ip.is_link_local:
                continue
            kwargs = builders.build_address(index, addr)
            removed = await self._call(
                ref, f"remove {addr}", {errno.EADDRNOTAVAIL}, self.ipr.addr("del", **kwargs)
            )
            view.drop_address(index, addr)
            if removed:
                changes.append(Change(ref, "address", "removed", str(addr)))
        for change in changes:
            log.info("%s", change)
        return changes

    # -- routes ----------------------------------------------------------------------

    async def _routes(self) -> list[RouteFacts]:
        names = {link.index: link.name for link in await self.links()}
        out: list[RouteFacts] = []
        async for m in await self.ipr.route("dump", family=ALL_FAMILIES):
            fact = _route_facts(m, names)
            if fact is not None:
                out.append(fact)
        return out

    async def _owned_routes(self) -> list[RouteFacts]:
        return [r for r in await self._routes() if r.proto == naming.ROUTE_PROTOCOL]

    async def _delete_route(self, ref: str, route: RouteFacts) -> bool:
        return await self._call(
            ref,
            f"delete route {route.dst}",
            {errno.ESRCH},
            self.ipr.route(
                "del",
                dst=str(route.dst),
                table=route.table,
                priority=route.metric,
                proto=naming.ROUTE_PROTOCOL,
                # RT_SCOPE_NOWHERE matches a route of any scope, as `ip route del` does;
                # pyroute2's default (universe) would miss on-link routes (ESRCH).
                scope=RT_SCOPE_NOWHERE,
                family=AF_INET if route.dst.version == 4 else AF_INET6,
            ),
        )

    async def ensure_routes(
        self, ref: str, index: int, wanted: Iterable[RoutePlan]
    ) -> list[Change]:
        """Replace routes that are missing or differ; delete our own stale ones on `index`.

        A route's identity is (dst, table, metric), as in the kernel; `via` and the
        device are what `replace` updates.
        """
        view = await self._current()
        every = list(view.routes)
        owned = [r for r in every if owned_by(r, index)]
        foreign = {(r.dst, r.table, r.metric) for r in every if not owned_by(r, index)}
        by_key = {(r.dst, r.table, r.metric): r for r in owned}
        want = list(wanted)
        changes: list[Change] = []
        for route in want:
            key = (route.dst, route.table, effective_metric(route))
            if key in foreign:
                # `replace` would silently take over someone else's route
                raise RouteNotOwnedError(
                    ref,
                    f"route {route.dst} table {route.table} metric {key[2]} exists and "
                    "is not this tunnel's; not replacing it",
                )
            have = by_key.get(key)
            if have is not None and have.via == route.via:
                continue
            await self._call(
                ref,
                f"replace route {route.dst}",
                (),
                self.ipr.route("replace", **builders.build_route(route, index)),
            )
            name = view.links[index].name if index in view.links else None
            view.put_route(
                RouteFacts(
                    route.dst,
                    index,
                    name,
                    route.via,
                    key[2],
                    route.table,
                    naming.ROUTE_PROTOCOL,
                )
            )
            changes.append(Change(ref, "route", "replaced", f"{route.dst} table {route.table}"))
        keys = {(r.dst, r.table, effective_metric(r)) for r in want}
        for stale in owned:
            if (stale.dst, stale.table, stale.metric) in keys:
                continue
            deleted = await self._delete_route(ref, stale)
            view.drop_route(stale)
            if deleted:
                changes.append(Change(ref, "route", "deleted", f"{stale.dst} table {stale.table}"))
        for change in changes:
            log.info("%s", change)
        return changes

    # -- sysctls ---------------------------------------------------------------------

    def read_sysctl(self, path: str) -> str:
        """Current value of /proc/sys/<path>, stripped."""
        return (self._proc_sys / path).read_text().strip()

    def ensure_sysctls(self, ref: str, wanted: Iterable[SysctlPlan]) -> list[Change]:
        """Write each sysctl only when its value differs (read before write).

        Plain file I/O on procfs: it never blocks on a device, so it runs on the loop.
        """
        changes: list[Change] = []
        for sysctl in wanted:
            try:
                if self.read_sysctl(sysctl.path) == sysctl.value:
                    continue
                (self._proc_sys / sysctl.path).write_text(sysctl.value + "\n")
            except OSError as e:
                raise SysctlError(ref, f"sysctl {sysctl.path}={sysctl.value}: {e.strerror}") from e
            change = Change(ref, "sysctl", "set", f"{sysctl.path}={sysctl.value}")
            log.info("%s", change)
            changes.append(change)
        return changes

    # -- whole tunnels -------------------------------------------------------------

    async def apply(self, plan: TunnelPlan) -> list[Change]:
        """Link, sysctls, addresses, routes of `plan` (policy mode: nothing to do)."""
        if plan.link is None:
            return []
        index, changes = await self.ensure_link(plan.ref, plan.link)
        changes += self.ensure_sysctls(plan.ref, builders.build_sysctls(plan))
        changes += await self.ensure_addresses(plan.ref, index, plan.addresses)
        changes += await self.ensure_routes(plan.ref, index, plan.routes)
        return changes

    async def remove(self, ref: str) -> list[Change]:
        """Delete the link carrying `ref`'s alias (its addresses and routes go with it).

        Within a pass this reads the pass's view (one dump for every tunnel removed).
        """
        view = await self._current()
        changes: list[Change] = []
        for link in list(view.links.values()):
            owner = naming.parse_link_alias(link.alias)
            if owner is None or naming.tunnel_ref(*owner) != ref:
                continue
            deleted = await self._call(
                ref, f"delete {link.name}", {errno.ENODEV}, self.ipr.link("del", index=link.index)
            )
            view.drop_link(link.index)
            if deleted:
                change = Change(ref, "link", "deleted", link.name)
                log.info("%s", change)
                changes.append(change)
        return changes

    async def garbage_collect(
        self, desired: Iterable[TunnelPlan], keep: Collection[str] = ()
    ) -> list[Change]:
        """Remove routevpn's links and routes that no desired plan accounts for.

        Only links with routevpn's alias and routes with routevpn's protocol number are
        candidates; an empty `desired` removes everything routevpn owns and nothing else.
        Links of the tunnels in `keep` (``namespace/name``), and routes through them, stay.
        """
        self._invalidate()
        plans = list(desired)
        links_wanted = {(p.ref, p.link.name) for p in plans if p.link is not None}
        changes: list[Change] = []
        links = await self.links()
        owners = {
            link.index: naming.tunnel_ref(*owner)
            for link in links
            if (owner := naming.parse_link_alias(link.alias)) is not None
        }
        for link in links:
            owner = naming.parse_link_alias(link.alias)
            if owner is None:
                continue
            ref = naming.tunnel_ref(*owner)
            if ref not in keep and (ref, link.name) not in links_wanted:
                changes += await self.delete_owned_link(ref, link.name)
        routes_wanted = {
            (r.dst, r.table, effective_metric(r), r.dev) for p in plans for r in p.routes
        }
        for route in await self._owned_routes():
            if (route.dst, route.table, route.metric, route.ifname) in routes_wanted:
                continue
            if owners.get(route.oif or -1) in keep:
                continue
            # A stale route names its tunnel through its device's alias when it has one.
            ref = owners.get(route.oif or -1, f"(routevpn route on {route.ifname})")
            if await self._delete_route(ref, route):
                change = Change(ref, "route", "deleted", f"{route.dst} table {route.table}")
                log.info("%s", change)
                changes.append(change)
        return changes
