"""The small interface the agent calls: `Driver`, and what its verbs return.

The agent never talks netlink or VICI itself: it hands plans to a `Driver`. Every
verb reports the changes it made, so "a second pass makes zero changes" is provable.
This module imports neither pyroute2 nor vici (an import-linter contract): the real
driver is `dataplane.real`, the in-memory one for unit tests lives in tests/support.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from routevpn.api import naming
from routevpn.dataplane import safety
from routevpn.dataplane.facts import Change, Facts
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

    async def clamp_mss(self, links: Mapping[str, int]) -> list[Change]:
        """Clamp TCP MSS on exactly the interfaces `links` (name → MTU), in routevpn's
        own nftables table (`dataplane.mss`); none: the table is removed."""
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
