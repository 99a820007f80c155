"""Allocation of the tunnel interface on a node: key / if_id, name, inside addresses. Pure.

One number space per node is shared by VTI keys and XFRM if_ids: a mark is a mark, and one
space means a VTI and an XFRM interface can never match each other's traffic. A tunnel
keeps what it holds (stable across restarts and resyncs) unless an earlier tunnel
(creationTimestamp, then namespace/name) asks for it explicitly. A value a tunnel asks
for explicitly that another tunnel claims first is a conflict, reported on the later one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from routevpn.api import naming
from routevpn.api.conditions import Reason
from routevpn.api.fields import InterfaceType
from routevpn.api.spec import VpnTunnelSpec


@dataclass(frozen=True, slots=True)
class Holder:
    """What another tunnel on the same node claims: asked for, or already holds."""

    ref: str
    order: tuple[str, str, str]
    number: int | None
    number_explicit: bool
    ifname: str | None
    ifname_explicit: bool
    addresses: frozenset[str]


@dataclass(frozen=True, slots=True)
class Allocation:
    """The interface for status.interface, or a conflict (reason, message, other)."""

    interface: dict[str, object] | None
    reason: str = ""
    message: str = ""
    other: str = ""


def inside_ips(spec: VpnTunnelSpec) -> frozenset[str]:
    """The inside addresses as bare IPs (prefix lengths don't make two addresses differ)."""
    if spec.interface is None:
        return frozenset()
    return frozenset(str(ipaddress.ip_interface(a).ip) for a in spec.interface.addresses or [])


def requested(spec: VpnTunnelSpec) -> tuple[InterfaceType, int | None, str | None]:
    """Interface type, explicit key/if_id, explicit name."""
    iface = spec.interface
    kind = (iface.type if iface and iface.type else None) or InterfaceType.VTI
    number = (iface.key if kind is InterfaceType.VTI else iface.if_id) if iface else None
    return kind, number, iface.name if iface else None


def holder_for(
    ref: str, order: tuple[str, str, str], spec: VpnTunnelSpec, held: dict[str, object] | None
) -> Holder:
    """The claims of a tunnel: what its spec asks for, else what its status holds."""
    _, number, name = requested(spec)
    held_number = None
    if held:
        raw = held.get("key") if held.get("key") is not None else held.get("ifId")
        held_number = int(raw) if isinstance(raw, int) else None
    held_name = str(held["name"]) if held and held.get("name") else None
    return Holder(
        ref=ref,
        order=order,
        number=number if number is not None else held_number,
        number_explicit=number is not None,
        ifname=name if name is not None else held_name,
        ifname_explicit=name is not None,
        addresses=inside_ips(spec),
    )


def allocate(
    me: Holder, spec: VpnTunnelSpec, others: Iterable[Holder], lo: int, hi: int
) -> Allocation:
    """The interface for tunnel `me` given the other tunnels on its node."""
    kind, number, name = requested(spec)
    others = list(others)
    earlier = [o for o in others if o.order < me.order]

    # Explicit asks lose to anything an earlier tunnel claims.
    if number is not None:
        for o in earlier:
            if o.number == number:
                reason = Reason.KEY_IN_USE if kind is InterfaceType.VTI else Reason.IF_ID_IN_USE
                what = "key" if kind is InterfaceType.VTI else "ifId"
                return _conflict(reason, f"{what} {number} is used by {o.ref} on this node", o)
    if name is not None:
        for o in earlier:
            if o.ifname == name:
                msg = f"interface name {name} is used by {o.ref} on this node"
                return _conflict(Reason.INTERFACE_NAME_IN_USE, msg, o)
    for o in earlier:
        shared = me.addresses & o.addresses
        if shared:
            msg = f"inside address {min(shared)} is used by {o.ref} on this node"
            return _conflict(Reason.ADDRESS_IN_USE, msg, o)

    # Explicit asks also wait while a later tunnel still holds the value explicitly:
    # that one is told to give it up (its own conflict), and both are never applied.
    later = [o for o in others if o.order >= me.order]
    if number is not None:
        for o in later:
            if o.number == number and o.number_explicit:
                reason = Reason.KEY_IN_USE if kind is InterfaceType.VTI else Reason.IF_ID_IN_USE
                what = "key" if kind is InterfaceType.VTI else "ifId"
                return _conflict(reason, f"{what} {number} is used by {o.ref} on this node", o)

    # Whatever an earlier tunnel claims, or a later one asked for explicitly, is taken.
    # What a later tunnel merely holds by allocation is not: it re-allocates.
    taken_numbers = {o.number for o in others if o.number is not None}
    taken_names = {o.ifname for o in others if o.ifname is not None}
    if number is None:
        number = _keep_or_pick(me, name, kind, taken_numbers, taken_names, lo, hi)
        if number is None:
            return Allocation(
                None,
                Reason.ALLOCATION_EXHAUSTED,
                f"no free key/ifId left in {lo}..{hi} on this node",
            )
    ifname = name if name is not None else naming.default_ifname(kind.value, number)
    if name is None:
        for o in others:
            if o.ifname == ifname and (o.order < me.order or o.ifname_explicit):
                msg = f"interface name {ifname} is used by {o.ref} on this node"
                return _conflict(Reason.INTERFACE_NAME_IN_USE, msg, o)
    iface: dict[str, object] = {"name": ifname, "type": kind.value}
    iface["key" if kind is InterfaceType.VTI else "ifId"] = number
    return Allocation(iface, Reason.PLACED)


def _keep_or_pick(
    me: Holder,
    name: str | None,
    kind: InterfaceType,
    taken_numbers: set[int],
    taken_names: set[str],
    lo: int,
    hi: int,
) -> int | None:
    def free(n: int) -> bool:
        if n in taken_numbers:
            return False
        return name is not None or naming.default_ifname(kind.value, n) not in taken_names

    if me.number is not None and lo <= me.number <= hi and free(me.number):
        return me.number
    for n in range(lo, hi + 1):
        if free(n):
            return n
    return None


def _conflict(reason: str, message: str, other: Holder) -> Allocation:
    return Allocation(None, reason, message, other.ref)
