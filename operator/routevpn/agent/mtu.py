"""The tunnel's effective inner MTU, and the interface MTU that follows it. Pure.

The inner MTU (`dataplane.mtu`) is that of the installed CHILD SA's negotiated
proposal and encapsulation over the MTU of the interface holding the local address
(the underlay; a smaller MTU further along the path is not known here). It reaches
`status.child.innerMtu`, and the tunnel interface's MTU follows it unless
`spec.interface.mtu` is set. Before the first CHILD SA is installed the interface has
the documented default (1400); while none is (the peer is down), or a pass could not
observe the node (charon restarting), it keeps the inner MTU seen last, or the MTU it
has; an IPv6 interface never goes below 1280, which IPv6 requires (packets between
the two are fragmented outside instead).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from routevpn.agent.conditions import best_child, best_ike
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane.facts import Facts
from routevpn.dataplane.mtu import overhead
from routevpn.dataplane.plan import TunnelPlan

IPV6_MIN_MTU = 1280


def inner_mtu(plan: TunnelPlan, facts: Facts | None) -> int | None:
    """The effective inner MTU of `plan`'s installed CHILD SA, None while unknown."""
    if facts is None or not plan.conn.local_addrs:
        return None
    child = best_child(best_ike(list(facts.ipsec.sas), plan.conn.name), plan.conn.name)
    if child is None or child.state != "INSTALLED":
        return None
    try:
        local = ipaddress.ip_address(plan.conn.local_addrs[0])
    except ValueError:
        return None
    names = {a.ifname for a in facts.netlink.addresses if a.address.ip == local}
    outer = [link.mtu for link in facts.netlink.links if link.name in names]
    found = overhead(child.encr_alg, child.integ_alg, local.version, child.encap)
    if not outer or found is None:
        return None
    return found.inner_mtu(outer[0])


def follow(
    plan: TunnelPlan, tunnel: VpnTunnel, inner: int | None, facts: Facts | None
) -> TunnelPlan:
    """`plan` with the interface MTU following `inner`, unless the spec sets one.

    With `inner` None (no CHILD SA installed: the peer is down) an existing interface
    keeps the MTU it has: a peer that is down for a while must not make it go back and
    forth.
    """
    spec = tunnel.spec.interface
    if plan.link is None or (spec is not None and spec.mtu):
        return plan
    if inner is None:
        have = [
            link.mtu
            for link in (facts.netlink.links if facts is not None else ())
            if link.name == plan.link.name and link.alias == plan.link.alias
        ]
        if not have:
            return plan
        mtu = have[0]
    else:
        v6 = any(a.version == 6 for a in plan.addresses)
        mtu = max(inner, IPV6_MIN_MTU if v6 else 68)
    return plan if mtu == plan.link.mtu else replace(plan, link=replace(plan.link, mtu=mtu))


class MtuFollower:
    """Follows each tunnel's inner MTU across passes that could not see it.

    A pass whose observation failed (charon restarting: no facts at all) or that finds
    no CHILD SA installed uses the inner MTU seen last, so the interface MTU does not
    fall back to the default while the SAs in the kernel still carry traffic.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def follow(
        self, plan: TunnelPlan, tunnel: VpnTunnel, facts: Facts | None
    ) -> tuple[TunnelPlan, int | None]:
        """(`plan` with its interface MTU, the inner MTU observed now or None)."""
        inner = inner_mtu(plan, facts)
        if inner is not None:
            self._last[plan.ref] = inner
        return follow(plan, tunnel, inner or self._last.get(plan.ref), facts), inner

    def forget(self, ref: str) -> None:
        """Drop what is known of tunnel `ref`."""
        self._last.pop(ref, None)
