"""Which replica acts: the one the kopf peering object names, and only while it does.

kopf pauses its watches when a replica of higher priority appears, but work already
queued (our worker's queue, kopf's per-object queues) keeps running: two replicas would
then allocate from two views and hand one key to two tunnels. So the worker asks `Leader`
before every decision. The answer comes from the same ClusterKopfPeering kopf uses (our
identity is passed to kopf, so we find ourselves in it), read every PERIOD seconds.

When a replica becomes the active one its view may be stale (its watches were paused
while the other replica wrote): `on_activate` re-reads the tunnels before any decision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from routevpn.controller.metrics import ACTIVE, PEERS

log = logging.getLogger("routevpn.operator")

#: Seconds between reads of the peering object: kopf's own pause reacts on a watch, this
#: bounds how long a replica that lost the lead may still act on its queue.
PERIOD = 1.0


def _parse(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def live_peers(status: Mapping[str, Any], now: datetime) -> dict[str, int]:
    """Peers (identity -> priority) whose lease has not run out (kopf's `status` layout)."""
    out: dict[str, int] = {}
    for ident, info in status.items():
        if not isinstance(info, Mapping):
            continue
        seen = _parse(info.get("lastseen"))
        lifetime = float(info.get("lifetime") or 60)
        if seen is None or seen.tzinfo is None:
            continue
        if seen + timedelta(seconds=lifetime) > now:
            out[str(ident)] = int(info.get("priority") or 0)
    return out


def is_active(status: Mapping[str, Any], me: str, priority: int, now: datetime) -> bool:
    """True when we are registered and no other live peer has our priority or a higher one.

    Equal priorities pause everyone in kopf; they pause us too.
    """
    peers = live_peers(status, now)
    if me not in peers:
        return False
    return all(p < priority for ident, p in peers.items() if ident != me)


class Leader:
    """Tracks whether this replica may act; `wait()` blocks while it may not."""

    def __init__(self, identity: str, priority: int) -> None:
        self.identity = identity
        self.priority = priority
        self._active = asyncio.Event()
        ACTIVE.set(0)

    @property
    def active(self) -> bool:
        """May this replica decide and write now?"""
        return self._active.is_set()

    async def wait(self) -> None:
        """Return once this replica is the active one."""
        await self._active.wait()

    async def run(
        self,
        read: Callable[[], Awaitable[Mapping[str, Any] | None]],
        on_activate: Callable[[], Awaitable[None]],
    ) -> None:
        """Follow the peering object (`read` returns its status) until cancelled."""
        while True:
            try:
                status = await read() or {}
                now = datetime.now(UTC)
                PEERS.set(len(live_peers(status, now)))
                should = is_active(status, self.identity, self.priority, now)
                if should and not self.active:
                    # Catch up before the first decision: what the other replica wrote
                    # while our watches were paused is in the API, not in our view.
                    await on_activate()
                    log.info("active: this replica now places and allocates tunnels")
                    self._active.set()
                elif not should and self.active:
                    log.info("standby: another replica of higher priority is active")
                    self._active.clear()
                ACTIVE.set(1 if self.active else 0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Can't tell: stop acting (a standby that acts is worse than a pause).
                log.warning("peering not readable (%s): standing by", type(e).__name__)
                self._active.clear()
                ACTIVE.set(0)
            await asyncio.sleep(PERIOD)  # a polling period, not a wait for an outcome
