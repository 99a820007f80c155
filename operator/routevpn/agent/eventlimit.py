"""A per-tunnel limit on Events of conditions that follow the traffic. Pure (`now` passed in).

Status always tells the truth at once; an Event is a notice to people and a write to
the API server. TrafficFlowing turning True or False follows what users do with their
tunnels, not what routevpn does, so those Events are limited per tunnel: one per
`interval` seconds, and the ones in between are left out (counted in the agent's
metrics). TrafficFlowing turning Unknown (the CHILD SA is new, or gone) follows the SA,
as ChildSaInstalled's own Events do: not limited, and it uses none of the allowance, so
the first verdict on a new tunnel is always posted. Conditions that follow routevpn's
own state (Configured, IkeEstablished, ...) are not limited.
"""

from __future__ import annotations

from routevpn.api.conditions import ConditionType, Status

#: Seconds between two TrafficFlowing Events of one tunnel.
DEFAULT_EVENT_INTERVAL = 600.0
#: Condition types whose Events are limited.
LIMITED = frozenset({ConditionType.TRAFFIC_FLOWING.value})


class EventLimiter:
    """Allows one True/False Event per (tunnel, condition type) per `interval` for the
    `LIMITED` types."""

    def __init__(self, interval: float = DEFAULT_EVENT_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}

    def allow(self, ref: str, ctype: str, status: str, now: float) -> bool:
        """True when an Event of `ctype` turning `status` for tunnel `ref` may be posted
        at `now` (and then counts as posted)."""
        if ctype not in LIMITED or status == Status.UNKNOWN.value:
            return True
        last = self._last.get((ref, ctype))
        if last is not None and now - last < self.interval:
            return False
        self._last[(ref, ctype)] = now
        return True

    def forget(self, ref: str) -> None:
        """Drop what is known of tunnel `ref` (it left this node)."""
        for key in [k for k in self._last if k[0] == ref]:
            del self._last[key]
