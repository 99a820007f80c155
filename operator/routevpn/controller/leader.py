"""Which replica acts: the one the kopf peering object names, and only while it does.

kopf pauses its watches when a replica of higher priority appears, but work already
queued (our worker's queue, kopf's per-object queues) keeps running: two replicas would
then allocate from two views and hand one key to two tunnels. So the worker asks `Leader`
before every decision and before every write. The answer comes from the same
ClusterKopfPeering kopf uses (our identity is passed to kopf, so we find ourselves in it),
read every PERIOD seconds.

Leadership is a lease, not a flag: a read that names us lets us act for GRANT seconds
counted from when the read was sent. A replica whose reads stall (a loaded machine, a
slow API server) stops acting by itself instead of acting on an old answer. A replica
that finds itself the leader while other replicas are live waits GRANT before acting:
every read another replica sent before ours could see us has then run out, so the old
leader has stopped before the new one starts (without this wait both act for up to a
polling period, which is how a standby came to write during a hand-over).

When a replica becomes the active one its view may be stale (its watches were paused
while the other replica wrote): `on_activate` re-reads before any decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from routevpn.controller.metrics import ACTIVE, PEERS, PRIORITY

log = logging.getLogger("routevpn.operator")
#: Reads the peering object once: its status, or None when it does not exist.
ReadPeering = Callable[[], Awaitable[Mapping[str, Any] | None]]

#: Seconds between reads of the peering object: kopf's own pause reacts on a watch, this
#: bounds how long a replica that lost the lead may still act on its queue.
PERIOD = 1.0
#: Seconds a read naming us lets us act (from when it was sent). Several periods, so one
#: slow read does not pause a healthy leader; short, so a hand-over waits only this long.
GRANT = 5.0


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

    def __init__(
        self, identity: str, priority: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.identity = identity
        self.priority = priority
        self._clock = clock
        #: The last read named us, the hand-over wait is over and the view was re-read.
        self._leading = False
        #: Until when (clock) the last read naming us lets us act; None: just became the
        #: leader, granted by the next read (sent after the catch-up).
        self._granted_until: float | None = None
        #: When (clock) a read first named us while other replicas were live (hand-over).
        self._named_since: float | None = None
        #: Set (and replaced) after every read: waiters look again then.
        self._tick = asyncio.Event()
        ACTIVE.set(0)
        PRIORITY.set(priority)

    @property
    def active(self) -> bool:
        """May this replica decide and write now?"""
        until = self._granted_until
        return self._leading and until is not None and self._clock() < until

    async def wait(self) -> None:
        """Return once this replica is the active one."""
        while not self.active:
            await self._tick.wait()

    def _wake(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def step(
        self,
        read: ReadPeering,
        on_activate: Callable[[], Awaitable[None]],
    ) -> bool:
        """Read the peering once and act on it; True when it should be read again at once
        (we have just become active: the grant must come from a read after the catch-up)."""
        try:
            sent = self._clock()
            status = await read() or {}
            now = datetime.now(UTC)
            peers = live_peers(status, now)
            PEERS.set(len(peers))
            if not is_active(status, self.identity, self.priority, now):
                if self._leading:
                    log.info("standby: another replica of higher priority is active")
                self._leading = False
                self._named_since = None
                return False
            if self._leading:
                if self._granted_until is None or sent < self._granted_until:
                    self._granted_until = sent + GRANT
                    return False
                # Our last grant ran out before this read was sent: for a while we could
                # not tell who leads, so take the lead again as if new.
                log.warning("lease lapsed (peering reads too slow): catching up again")
                self._leading = False
            others = len(peers) > 1
            if self._named_since is None:
                self._named_since = self._clock()
            if others and self._clock() - self._named_since < GRANT:
                return False  # hand-over: the previous leader's grant has not run out yet
            # Catch up before the first decision: what the other replica wrote while our
            # watches were paused is in the API, not in our view.
            await on_activate()
            self._named_since = None
            self._leading = True
            self._granted_until = None
            log.info("active: this replica now places and allocates tunnels")
            return True
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Can't tell: stop acting (a standby that acts is worse than a pause).
            log.warning("peering not readable (%s): standing by", type(e).__name__)
            self._leading = False
            self._named_since = None
            return False
        finally:
            ACTIVE.set(1 if self.active else 0)
            self._wake()

    async def run(
        self,
        read: ReadPeering,
        on_activate: Callable[[], Awaitable[None]],
    ) -> None:
        """Follow the peering object (`read` returns its status) until cancelled."""
        while True:
            if not await self.step(read, on_activate):
                await asyncio.sleep(PERIOD)  # a polling period, not a wait for an outcome
