"""Which interfaces get their TCP MSS clamped: the desired state of routevpn's nftables
table (`dataplane.mss`), kept across passes.

Each configured tunnel with an interface contributes that interface and the MTU its
plan gives it (which follows the inner MTU, `agent.mtu`); a pass over some tunnels
updates theirs, and the driver is handed the whole node's set, so the table is
replaced only when it differs and goes when the last tunnel does. A tunnel that can't
be planned at the moment keeps its entry, as it keeps its interface. With the clamp
off (`--no-mss-clamp`) the set is empty: the table is removed.
"""

from __future__ import annotations

import logging

from routevpn.agent.work import Key
from routevpn.dataplane.driver import Driver
from routevpn.dataplane.errors import DataplaneError
from routevpn.dataplane.facts import Change
from routevpn.dataplane.plan import TunnelPlan

log = logging.getLogger(__name__)


class ClampSet:
    """Interface name and MTU of each configured tunnel (none when disabled)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._links: dict[Key, tuple[str, int]] = {}
        #: The last attempt to apply it failed (a warning once, not every pass).
        self.failing = False

    def note(self, key: Key, plan: TunnelPlan) -> None:
        """Tunnel `key` was applied with `plan`."""
        if plan.link is None:
            self._links.pop(key, None)
        else:
            self._links[key] = (plan.link.name, plan.link.mtu)

    def forget(self, key: Key) -> None:
        """Tunnel `key` is gone from the node."""
        self._links.pop(key, None)

    def wanted(self) -> dict[str, int]:
        """Interface → MTU to clamp for (the smaller MTU if two plans name one name)."""
        if not self.enabled:
            return {}
        out: dict[str, int] = {}
        for name, mtu in self._links.values():
            out[name] = min(mtu, out.get(name, mtu))
        return out

    async def apply(self, driver: Driver) -> list[Change]:
        """Hand the node's set to `driver`; its changes (none when it failed: logged
        once until it works again, the next pass retries)."""
        try:
            changes = await driver.clamp_mss(self.wanted())
        except DataplaneError as e:
            if not self.failing:
                log.warning("TCP MSS clamp not in place: %s", e)
            self.failing = True
            return []
        self.failing = False
        for change in changes:
            log.info("%s", change)
        return changes
