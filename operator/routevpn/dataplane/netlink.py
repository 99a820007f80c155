"""Links, addresses, routes and sysctls of the network namespace this process is in.

The only module importing pyroute2. It uses `AsyncIPRoute` because the agent is an
asyncio program: every request is awaited on the loop, nothing blocks it.

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
Routes: see `dataplane.netlink_routes`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Collection, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import AsyncIPRoute, NetlinkError  # type: ignore[import-untyped]

# Not exported at the package root: a hand-built request is the only way to send the
# filter fields of a route dump and the flags of a FIB lookup (see the module docstring).
from routevpn.api import naming
from routevpn.dataplane import builders
from routevpn.dataplane import netlink_facts as nf
from routevpn.dataplane.errors import (
    LinkNotOwnedError,
    NetlinkOperationError,
    SysctlError,
)
from routevpn.dataplane.facts import (
    AddressFacts,
    Change,
    LinkFacts,
    NetlinkFacts,
)
from routevpn.dataplane.netlink_routes import RouteOps
from routevpn.dataplane.plan import (
    IPInterface,
    LinkPlan,
    SysctlPlan,
    TunnelPlan,
)

log = logging.getLogger(__name__)


def _socket() -> AsyncIPRoute:
    """A netlink socket whose dumps the kernel filters by their request (strict check)."""
    return AsyncIPRoute(strict_check=True)


class NetlinkAdapter(RouteOps):
    """Idempotent verbs on the current network namespace. Use as `async with`."""

    def __init__(self, proc_sys: Path = Path("/proc/sys")) -> None:
        self._proc_sys = proc_sys
        self._ipr: AsyncIPRoute | None = None
        self._in_pass = False
        self._view: nf.View | None = None

    async def __aenter__(self) -> NetlinkAdapter:
        self._ipr = _socket()
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
            self._ipr = _socket()
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

    async def _current(self) -> nf.View:
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
        return nf.link_facts(msgs[0]) if msgs else None

    # -- observe -------------------------------------------------------------------

    async def links(self) -> list[LinkFacts]:
        """Every link in this namespace."""
        return [nf.link_facts(m) async for m in await self.ipr.link("dump")]

    async def observe(self) -> NetlinkFacts:
        """Links, addresses and routevpn's own routes (protocol 157, every table).

        Other routes are not listed: a node may carry full routing tables. What the
        safety checks need of them is asked per tunnel (`observe_for`). Within a pass:
        the pass's view (this pass's own changes included).
        """
        return (await self._current()).facts()

    async def _dump(self) -> nf.View:
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
        routes = await self._owned_routes(names)
        return nf.View({link.index: link for link in links}, addrs, routes)

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
        underlay_index = self._underlay_index(ref, view, link)
        have = view.by_name(link.name)
        if have is not None and naming.parse_link_alias(have.alias) is None:
            if not nf.half_made(have):
                raise LinkNotOwnedError(
                    ref, f"interface {link.name} exists and is not routevpn's; not touching it"
                )
            log.warning(
                "tunnel %s: interface %s was created by routevpn and not marked yet (the "
                "agent stopped in between): finishing it",
                ref,
                link.name,
            )
        if have is not None and not nf.link_matches(have, link, underlay_index):
            await self._call(
                ref, f"delete {link.name}", {errno.ENODEV}, self.ipr.link("del", index=have.index)
            )
            view.drop_link(have.index)
            changes.append(Change(ref, "link", "deleted", f"{link.name} (attributes changed)"))
            have = None
        if have is None:
            have = await self._create_link(ref, link, underlay_index, changes)
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

    @staticmethod
    def _underlay_index(ref: str, view: nf.View, link: LinkPlan) -> int | None:
        if link.underlay is None:
            return None
        under = view.by_name(link.underlay)
        if under is None:
            raise NetlinkOperationError(
                ref, f"find underlay {link.underlay}", errno.ENODEV, "no such device"
            )
        return under.index

    async def _create_link(
        self, ref: str, link: LinkPlan, underlay_index: int | None, changes: list[Change]
    ) -> LinkFacts:
        kwargs = builders.build_link(link, underlay_index)
        created = await self._call(
            ref, f"create {link.kind} {link.name}", {errno.EEXIST}, self.ipr.link("add", **kwargs)
        )
        if created:
            changes.append(Change(ref, "link", "created", f"{link.kind} {link.name}"))
        have = await self._get_link(link.name)
        if have is None:
            raise NetlinkOperationError(ref, f"create {link.name}", errno.ENODEV, "vanished")
        return have

    async def _delete(self, ref: str, link: LinkFacts, detail: str = "") -> list[Change]:
        """Delete `link` (already gone is fine); the change, if it was there."""
        deleted = await self._call(
            ref, f"delete {link.name}", {errno.ENODEV}, self.ipr.link("del", index=link.index)
        )
        if not deleted:
            return []
        change = Change(ref, "link", "deleted", link.name + detail)
        log.info("%s", change)
        return [change]

    async def delete_owned_link(self, ref: str, name: str) -> list[Change]:
        """Delete link `name` if it is routevpn's (its alias says so); else leave it."""
        have = await self._link_by_name(name)
        if have is None or naming.parse_link_alias(have.alias) is None:
            return []
        return await self._delete(ref, have)

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
            changes += await self._delete(ref, link)
            view.drop_link(link.index)
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
        names_wanted = {name for _, name in links_wanted}
        for link in links:
            if nf.half_made(link) and link.name not in names_wanted:
                # its tunnel went while the agent was down between the link's two requests
                ref = f"(unmarked {link.name})"
                changes += await self._delete(ref, link, " (created, never marked)")
                continue
            owner = naming.parse_link_alias(link.alias)
            if owner is None:
                continue
            ref = naming.tunnel_ref(*owner)
            if ref not in keep and (ref, link.name) not in links_wanted:
                changes += await self.delete_owned_link(ref, link.name)
        routes_wanted = {
            (r.dst, r.table, nf.effective_metric(r), r.dev) for p in plans for r in p.routes
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
