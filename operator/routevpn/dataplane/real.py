"""The real `Driver`: the netlink adapter (this namespace) and the VICI adapter (one charon)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager

from routevpn.dataplane import safety
from routevpn.dataplane.driver import ApplyResult, conn_of
from routevpn.dataplane.facts import Change, Facts, NetlinkFacts
from routevpn.dataplane.ipsec import IpsecAdapter
from routevpn.dataplane.netlink import NetlinkAdapter
from routevpn.dataplane.nft import NftAdapter
from routevpn.dataplane.plan import TunnelPlan


def _host_facts(
    plan: TunnelPlan, facts: NetlinkFacts
) -> tuple[list[safety.HostAddress], list[safety.HostRoute]]:
    own = plan.link.name if plan.link is not None else None
    addrs = [safety.HostAddress(a.ifname, a.address) for a in facts.addresses]
    routes = [
        safety.HostRoute(r.dst, r.ifname or "", r.metric, r.table, r.proto)
        for r in facts.routes
        if r.ifname is not None and r.ifname != own
    ]
    return addrs, routes


class RealDriver:
    """Composes the netlink adapter (this namespace), the VICI adapter (one charon) and
    the nftables adapter (routevpn's table in this namespace)."""

    def __init__(
        self, netlink: NetlinkAdapter, ipsec: IpsecAdapter, nft: NftAdapter | None = None
    ) -> None:
        self.netlink = netlink
        self.ipsec = ipsec
        self.nft = nft or NftAdapter()

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """One netlink dump and one set of VICI lists for the whole pass."""
        self.netlink.begin_pass()
        self.ipsec.begin_pass()
        try:
            yield
        finally:
            self.netlink.end_pass()
            self.ipsec.end_pass()

    async def apply(self, plan: TunnelPlan) -> ApplyResult:
        """Check, then interface/addresses/routes/sysctls, then credentials and conn.

        A connection with start action `start` is brought up by charon itself when it is
        (re)loaded; initiating as well would race charon into a second IKE SA. So this
        initiates (without waiting for IKE) only a connection that was already loaded and
        has no IKE SA (the peer closed it, DPD cleared it). `trap` connections start on
        traffic and `none` ones wait for the peer: never initiated here.
        """
        addrs, routes = _host_facts(plan, await self.netlink.observe_for(plan))
        findings = safety.check(plan, addrs, routes)
        if findings:
            return ApplyResult(plan.ref, findings=tuple(findings))
        changes = await self.netlink.apply(plan)
        loaded = await self.ipsec.load(plan)
        changes += loaded
        just_loaded = any(c.what == "conn" and c.action == "loaded" for c in loaded)
        if plan.conn.child.start_action == "start" and not just_loaded:
            changes += await self.ipsec.initiate(plan.conn.name)
        return ApplyResult(plan.ref, tuple(changes))

    async def remove(self, ref: str) -> list[Change]:
        """Unload the connection (SAs, secrets), then delete the interface."""
        return await self.ipsec.unload(conn_of(ref)) + await self.netlink.remove(ref)

    async def observe(self) -> Facts:
        """Netlink and charon facts together."""
        return Facts(await self.netlink.observe(), await self.ipsec.observe())

    async def clamp_mss(self, links: Mapping[str, int]) -> list[Change]:
        """routevpn's nftables table, replaced as a whole when it differs."""
        return await self.nft.sync(links)

    async def garbage_collect(
        self, desired: Sequence[TunnelPlan], keep: Collection[str] = ()
    ) -> list[Change]:
        """Connections first (so no SA outlives its interface), then links and routes."""
        conns = [p.conn.name for p in desired] + [conn_of(ref) for ref in keep]
        changes = await self.ipsec.garbage_collect(conns)
        return changes + await self.netlink.garbage_collect(desired, keep)
