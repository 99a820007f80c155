"""The small interface the agent calls, its real implementation and an in-memory fake.

The agent never talks netlink or VICI itself: it hands plans to a `Driver`. Every
verb reports the changes it made, so "a second pass makes zero changes" is provable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from routevpn.api import naming
from routevpn.dataplane import builders, safety
from routevpn.dataplane.facts import Change, Facts, IpsecFacts, LinkFacts, NetlinkFacts
from routevpn.dataplane.ipsec import IpsecAdapter
from routevpn.dataplane.netlink import NetlinkAdapter
from routevpn.dataplane.plan import TunnelPlan


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one `apply` did: the changes, or the findings that stopped it."""

    ref: str
    changes: tuple[Change, ...] = ()
    findings: tuple[safety.Finding, ...] = ()

    @property
    def applied(self) -> bool:
        """False when a safety finding kept the plan from being applied at all."""
        return not self.findings

    @property
    def changed(self) -> bool:
        """True when the node was changed."""
        return bool(self.changes)


def conn_of(ref: str) -> str:
    """The connection name of tunnel `namespace/name`."""
    namespace, _, name = ref.partition("/")
    return naming.conn_name(namespace, name)


class Driver(Protocol):
    """What the agent needs from a node's data plane."""

    def batch(self) -> AbstractAsyncContextManager[None]:
        """A pass: within it the node is observed once and every verb shares that view.

        The view follows the driver's own changes, so checks made for one tunnel see
        what earlier tunnels of the same pass changed. Outside it every verb reads anew.
        """
        ...

    async def apply(self, plan: TunnelPlan) -> ApplyResult:
        """Make the node match `plan` (checked first; nothing half-applied on findings)."""
        ...

    async def remove(self, ref: str) -> list[Change]:
        """Remove everything of tunnel `ref` (interface, routes, connection, secrets)."""
        ...

    async def observe(self) -> Facts:
        """What the node has now."""
        ...

    async def garbage_collect(
        self, desired: Sequence[TunnelPlan], keep: Collection[str] = ()
    ) -> list[Change]:
        """Remove what routevpn owns and no desired plan accounts for.

        `keep` names tunnels (``namespace/name``) that still exist but have no plan right
        now (a Secret not delivered yet, a spec being fixed): nothing of theirs is
        removed, just as a running pass leaves a blocked tunnel's configuration alone.
        """
        ...


def _host_facts(
    plan: TunnelPlan, facts: NetlinkFacts
) -> tuple[list[safety.HostAddress], list[safety.HostRoute]]:
    own = plan.link.name if plan.link is not None else None
    addrs = [safety.HostAddress(a.ifname, a.address) for a in facts.addresses]
    routes = [
        safety.HostRoute(r.dst, r.ifname or "", r.metric, r.table)
        for r in facts.routes
        if r.ifname is not None and r.ifname != own
    ]
    return addrs, routes


class RealDriver:
    """Composes the netlink adapter (this namespace) and the VICI adapter (one charon)."""

    def __init__(self, netlink: NetlinkAdapter, ipsec: IpsecAdapter) -> None:
        self.netlink = netlink
        self.ipsec = ipsec

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

    async def garbage_collect(
        self, desired: Sequence[TunnelPlan], keep: Collection[str] = ()
    ) -> list[Change]:
        """Connections first (so no SA outlives its interface), then links and routes."""
        conns = [p.conn.name for p in desired] + [conn_of(ref) for ref in keep]
        changes = await self.ipsec.garbage_collect(conns)
        return changes + await self.netlink.garbage_collect(desired, keep)


@dataclass
class FakeDriver:
    """In-memory `Driver` for the agent's unit tests: same contract, no kernel.

    Applying a plan records it; applying an equal plan again reports no change.
    `host_addresses`/`host_routes` feed the same safety checks the real driver runs;
    `fail` maps a tunnel ref to an exception `apply` raises for it.
    """

    host_addresses: list[safety.HostAddress] = field(default_factory=list)
    host_routes: list[safety.HostRoute] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)
    plans: dict[str, TunnelPlan] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    batches: int = 0
    in_batch: bool = False

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Count passes; `in_batch` tells whether a verb runs inside one."""
        self.batches += 1
        self.in_batch = True
        try:
            yield
        finally:
            self.in_batch = False

    async def apply(self, plan: TunnelPlan) -> ApplyResult:
        """Record `plan`; report what would change compared with the last one."""
        self.calls.append(f"apply {plan.ref}")
        if plan.ref in self.fail:
            raise self.fail[plan.ref]
        findings = safety.check(plan, self.host_addresses, self.host_routes)
        if findings:
            return ApplyResult(plan.ref, findings=tuple(findings))
        old = self.plans.get(plan.ref)
        changes: list[Change] = []
        if (old is None or old.link != plan.link) and plan.link is not None:
            changes.append(Change(plan.ref, "link", "created", plan.link.name))
        if old is None or old.addresses != plan.addresses:
            changes += [Change(plan.ref, "address", "set", str(a)) for a in plan.addresses]
        if old is None or old.routes != plan.routes:
            changes += [Change(plan.ref, "route", "replaced", str(r.dst)) for r in plan.routes]
        if old is None or builders.build_sysctls(old) != builders.build_sysctls(plan):
            changes += [
                Change(plan.ref, "sysctl", "set", f"{s.path}={s.value}")
                for s in builders.build_sysctls(plan)
            ]
        if old is None or old.auth != plan.auth:
            changes.append(Change(plan.ref, "secret", "loaded", plan.conn.name))
        if old is None or builders.build_conn(old) != builders.build_conn(plan):
            changes.append(Change(plan.ref, "conn", "loaded", plan.conn.name))
        self.plans[plan.ref] = plan
        return ApplyResult(plan.ref, tuple(changes))

    async def remove(self, ref: str) -> list[Change]:
        """Forget tunnel `ref`."""
        self.calls.append(f"remove {ref}")
        plan = self.plans.pop(ref, None)
        return [] if plan is None else [Change(ref, "conn", "unloaded", plan.conn.name)]

    async def observe(self) -> Facts:
        """Links and connections of the recorded plans."""
        links = tuple(
            LinkFacts(
                index=i + 2,
                name=p.link.name,
                kind=p.link.kind,
                alias=p.link.alias,
                mtu=p.link.mtu,
                up=True,
            )
            for i, p in enumerate(self.plans.values())
            if p.link is not None
        )
        conns = tuple(p.conn.name for p in self.plans.values())
        return Facts(NetlinkFacts(links=links), IpsecFacts(conns=conns))

    async def garbage_collect(
        self, desired: Sequence[TunnelPlan], keep: Collection[str] = ()
    ) -> list[Change]:
        """Forget every recorded plan neither in `desired` nor kept."""
        wanted = {p.ref for p in desired} | set(keep)
        changes: list[Change] = []
        for ref in sorted(set(self.plans) - wanted):
            changes += await self.remove(ref)
        return changes
