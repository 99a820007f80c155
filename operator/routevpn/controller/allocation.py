"""Allocation of the tunnel interface on a node: key / if_id, name, inside addresses. Pure.

One number space per node is shared by VTI keys and XFRM if_ids: a mark is a mark, and one
space means a VTI and an XFRM interface can never match each other's traffic.

Who wins a value two tunnels claim: the one that holds it (placed on the node with it)
keeps it, whoever asks later and however (nothing that runs is taken away: a tunnel
losing its key would be torn down and re-keyed). Between two tunnels that both hold it
(only after a split decision) or neither, the earlier one wins (creationTimestamp, then
namespace/name). The loser of a value it asked for explicitly reports a conflict; the
loser of a value it was merely allocated re-allocates.

Besides the interface, a tunnel claims its routes (table, destination, metric: the
kernel's identity of a route) and its IKE identity pair (charon picks a PSK and a peer
config by the pair, not by connection). Those are never allocated: whoever is placed with
them holds them, else the earlier tunnel wins.

A conflict message names the winner only when it is in the loser's own namespace: a
tenant learns nothing of another namespace's objects ("another tenant's tunnel").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from routevpn.api import naming
from routevpn.api.conditions import Reason
from routevpn.api.fields import AuthType, InterfaceType
from routevpn.api.spec import VpnTunnelSpec

#: The metric the kernel records for an IPv6 route added without one.
IPV6_DEFAULT_METRIC = 1024


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
    #: Routes as the kernel keys them: (table, destination, metric).
    routes: frozenset[tuple[int, str, int]] = frozenset()
    #: (local identity, remote identity), or None when the local one is a certificate's.
    identity: tuple[str, str] | None = None
    #: What it holds (status.interface on this node): None when not placed here.
    held_number: int | None = None
    held_ifname: str | None = None
    placed: bool = False

    def holds_number(self, n: int) -> bool:
        """Is the tunnel placed with key/if_id `n`?"""
        return self.held_number == n

    def holds_name(self, name: str) -> bool:
        """Is the tunnel placed with interface name `name`?"""
        return self.held_ifname == name


def beats(other: Holder, me: Holder, other_holds: bool, me_holds: bool) -> bool:
    """Does `other` win a value both claim? The holder keeps it; otherwise the earlier."""
    if other_holds != me_holds:
        return other_holds
    return other.order < me.order


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


def route_keys(spec: VpnTunnelSpec) -> frozenset[tuple[int, str, int]]:
    """(table, destination, metric) of each route; IPv6 metric 0 is the kernel's 1024."""
    out = set()
    for r in spec.routes or []:
        net = ipaddress.ip_network(r.to)
        metric = r.metric or (IPV6_DEFAULT_METRIC if net.version == 6 else 0)
        out.add((r.table or 254, str(net), metric))
    return frozenset(out)


def identity_pair(spec: VpnTunnelSpec, local: str | None) -> tuple[str, str] | None:
    """The IKE identities charon matches on, as the agent will configure them."""
    local_id = spec.local.id if spec.local and spec.local.id else None
    if local_id is None and spec.auth.type is AuthType.PSK:
        local_id = local  # a PSK tunnel's default local id is its local address
    if local_id is None:
        return None  # a certificate's subject: not known here
    return local_id, spec.remote.id or spec.remote.address


def holder_for(
    ref: str,
    order: tuple[str, str, str],
    spec: VpnTunnelSpec,
    held: dict[str, object] | None,
    local: str | None = None,
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
        routes=route_keys(spec),
        identity=identity_pair(spec, local),
        held_number=held_number,
        held_ifname=held_name,
        placed=held is not None,
    )


def allocate(
    me: Holder, spec: VpnTunnelSpec, others: Iterable[Holder], lo: int, hi: int
) -> Allocation:
    """The interface for tunnel `me` given the other tunnels on its node."""
    kind, number, name = requested(spec)
    others = list(others)
    lost = _lost_claim(me, kind, number, name, others)
    if lost is not None:
        return lost
    if number is None:
        number = _keep_or_pick(me, name, kind, others, lo, hi)
        if number is None:
            return Allocation(
                None,
                Reason.ALLOCATION_EXHAUSTED,
                f"no free key/ifId left in {lo}..{hi} on this node",
            )
    ifname = name if name is not None else naming.default_ifname(kind.value, number)
    if name is None and (o := _name_winner(me, others, ifname)) is not None:
        return _conflict(Reason.INTERFACE_NAME_IN_USE, f"interface name {ifname}", o, me)
    iface: dict[str, object] = {"name": ifname, "type": kind.value}
    iface["key" if kind is InterfaceType.VTI else "ifId"] = number
    return Allocation(iface, Reason.PLACED)


def _number_winner(me: Holder, others: list[Holder], n: int) -> Holder | None:
    """The other tunnel that wins key/if_id `n` from `me`, if any."""
    for o in others:
        if o.number == n and beats(o, me, o.holds_number(n), me.holds_number(n)):
            return o
    return None


def _name_winner(me: Holder, others: list[Holder], ifname: str) -> Holder | None:
    """The other tunnel that wins interface name `ifname` from `me`, if any."""
    for o in others:
        if o.ifname == ifname and beats(o, me, o.holds_name(ifname), me.holds_name(ifname)):
            return o
    return None


def _lost_claim(
    me: Holder, kind: InterfaceType, number: int | None, name: str | None, others: list[Holder]
) -> Allocation | None:
    """The conflict over something the spec asks for (key/if_id, name, inside address)."""
    if number is not None and (o := _number_winner(me, others, number)) is not None:
        reason = Reason.KEY_IN_USE if kind is InterfaceType.VTI else Reason.IF_ID_IN_USE
        what = "key" if kind is InterfaceType.VTI else "ifId"
        return _conflict(reason, f"{what} {number}", o, me)
    if name is not None and (o := _name_winner(me, others, name)) is not None:
        return _conflict(Reason.INTERFACE_NAME_IN_USE, f"interface name {name}", o, me)
    for o in others:
        shared = me.addresses & o.addresses
        # Inside addresses are not allocated: placed with them is what holding means.
        if shared and beats(o, me, o.placed, me.placed):
            return _conflict(Reason.ADDRESS_IN_USE, f"inside address {min(shared)}", o, me)
    return None


def _keep_or_pick(
    me: Holder,
    name: str | None,
    kind: InterfaceType,
    others: list[Holder],
    lo: int,
    hi: int,
) -> int | None:
    """Keep the held number unless someone wins it; else the lowest number nobody claims."""
    held = me.number
    if (
        held is not None
        and lo <= held <= hi
        and _number_winner(me, others, held) is None
        and (
            name is not None
            or _name_winner(me, others, naming.default_ifname(kind.value, held)) is None
        )
    ):
        return held
    taken_numbers = {o.number for o in others if o.number is not None}
    taken_names = {o.ifname for o in others if o.ifname is not None}
    for n in range(lo, hi + 1):
        if n in taken_numbers:
            continue
        if name is None and naming.default_ifname(kind.value, n) in taken_names:
            continue
        return n
    return None


def claim_conflict(me: Holder, others: Iterable[Holder]) -> Allocation | None:
    """A route or IKE identity pair another tunnel on the node wins, or None."""
    for o in others:
        if not beats(o, me, o.placed, me.placed):
            continue
        if shared := me.routes & o.routes:
            table, dst, metric = min(shared)
            what = f"route {dst} table {table} metric {metric}"
            return _conflict(Reason.ROUTE_IN_USE, what, o, me)
        if me.identity is not None and me.identity == o.identity:
            what = f"IKE identity pair {me.identity[0]} - {me.identity[1]}"
            return _conflict(Reason.IDENTITY_IN_USE, what, o, me)
    return None


def whom(other: Holder, me: Holder) -> str:
    """The winner as the loser may see it: named in the same namespace, else anonymous."""
    if other.ref.split("/", 1)[0] == me.ref.split("/", 1)[0]:
        return other.ref
    return "a tunnel of another namespace"


def _conflict(reason: str, what: str, other: Holder, me: Holder) -> Allocation:
    return Allocation(None, reason, f"{what} is used by {whom(other, me)} on this node", other.ref)
