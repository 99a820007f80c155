"""Leader election on a coordination.k8s.io/v1 Lease, by client-go's rules.

Three durations, with client-go's names and defaults:

- lease duration (15 s): how long a standby waits, after it last saw the Lease change,
  before it takes the Lease over. Counted on the standby's own clock from when *it* saw
  the change, never from the renewTime written in the Lease: another host's clock wrote
  that, and clocks of two hosts can't be compared.
- renew deadline (10 s): how long the leader acts after it *sent* its last successful
  renewal. Shorter than the lease duration, so a leader that stalls (a paused process, an
  API server it can't reach) stops acting before any standby may take over: a standby
  saw that renewal no earlier than it was sent and waits a whole lease duration from
  then. The 5 s between the two cover writes still in flight and clock-rate drift.
- retry period (2 s): between two attempts to take or renew the Lease.

Every write is guarded by resourceVersion: of two standbys racing for an expired Lease
one gets 409 and stays standby; a leader whose renewal gets 409 learns that another
replica took over. A leader whose renewals merely failed for a while stops acting when
its deadline passes, and keeps trying: a renewal that succeeds against the
resourceVersion it last wrote proves nobody took the Lease meanwhile, so it goes on.
Once another replica *has* taken over, the term is over for good (`run` returns): the
owner's view holds decisions of that term which the new leader may have undone, so the
owner starts afresh (the operator exits and is restarted, as client-go's users do).

On a graceful stop `release` clears the holder, so a standby takes over at its next
attempt instead of a whole lease duration later.

Why not the client's own `kubernetes.leaderelection`: it blocks threads in
`time.sleep` and reads the wall clock (a clock step moves every expiry, and no clock can
be injected into a test); its leader learns of a lost lease only when the renew loop
gives up, with no "acting until" to check before each write; it never releases, and its
LeaseLock does not count leaseTransitions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from kubernetes.client import ApiException

log = logging.getLogger("routevpn.lease")


class LeaseConflictError(Exception):
    """409: the Lease was created, or changed, by someone else since it was read."""


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec as the election reads and writes it."""

    #: Who holds the Lease; "" when nobody does (released).
    holder: str = ""
    duration_seconds: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    #: The version read, to guard the next write; None for a Lease not yet created.
    resource_version: str | None = None

    def same_claim(self, other: LeaseRecord | None) -> bool:
        """The same spec (a write that changed nothing else doesn't show a live holder)."""
        return other is not None and replace(self, resource_version=None) == replace(
            other, resource_version=None
        )


class LeaseStore(Protocol):
    """The three calls the election makes on its one Lease."""

    #: "namespace/name", for log lines.
    ref: str

    async def get(self) -> LeaseRecord | None:
        """The Lease, or None when it does not exist."""

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        """Create it; LeaseConflictError when it exists already."""

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        """Replace it; LeaseConflictError unless `record.resource_version` is current."""


class Clock(Protocol):
    """Time as the election sees it (a fake one in tests)."""

    def monotonic(self) -> float:
        """Seconds that only move forward: every duration is measured on this."""

    def wall(self) -> datetime:
        """The time written into the Lease, for people and other tools to read."""

    async def sleep(self, seconds: float) -> None:
        """Wait between two attempts."""


class SystemClock:
    """The process's own clocks."""

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    def wall(self) -> datetime:
        """Now, in UTC."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep`."""
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Timings:
    """client-go's three durations (see the module docstring), in seconds."""

    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        # A deadline at or past the lease duration would let a stalled leader act while
        # a standby already has the Lease; a retry period at or past the deadline would
        # let a healthy leader lapse between two renewals.
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "lease timings need 0 < retry period < renew deadline < lease duration, "
                f"got {self.retry_period} < {self.renew_deadline} < {self.lease_duration}"
            )


class LeaderElector:
    """One candidate for one Lease: `active` while it may act, `wait()` until it may."""

    def __init__(
        self,
        store: LeaseStore,
        identity: str,
        timings: Timings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.identity = identity
        self._store = store
        self._timings = timings or Timings()
        self._clock: Clock = clock or SystemClock()
        #: Until when (monotonic) our last renewal lets us act.
        self._active_until = -math.inf
        #: The Lease as we last wrote it while our term lasts; None: standing by.
        self._mine: LeaseRecord | None = None
        #: The Lease as last read while standing by, and when (monotonic) it last changed.
        self._seen: LeaseRecord | None = None
        self._seen_at = -math.inf
        #: Another replica took the Lease over (or we released it): never lead again.
        self._over = False
        #: Set (and replaced) after every attempt: waiters look again then.
        self._tick = asyncio.Event()

    @property
    def active(self) -> bool:
        """May this replica decide and write now? Read the clock, not a flag: a leader
        whose renewals stall stops by itself at its renew deadline."""
        return not self._over and self._clock.monotonic() < self._active_until

    @property
    def over(self) -> bool:
        """Has this candidate's term ended for good (taken over, or released)?"""
        return self._over

    async def wait(self) -> None:
        """Return once this replica may act."""
        while not self.active:
            await self._tick.wait()

    async def run(self) -> None:
        """Take the Lease when free and keep it renewed, one attempt every retry period.

        Returns once another replica has taken the Lease over from us; API errors are
        logged and retried (while the leader's deadline runs)."""
        failing = False
        while not self._over:
            try:
                await self.step()
            except Exception as e:
                if not failing:
                    log.warning("lease %s: %s (retrying)", self._store.ref, _why(e))
                failing = True
            else:
                if failing:
                    log.info("lease %s: reachable again", self._store.ref)
                failing = False
            if self._over:
                return
            await self._clock.sleep(self._timings.retry_period)

    async def step(self) -> None:
        """One attempt: renew the Lease when we hold it, else take it when it is free."""
        try:
            if self._over:
                return
            if self._mine is not None:
                await self._renew(self._mine)
            else:
                await self._acquire()
        finally:
            self._wake()

    async def release(self) -> None:
        """Stop acting and give the Lease up (a graceful stop): a standby takes it at its
        next attempt. Call it only once nothing acts on this replica's lead any more."""
        mine, self._mine = self._mine, None
        self._active_until = -math.inf
        self._over = True
        self._wake()
        if mine is None:
            return
        try:
            try:
                await self._store.replace(self._freed(mine))
            except LeaseConflictError:
                # A renewal cut short by the stop may have landed after all: still ours
                # when it names us with the same transitions.
                current = await self._store.get()
                if current is None or not self._ours(current, mine):
                    return  # taken over already: nothing of ours to give up
                await self._store.replace(self._freed(current))
        except Exception as e:
            log.warning("lease %s: not released (%s)", self._store.ref, _why(e))
            return
        log.info("lease %s: released by %s", self._store.ref, self.identity)

    def _freed(self, mine: LeaseRecord) -> LeaseRecord:
        return replace(mine, holder="", duration_seconds=1, renew_time=self._clock.wall())

    def _ours(self, current: LeaseRecord, mine: LeaseRecord) -> bool:
        """Is `current` still of the term `mine` is of (nobody took over since)?"""
        return current.holder == self.identity and current.transitions == mine.transitions

    # --- the two halves of an attempt ------------------------------------------------

    async def _renew(self, mine: LeaseRecord) -> None:
        was_active = self.active
        sent = self._clock.monotonic()
        renewed = replace(
            mine, renew_time=self._clock.wall(), duration_seconds=self._timings.lease_duration
        )
        try:
            self._mine = await self._store.replace(renewed)
        except LeaseConflictError:
            current = await self._store.get()
            if current is not None and self._ours(current, mine):
                # One of our own renewals landed though its answer never came back: still
                # our term. The next attempt renews from this version.
                self._mine = current
                return
            self._end(current)
            return
        self._active_until = sent + self._timings.renew_deadline
        if not was_active:
            log.info("lease %s: renewed again, %s acts again", self._store.ref, self.identity)

    async def _acquire(self) -> None:
        current = await self._store.get()
        now = self._clock.monotonic()
        wall = self._clock.wall()
        duration = self._timings.lease_duration
        if current is None:
            sent = self._clock.monotonic()
            fresh = LeaseRecord(self.identity, duration, wall, wall, 0)
            try:
                written = await self._store.create(fresh)
            except LeaseConflictError:
                return  # another replica created it first
            self._begin(written, sent)
            return
        if not current.same_claim(self._seen):
            if current.holder != (self._seen.holder if self._seen else None) and current.holder:
                log.info("lease %s: held by %s", self._store.ref, current.holder)
            self._seen, self._seen_at = current, now
        if current.holder and current.holder != self.identity:
            if now < self._seen_at + current.duration_seconds:
                return  # a live leader: it renewed within its lease duration, by our clock
            log.info(
                "lease %s: %s did not renew it for %ds, taking over",
                self._store.ref,
                current.holder,
                current.duration_seconds,
            )
        if current.holder == self.identity:
            # Our own take-over landed though its answer never came back.
            want = replace(current, renew_time=wall, duration_seconds=duration)
        else:
            want = LeaseRecord(
                self.identity,
                duration,
                wall,
                wall,
                current.transitions + 1,
                current.resource_version,
            )
        sent = self._clock.monotonic()
        try:
            written = await self._store.replace(want)
        except LeaseConflictError:
            return  # another standby was quicker
        self._begin(written, sent)

    def _begin(self, written: LeaseRecord, sent: float) -> None:
        self._mine = written
        self._active_until = sent + self._timings.renew_deadline
        log.info(
            "lease %s: acquired by %s (transitions %d): this replica leads",
            self._store.ref,
            self.identity,
            written.transitions,
        )

    def _end(self, current: LeaseRecord | None) -> None:
        self._mine = None
        self._active_until = -math.inf
        self._over = True
        holder = (current.holder if current else "") or "nobody"
        log.warning(
            "lease %s: now held by %s, %s no longer leads", self._store.ref, holder, self.identity
        )

    def _wake(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()


def _why(e: Exception) -> str:
    if isinstance(e, ApiException):
        return f"API error {e.status} {e.reason}"
    return type(e).__name__
