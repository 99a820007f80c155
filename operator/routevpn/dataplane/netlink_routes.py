"""Routes: routevpn's own, filtered by the kernel, and single lookups of anybody else's.

Routes: a node may carry full BGP tables (hundreds of thousands of routes), so nothing
here ever dumps every route. The socket turns on netlink strict checking
(NETLINK_GET_STRICT_CHK, kernel 4.20+), under which an RTM_GETROUTE dump honours the
filters in its request header: `_owned_routes` asks for protocol 157 only and the kernel
sends routevpn's routes and nothing else. pyroute2's own `route("dump", proto=…)` sends
an unfiltered request and filters in Python after receiving every route, so the request
is built here by hand. Questions about other routes are single requests: a route of
ours is created with NLM_F_EXCL, so the kernel itself refuses (EEXIST) when any route
(someone else's, a connected prefix, a blackhole) holds the same destination, table and
metric; and the route loop check asks the kernel which route reaches each peer
(RTM_GETROUTE with RTM_F_FIB_MATCH) instead of reading a table.

`RouteOps` is the route half of `NetlinkAdapter` (its base class): the adapter supplies
the socket, the error-tolerant request and the pass's view.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Collection, Iterable
from typing import Any

from pyroute2 import AsyncIPRoute, NetlinkError  # type: ignore[import-untyped]

# Not exported at the package root: a hand-built request is the only way to send the
# filter fields of a route dump and the flags of a FIB lookup (see the module docstring).
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # type: ignore[import-untyped]

from routevpn.api import naming
from routevpn.dataplane import builders, safety
from routevpn.dataplane import netlink_facts as nf
from routevpn.dataplane.errors import RouteNotOwnedError
from routevpn.dataplane.facts import Change, LinkFacts, NetlinkFacts, RouteFacts
from routevpn.dataplane.plan import RoutePlan, TunnelPlan

log = logging.getLogger("routevpn.dataplane.netlink")


class RouteOps:
    """Route verbs; `NetlinkAdapter` provides the four methods below that raise here."""

    @property
    def ipr(self) -> AsyncIPRoute:
        raise NotImplementedError

    async def _call(self, ref: str, what: str, ok: Collection[int], coro: Any) -> bool:
        raise NotImplementedError

    async def _current(self) -> nf.View:
        raise NotImplementedError

    async def links(self) -> list[LinkFacts]:
        raise NotImplementedError

    async def observe_for(self, plan: TunnelPlan) -> NetlinkFacts:
        """`observe()` plus the few foreign routes `plan`'s safety checks weigh.

        - The route the kernel uses now to reach each peer that a route or an inside
          prefix of the plan covers (`safety.check_route_loops`); for any other peer the
          check has nothing to weigh. A peer with no unicast route (none, or a
          blackhole, unreachable or prohibit route) adds nothing, as such a route never
          carried IKE before either.
        - The node's own route at each of the plan's destinations, when the kernel's
          best match for the destination's first address is exactly that prefix
          (`safety.check_protected`: a tunnel route must not outrank it, the "0/0 at
          metric 0 beats the node's default route" attack).
        """
        view = await self._current()
        facts = view.facts()
        names = {index: link.name for index, link in view.links.items()}
        found: list[RouteFacts] = []
        for peer in safety.peer_addresses(plan):
            covered = any(
                r.dst.version == peer.version and peer in r.dst for r in plan.routes
            ) or any(a.version == peer.version and peer in a.network for a in plan.addresses)
            route = await self.route_to(peer, names) if covered else None
            if route is not None:
                found.append(route)
        for want in plan.routes:
            route = await self.route_to(want.dst.network_address, names)
            if route is not None and route.dst == want.dst and route.proto != naming.ROUTE_PROTOCOL:
                found.append(route)
        return NetlinkFacts(facts.links, facts.addresses, facts.routes + tuple(found))

    async def route_to(
        self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, names: dict[int, str]
    ) -> RouteFacts | None:
        """The unicast route the kernel would use for `address` (a single lookup), or None.

        nf.RTM_F_FIB_MATCH makes the kernel answer with the routing entry that matched
        (prefix, table, metric, device), as `ip route get fibmatch` shows it.
        """
        msg = rtmsg()
        msg["family"] = nf.AF_INET if address.version == 4 else nf.AF_INET6
        msg["dst_len"] = address.max_prefixlen
        msg["flags"] = nf.RTM_F_FIB_MATCH
        msg["attrs"] = [("RTA_DST", str(address))]
        try:
            replies = [
                m async for m in await self.ipr.nlm_request(msg, nf.RTM_GETROUTE, nf.NLM_F_REQUEST)
            ]
        except NetlinkError as e:
            if e.code in nf.NO_UNICAST_ROUTE:
                return None
            raise
        for m in replies:
            fact = nf.route_facts(m, names)
            if fact is not None:
                return fact
        return None

    # -- routes ----------------------------------------------------------------------

    async def _owned_routes(self, names: dict[int, str] | None = None) -> list[RouteFacts]:
        """routevpn's routes (protocol 157) of every table and family, filtered by the kernel.

        Under strict checking the kernel reads `rtm_protocol` of a dump request as a
        filter (and flags its answers NLM_F_DUMP_FILTERED): other routes are never sent,
        however many there are. The protocol is checked here again all the same, so a
        kernel that ignored the filter would cost time, never correctness.
        """
        if names is None:
            names = {link.index: link.name for link in await self.links()}
        msg = rtmsg()
        msg["family"] = nf.AF_UNSPEC
        msg["proto"] = naming.ROUTE_PROTOCOL
        out: list[RouteFacts] = []
        async for m in await self.ipr.nlm_request(
            msg, nf.RTM_GETROUTE, nf.NLM_F_REQUEST | nf.NLM_F_DUMP
        ):
            if m["proto"] != naming.ROUTE_PROTOCOL:
                continue
            fact = nf.route_facts(m, names)
            if fact is not None:
                out.append(fact)
        return out

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
                scope=nf.RT_SCOPE_NOWHERE,
                family=nf.AF_INET if route.dst.version == 4 else nf.AF_INET6,
            ),
        )

    async def ensure_routes(
        self, ref: str, index: int, wanted: Iterable[RoutePlan]
    ) -> list[Change]:
        """Replace routes that are missing or differ; delete our own stale ones on `index`.

        A route's identity is (dst, table, metric), as in the kernel; `via` and the
        device are what `replace` updates. A missing route is created exclusively: if
        any other route holds its key the kernel says EEXIST and nothing is changed
        (`RouteNotOwnedError`), without this adapter ever reading that table.
        """
        view = await self._current()
        # routevpn's routes of every tunnel: a key another tunnel holds is not ours either
        ours = {(r.dst, r.table, r.metric): r for r in view.routes}
        owned = [r for r in view.routes if owned_by(r, index)]
        want = list(wanted)
        changes: list[Change] = []
        for route in want:
            have = ours.get((route.dst, route.table, nf.effective_metric(route)))
            if have is not None and not owned_by(have, index) and _tunnel_link(view, have.oif):
                raise RouteNotOwnedError(
                    ref,
                    f"route {route.dst} table {route.table} metric "
                    f"{nf.effective_metric(route)} is another tunnel's; not replacing it",
                )
            if have is not None and have.via == route.via:
                continue
            await self._write_route(ref, route, index, replace=have is not None)
            name = view.links[index].name if index in view.links else None
            view.put_route(_written(route, index, name))
            changes.append(Change(ref, "route", "replaced", f"{route.dst} table {route.table}"))
        keys = {(r.dst, r.table, nf.effective_metric(r)) for r in want}
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

    async def _write_route(self, ref: str, route: RoutePlan, index: int, replace: bool) -> None:
        """`replace` one of ours, or add a missing one exclusively (EEXIST: not ours)."""
        kwargs = builders.build_route(route, index)
        if replace:
            await self._call(
                ref, f"replace route {route.dst}", (), self.ipr.route("replace", **kwargs)
            )
        elif not await self._call(
            ref, f"add route {route.dst}", {errno.EEXIST}, self.ipr.route("add", **kwargs)
        ):
            # Not ours (ours are all in the view), yet the kernel holds a route with this
            # key: `replace` would silently take over someone else's route.
            raise RouteNotOwnedError(
                ref,
                f"route {route.dst} table {route.table} metric "
                f"{nf.effective_metric(route)} exists and is not routevpn's; not replacing it",
            )


def _tunnel_link(view: nf.View, index: int | None) -> bool:
    """Is link `index` some routevpn tunnel's? (A route of ours found on any other link,
    moved there by hand, belongs to no tunnel: the tunnel that wants it repairs it.)"""
    link = view.links.get(index) if index is not None else None
    return link is not None and naming.parse_link_alias(link.alias) is not None


def owned_by(route: RouteFacts, index: int) -> bool:
    """Is `route` the tunnel's whose link is `index`? routevpn's protocol number AND that
    link: another tunnel's route (same protocol, another link) is never ours to replace."""
    return route.proto == naming.ROUTE_PROTOCOL and route.oif == index


def _written(route: RoutePlan, index: int, ifname: str | None) -> RouteFacts:
    """The route as the kernel now holds it (what the pass's view records)."""
    return RouteFacts(
        route.dst,
        index,
        ifname,
        route.via,
        nf.effective_metric(route),
        route.table,
        naming.ROUTE_PROTOCOL,
    )
