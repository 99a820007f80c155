"""An in-memory `Driver` for the agent's unit tests: the same contract, no kernel.

The real driver (`routevpn.dataplane.real`) is proved on real netlink and real charons
in the netns and lab tiers; this one only lets the agent's decisions be tested fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from routevpn.dataplane import builders, safety
from routevpn.dataplane.driver import ApplyResult
from routevpn.dataplane.facts import (
    Change,
    Facts,
    IkeSaFacts,
    IpsecFacts,
    LinkFacts,
    NetlinkFacts,
)
from routevpn.dataplane.plan import TunnelPlan


@dataclass
class FakeDriver:
    """In-memory `Driver` for the agent's unit tests: same contract, no kernel.

    Applying a plan records it; applying an equal plan again reports no change.
    `host_addresses`/`host_routes` feed the same safety checks the real driver runs;
    `fail` maps a tunnel ref to an exception `apply` raises for it; `sas` is what
    `observe` reports charon to hold.
    """

    host_addresses: list[safety.HostAddress] = field(default_factory=list)
    host_routes: list[safety.HostRoute] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)
    plans: dict[str, TunnelPlan] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    sas: list[IkeSaFacts] = field(default_factory=list)
    batches: int = 0
    clamped: dict[str, int] = field(default_factory=dict)
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
        return Facts(NetlinkFacts(links=links), IpsecFacts(conns=conns, sas=tuple(self.sas)))

    async def clamp_mss(self, links: Mapping[str, int]) -> list[Change]:
        """Record the clamped interfaces; a change only when they differ."""
        if dict(links) == self.clamped:
            return []
        self.clamped = dict(links)
        return [Change("node", "nft", "replaced" if links else "deleted")]

    async def garbage_collect(
        self, desired: Sequence[TunnelPlan], keep: Collection[str] = ()
    ) -> list[Change]:
        """Forget every recorded plan neither in `desired` nor kept."""
        wanted = {p.ref for p in desired} | set(keep)
        changes: list[Change] = []
        for ref in sorted(set(self.plans) - wanted):
            changes += await self.remove(ref)
        return changes
