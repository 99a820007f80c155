"""spec.bgp → BgpPlans: the BGP sessions of one tunnel on this node. Pure, no I/O.

One plan per peer address, carrying that family only: its accept and advertise prefixes
of that family, this end's inside address in the same subnet as the local address, the
defaults the API documents applied here (hold time, max prefixes, table) and the agent's
own (local ASN). `forbidden` is the node's list (`safety.bgp_forbidden`), the same for
every session: what BIRD's import filter refuses whatever a tenant accepts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import replace

from routevpn.agent.desired import Blocked, interface_of
from routevpn.api import naming
from routevpn.api.bgp import DEFAULT_LOCAL_ASN, Bgp
from routevpn.api.conditions import Reason
from routevpn.api.fields import Mode
from routevpn.api.health import source_for
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane import plan as p


def build_bgp_plans(
    tunnel: VpnTunnel,
    forbidden: Sequence[p.IPNetwork] = (),
    local_asn: int = DEFAULT_LOCAL_ASN,
    outranked: AbstractSet[tuple[int, int]] = frozenset(),
) -> tuple[p.BgpPlan, ...] | Blocked:
    """The tunnel's BGP sessions (none without spec.bgp), or why they can't be planned.

    `local_asn` is the agent's default for tunnels that leave spec.bgp.localASN out.
    `outranked` holds the (IP version, table) pairs where a learned default route would
    win over the node's own (`safety.outranked_defaults`): there a listed 0.0.0.0/0 or
    ::/0 is left out of the session's accept, so BIRD refuses the default route. The
    interface is the one the operator allocated (status.interface): until it is, the
    tunnel's plan is blocked anyway, and so are its sessions (an empty result).
    """
    bgp = tunnel.spec.bgp
    if bgp is None or tunnel.spec.effective_mode is not Mode.ROUTE:
        return ()
    iface = interface_of(tunnel)
    if iface is None:
        return ()
    inside = (tunnel.spec.interface.addresses if tunnel.spec.interface else None) or []
    plans: list[p.BgpPlan] = []
    try:
        for peer_text in bgp.peer_addresses:
            source = source_for(peer_text, inside)
            if source is None:
                return Blocked(
                    Reason.INVALID_SPEC,
                    f"tunnel {tunnel.ref}: spec.bgp.peerAddresses: {peer_text} is not inside "
                    "one of spec.interface.addresses",
                )
            peer = ipaddress.ip_address(peer_text)
            session = _session(tunnel, bgp, iface.name, (peer, source), forbidden, local_asn)
            if (session.family, session.table) in outranked:
                session = replace(
                    session, accept=tuple(n for n in session.accept if n.prefixlen > 0)
                )
            plans.append(session)
    except ValueError as e:  # PlanError, or an interface name BIRD can't be given
        return Blocked(Reason.INVALID_SPEC, f"tunnel {tunnel.ref}: {e}")
    return tuple(plans)


def _session(
    tunnel: VpnTunnel,
    bgp: Bgp,
    ifname: str,
    ends: tuple[p.IPAddress, p.IPInterface],
    forbidden: Sequence[p.IPNetwork],
    local_asn: int,
) -> p.BgpPlan:
    peer, source = ends
    version = peer.version
    return p.BgpPlan(
        ref=tunnel.ref,
        protocol=naming.bgp_protocol(ifname, version),
        interface=ifname,
        local_address=source.ip,
        peer_address=peer,
        local_asn=bgp.local_asn or local_asn,
        peer_asn=bgp.peer_asn,
        accept=_of_family(bgp.accept, version),
        advertise=_of_family(bgp.advertise or [], version),
        forbidden=tuple(n for n in forbidden if n.version == version),
        hold_time=bgp.effective_hold_time,
        bfd=bool(bgp.bfd),
        max_prefixes=bgp.effective_max_prefixes,
        table=bgp.table or p.MAIN_TABLE,
    )


def _of_family(prefixes: Sequence[str], version: int) -> tuple[p.IPNetwork, ...]:
    nets = (ipaddress.ip_network(t) for t in prefixes)
    return tuple(sorted({n for n in nets if n.version == version}, key=str))
