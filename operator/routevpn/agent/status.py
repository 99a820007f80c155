"""The agent's part of `status`, as the wire dict to server-side-apply, and its diff. Pure.

The agent owns the data-plane conditions and `status.ike` / `status.child`; the
operator owns everything else. What the agent sends is compared with what the server
already holds (its own fields only), so an unchanged pass makes no API write, even
right after a restart. Timestamps derived from charon's relative seconds are kept
from the server's copy while they agree within a tolerance, and counters are only
refreshed every `counters_period` seconds: a quiet, healthy tunnel causes no writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from routevpn.agent.conditions import Cond
from routevpn.api.conditions import AGENT_CONDITIONS, Status
from routevpn.api.status import condition_wire
from routevpn.api.timefmt import k8s_time, parse_k8s_time
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts

#: Default period at which byte/packet counters reach status (metrics carry them live).
DEFAULT_COUNTERS_PERIOD = 60.0
#: Timestamps computed from charon's "N seconds ago" may differ by rounding between passes.
TIME_TOLERANCE = timedelta(seconds=3)

Wire = dict[str, Any]


def merge_conditions(
    new: Iterable[Cond], previous: Iterable[Mapping[str, Any]], generation: int, now: datetime
) -> list[Wire]:
    """Wire conditions: lastTransitionTime kept from `previous` while status is unchanged."""
    prev = {str(c.get("type")): c for c in previous}
    return [
        condition_wire(
            c.type, c.status, c.reason, c.message, generation, prev.get(c.type.value), now
        )
        for c in new
    ]


def _stable(prev: Mapping[str, Any] | None, key: str, value: datetime | None) -> str | None:
    """`value` as a string, or the previous one when within the tolerance of it."""
    if value is None:
        return None
    old = parse_k8s_time(prev.get(key)) if prev else None
    if old is not None and abs(old - value) <= TIME_TOLERANCE:
        return k8s_time(old)
    return k8s_time(value)


def _algs(encr: str, keysize: str, integ: str, dh: str, prf: str | None = None) -> Wire:
    out: Wire = {}
    if encr:
        out["encryption"] = f"{encr}-{keysize}" if keysize else encr
    if integ:
        out["integrity"] = integ
    if prf:
        out["prf"] = prf
    if dh:
        out["dhGroup"] = dh
    return out


def _drop_none(d: Wire) -> Wire:
    return {k: v for k, v in d.items() if v is not None and v != {}}


def ike_status(ike: IkeSaFacts | None, prev: Mapping[str, Any] | None, now: datetime) -> Wire:
    """`status.ike` for the reported IKE SA (state DOWN when there is none)."""
    if ike is None:
        return {"state": "DOWN"}

    def at(seconds: int | None, sign: int) -> datetime | None:
        return None if seconds is None else now + sign * timedelta(seconds=seconds)

    return _drop_none(
        {
            "state": ike.state or "UNKNOWN",
            "establishedAt": _stable(prev, "establishedAt", at(ike.established, -1)),
            "version": int(ike.version) if ike.version.isdigit() else None,
            "algorithms": _algs(
                ike.encr_alg, ike.encr_keysize, ike.integ_alg, ike.dh_group, ike.prf_alg
            ),
            "rekeyAt": _stable(prev, "rekeyAt", at(ike.rekey_time, +1)),
            "reauthAt": _stable(prev, "reauthAt", at(ike.reauth_time, +1)),
        }
    )


@dataclass(frozen=True, slots=True)
class Counters:
    """A CHILD SA's counters and when they were read."""

    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int


def _selectors(child: ChildSaFacts, given: tuple[list[str], list[str]] | None) -> Wire:
    """`localTs`/`remoteTs`: `given`, else `child`'s own; nothing when none are listed."""
    local, remote = given or (list(child.local_ts), list(child.remote_ts))
    return {"localTs": local, "remoteTs": remote} if local or remote else {}


def child_status(
    child: ChildSaFacts | None,
    prev: Mapping[str, Any] | None,
    now: datetime,
    counters_period: float = DEFAULT_COUNTERS_PERIOD,
    inner_mtu: int | None = None,
    selectors: tuple[list[str], list[str]] | None = None,
) -> Wire:
    """`status.child`; counters refreshed from `child` only once `counters_period` passed;
    `selectors`: of all the tunnel's CHILD SAs (`agent.selectors.installed`).

    The same SA (same SPIs) keeps the previously written counters until the period
    is over; a new SA (rekey) reports its own counters at once.
    """
    if child is None:
        return {"state": "DOWN"}
    same_sa = (
        prev is not None
        and prev.get("spiIn") == child.spi_in
        and prev.get("spiOut") == child.spi_out
    )

    def at(seconds: int | None, sign: int) -> datetime | None:
        return None if seconds is None else now + sign * timedelta(seconds=seconds)

    out: Wire = {
        "state": child.state or "UNKNOWN",
        "installedAt": _stable(prev, "installedAt", at(child.install_time, -1)),
        "spiIn": child.spi_in or None,
        "spiOut": child.spi_out or None,
        "algorithms": _algs(child.encr_alg, child.encr_keysize, child.integ_alg, child.dh_group),
        "rekeyAt": _stable(prev, "rekeyAt", at(child.rekey_time, +1)),
        "expiresAt": _stable(prev, "expiresAt", at(child.life_time, +1)),
        "innerMtu": inner_mtu,
        **_selectors(child, selectors),
    }
    fresh = {"bytesIn": child.bytes_in, "bytesOut": child.bytes_out,
             "packetsIn": child.packets_in, "packetsOut": child.packets_out}  # fmt: skip
    prev_at = parse_k8s_time(prev.get("countersAt")) if prev and same_sa else None
    old = {k: prev.get(k) for k in fresh} if prev and same_sa else None
    if prev_at is not None and old is not None and all(isinstance(v, int) for v in old.values()):
        due = (now - prev_at).total_seconds() >= counters_period
        if old == fresh or not due:
            out.update(old)
            out["countersAt"] = k8s_time(prev_at)
            return _drop_none(out)
    out.update(fresh)
    out["countersAt"] = k8s_time(now)
    return _drop_none(out)


def desired_status(
    conds: list[Wire],
    ike: Wire | None = None,
    child: Wire | None = None,
    routes: list[Wire] | None = None,
) -> Wire:
    """The status body the agent applies: its conditions, SA facts and route states."""
    out: Wire = {"conditions": conds}
    if routes:
        out["routes"] = routes
    if ike is not None:
        out["ike"] = ike
    if child is not None:
        out["child"] = child
    return out


def current_agent_status(status: Mapping[str, Any] | None) -> Wire:
    """The agent-owned part of a status as the server holds it (for comparison)."""
    status = status or {}
    mine = {t.value for t in AGENT_CONDITIONS}
    conds = [dict(c) for c in status.get("conditions") or [] if c.get("type") in mine]
    out: Wire = {"conditions": sorted(conds, key=lambda c: str(c.get("type")))}
    for key in ("routes", "ike", "child", "bgp"):
        if status.get(key) is not None:
            out[key] = status[key]
    return out


def needs_write(desired: Wire, current: Mapping[str, Any] | None) -> bool:
    """True when the server's agent-owned status differs from `desired`."""
    want = dict(desired)
    want["conditions"] = sorted(desired.get("conditions", []), key=lambda c: str(c.get("type")))
    return want != current_agent_status(current)


def transitions(
    new: Iterable[Mapping[str, Any]], current: Mapping[str, Any] | None
) -> list[Mapping[str, Any]]:
    """Conditions whose (status, reason) differ from the server's: one Event each."""
    old = {
        str(c.get("type")): (c.get("status"), c.get("reason"))
        for c in (current or {}).get("conditions") or []
    }
    return [c for c in new if old.get(str(c["type"])) != (c["status"], c["reason"])]


def event_type(cond: Mapping[str, Any]) -> str:
    """Normal for a True condition, Warning for False; Unknown transitions are Normal."""
    return "Warning" if cond.get("status") == Status.FALSE.value else "Normal"
