"""TrafficFlowing: real traffic told from the kernel's background packets, with hysteresis.

Pure: every call takes `now`, so tests drive it with an injected clock.

What arrives through an idle tunnel is not nothing. A peer's kernel sends IPv6 packets
of its own on every tunnel interface that has IPv6: duplicate address detection (one
neighbour solicitation per address), MLDv2 reports when it joins its solicited-node
groups (two per group), router solicitations at 4, 8, 16 … s up to once an hour. That is
about ten packets in an interface's first minute and at most a couple per two minutes
after. Judging on "the inbound counter grew", 200 idle tunnels toggled TrafficFlowing
690 times in 420 s. So:

- on: at least `on_packets` packets (default 30, three times the background's first
  minute; a ping every two seconds reaches it) received within the last `window` s
  (default `quiet` / 2; counted from the pass at or before the window's start);
- off: fewer than `off_packets` (default 5, above the background's steady state)
  received within the last `quiet` s; a new SA that never reached "on" is off once it
  has been watched for `quiet` s;
- between the two thresholds nothing changes, and after a change the next one waits
  `hold` s (the first judgement of a new SA does not wait).

Packets are counted across rekeys (a new inbound SPI starts its counter at zero; the
tracker keeps adding), so a rekey is not a change, and across a tunnel's CHILD SAs (one
per family with `spec.child.perFamily`: IPv6 alone through it is traffic too). Every
message is fixed text: a quiet tunnel's status stays byte-for-byte the same from pass to
pass (no writes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from routevpn.api.conditions import Reason, Status
from routevpn.dataplane.facts import ChildSaFacts

#: Seconds without traffic, with the CHILD SA installed, before TrafficFlowing=False.
DEFAULT_QUIET_SECONDS = 120.0
#: Packets within the window that count as traffic.
DEFAULT_ON_PACKETS = 30


@dataclass(frozen=True, slots=True)
class Traffic:
    """TrafficFlowing as the traffic tracker judged it."""

    status: Status
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """The thresholds (module docstring). `window` and `hold` default to `quiet` / 2."""

    quiet: float = DEFAULT_QUIET_SECONDS
    on_packets: int = DEFAULT_ON_PACKETS
    off_packets: int = 0  # 0: a sixth of on_packets, at least 1
    window: float = 0.0
    hold: float = 0.0

    @property
    def on_window(self) -> float:
        """Seconds within which `on_packets` must arrive."""
        return self.window or self.quiet / 2

    @property
    def min_hold(self) -> float:
        """Seconds a judgement stands before it may change again."""
        return self.hold or self.quiet / 2

    @property
    def off_below(self) -> int:
        """Fewer packets than this within `quiet` s is no traffic."""
        return self.off_packets or max(1, self.on_packets // 6)


@dataclass
class _Seen:
    raw: dict[str, int]  # each installed SA's packets_in at the last look, by inbound SPI
    total: int  # packets received since the first SA was seen, across rekeys
    first: float
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    status: Status = Status.UNKNOWN
    changed: float = 0.0


class TrafficTracker:
    """Judges TrafficFlowing per tunnel from its CHILD SAs' inbound packet counters."""

    def __init__(self, policy: TrafficPolicy | None = None) -> None:
        self.policy = policy or TrafficPolicy()
        self._seen: dict[str, _Seen] = {}

    def forget(self, ref: str) -> None:
        """Drop what is known of tunnel `ref`."""
        self._seen.pop(ref, None)

    def judge(self, ref: str, children: Sequence[ChildSaFacts], now: float) -> Traffic | None:
        """TrafficFlowing for `ref` given its CHILD SAs now (the newest of each name); None
        when none is installed."""
        installed = {c.spi_in: c.packets_in for c in children if c.state == "INSTALLED"}
        if not installed:
            self._seen.pop(ref, None)
            return None
        seen = self._count(ref, installed, now)
        status = self._decide(seen, now)
        if status is not seen.status:
            seen.status, seen.changed = status, now
        return self._verdict(seen.status)

    def _count(self, ref: str, installed: dict[str, int], now: float) -> _Seen:
        """Add what arrived since the last look to the tunnel's running total."""
        seen = self._seen.get(ref)
        if seen is None:
            seen = self._seen[ref] = _Seen(installed, 0, now)
            seen.samples.append((now, 0))
            return seen
        for spi, packets in installed.items():  # a new SPI (rekeyed) counts from zero
            seen.total += max(0, packets - seen.raw.get(spi, 0))
        seen.raw = installed
        seen.samples.append((now, seen.total))
        # keep one sample at least `quiet` old (the base of the longest count), no older
        span = max(self.policy.quiet, self.policy.on_window)
        while len(seen.samples) > 1 and seen.samples[1][0] <= now - span:
            seen.samples.popleft()
        return seen

    @staticmethod
    def _received(seen: _Seen, now: float, span: float) -> int:
        """Packets received within the last `span` s, counted from the newest look at or
        before its start (passes look every few seconds, not continuously: the count may
        reach back one pass further, never fall short), or since the first look."""
        base = seen.samples[0][1]
        for t, total in seen.samples:
            if t > now - span:
                break
            base = total
        return seen.total - base

    def _decide(self, seen: _Seen, now: float) -> Status:
        p = self.policy
        if seen.status is not Status.UNKNOWN and now - seen.changed < p.min_hold:
            return seen.status
        if self._received(seen, now, p.on_window) >= p.on_packets:
            return Status.TRUE
        watched = now - seen.first >= p.quiet
        if seen.status is Status.UNKNOWN:
            return Status.FALSE if watched else Status.UNKNOWN
        quiet = self._received(seen, now, p.quiet) < p.off_below
        if seen.status is Status.TRUE and watched and quiet:
            return Status.FALSE
        return seen.status

    def _verdict(self, status: Status) -> Traffic:
        p = self.policy
        if status is Status.TRUE:
            return Traffic(
                Status.TRUE,
                Reason.FLOWING,
                f"packets arrive through the tunnel (at least {p.on_packets} within "
                f"{p.on_window:g}s)",
            )
        if status is Status.FALSE:
            return Traffic(
                Status.FALSE,
                Reason.NO_TRAFFIC_RECEIVED,
                f"no traffic received through the tunnel: fewer than {p.on_packets} packets "
                f"within {p.on_window:g}s while the SA is installed (the kernels' own "
                "background packets, such as IPv6 router solicitations, stay below that): "
                "check that the peer routes traffic into its side of the tunnel (and that "
                "DPD or a monitoring ping runs if the link should never be idle)",
            )
        return Traffic(
            Status.UNKNOWN,
            Reason.PENDING,
            f"the CHILD SA is new: traffic is judged once {p.on_packets} packets arrive "
            f"within {p.on_window:g}s, or after {p.quiet:g}s",
        )
