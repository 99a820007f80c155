"""A tunnel's health probe as pure state: what to probe, and the verdict. No I/O.

`Tracker` is driven by the prober (`agent.prober`) with the times of its sends, replies
and deadlines, so tests drive it with a fake clock. One probe is outstanding at a time:
sent at t, it is answered by a reply before t + interval or missed. `failures` misses in
a row turn the verdict to failing; the first answer turns it back. Until then the
tunnel is presumed healthy: a probe that has not yet had its chance proves nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from routevpn.api.health import source_for
from routevpn.api.tunnel import VpnTunnel

SEQ_MOD = 1 << 16


@dataclass(frozen=True, slots=True)
class Target:
    """What one tunnel's probe sends: from `source` (its interface address), bound to
    `ifname`, to `address`, every `interval` seconds; `failures` misses in a row fail."""

    ifname: str
    source: str
    address: str
    interval: float
    failures: int

    @property
    def version(self) -> int:
        """4 (ICMP) or 6 (ICMPv6)."""
        return ipaddress.ip_address(self.address).version


def target_of(tunnel: VpnTunnel, ifname: str) -> Target | None:
    """The probe a tunnel asks for on interface `ifname`, or None (none asked for, or an
    address outside the tunnel's own interface subnets: refused here again, whatever
    the API server let through)."""
    spec = tunnel.spec
    check = spec.health_check
    if check is None or spec.interface is None:
        return None
    source = source_for(check.address, list(spec.interface.addresses or []))
    if source is None:
        return None
    return Target(ifname, str(source.ip), check.address, check.interval_s, check.effective_failures)


@dataclass
class Tracker:
    """Consecutive misses and the verdict of one probe target."""

    failures: int
    interval: float
    seq: int = 0
    sent_at: float | None = None  # the outstanding probe's send time, None when settled
    misses: int = 0
    failing: bool = False
    sent: int = 0
    answered: int = 0
    missed: int = 0

    def send(self, now: float) -> int:
        """A probe goes out at `now` (an outstanding one is missed first): its sequence."""
        self.expire(now, force=True)
        self.seq = (self.seq + 1) % SEQ_MOD
        self.sent_at = now
        self.sent += 1
        return self.seq

    def reply(self, seq: int, now: float) -> bool:
        """An echo reply with sequence `seq` arrived at `now`; True if the verdict changed.
        A reply to an older probe, or one after its deadline, counts for nothing."""
        if self.sent_at is None or seq != self.seq or now > self.sent_at + self.interval:
            return False
        self.sent_at = None
        self.answered += 1
        self.misses = 0
        changed, self.failing = self.failing, False
        return changed

    def expire(self, now: float, *, force: bool = False) -> bool:
        """The outstanding probe is missed if its deadline passed (or `force`); True if
        the verdict changed."""
        if self.sent_at is None or (not force and now < self.sent_at + self.interval):
            return False
        self.sent_at = None
        self.missed += 1
        self.misses += 1
        if self.failing or self.misses < self.failures:
            return False
        self.failing = True
        return True
