"""A tunnel's CHILD SAs and the traffic selectors the peer let them have. Pure, no I/O.

Route mode proposes 0.0.0.0/0 and ::/0 both ways; a peer may answer with less (IKEv2
lets the responder narrow: strongSwan with only `::/0` configured accepts ::/0 out of
both, some firewalls do the same per family). The SA is then installed and IPv6 works
while every IPv4 packet routed into the interface is dropped: no CHILD SA covers it. So
the installed selectors are read back from charon's listing and compared, per family,
with what the tunnel needs: the families of its routes (else of its inside addresses).

A narrowing that loses a needed family makes `ChildSaInstalled` False with reason
`TrafficSelectorsNarrowed`; one that loses only a family the tunnel doesn't route is
said in the message and left True. `spec.child.perFamily` asks for one CHILD SA per
family instead (`builders.child_names`), which such a peer accepts one by one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from routevpn.dataplane import builders
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts
from routevpn.dataplane.plan import TunnelPlan

FAMILY = {4: "IPv4", 6: "IPv6"}


def children(ike: IkeSaFacts | None, plan: TunnelPlan | None, conn: str) -> list[ChildSaFacts]:
    """The newest CHILD SA (INSTALLED first) of each name the tunnel's plan expects, in the
    plan's order; a name without one is left out."""
    if ike is None:
        return []
    names = builders.child_names(plan) if plan is not None else (conn,)
    out: list[ChildSaFacts] = []
    for name in names:
        mine = [c for c in ike.children if c.name == name]
        if mine:
            out.append(max(mine, key=lambda c: (c.state == "INSTALLED", _uid(c))))
    return out


def expected(plan: TunnelPlan | None, conn: str) -> tuple[str, ...]:
    """The CHILD SA names the tunnel should have."""
    return builders.child_names(plan) if plan is not None else (conn,)


def _uid(c: ChildSaFacts) -> int:
    return int(c.uniqueid) if c.uniqueid.isdigit() else 0


def families(selectors: Iterable[str]) -> frozenset[int]:
    """IP versions a list of selectors covers (charon writes `CIDR`, `a..b` ranges, and
    maybe ` [proto/port]` after either)."""
    out: set[int] = set()
    for ts in selectors:
        first = ts.split(" ", 1)[0].split("[", 1)[0].split("..", 1)[0]
        try:
            out.add(ipaddress.ip_network(first, strict=False).version)
        except ValueError:
            continue
    return frozenset(out)


def needed(plan: TunnelPlan) -> frozenset[int]:
    """The families the tunnel carries: of its routes, else its inside addresses, else
    what was proposed (policy mode: its selectors)."""
    if plan.routes:
        return frozenset(r.dst.version for r in plan.routes)
    if plan.addresses:
        return frozenset(a.version for a in plan.addresses)
    child = plan.conn.child
    return families(child.local_ts) & families(child.remote_ts)


def installed(sas: Iterable[ChildSaFacts]) -> tuple[list[str], list[str]]:
    """Local and remote selectors of the INSTALLED ones of `sas`, in order, once each."""
    local: list[str] = []
    remote: list[str] = []
    for c in sas:
        if c.state != "INSTALLED":
            continue
        local += [t for t in c.local_ts if t not in local]
        remote += [t for t in c.remote_ts if t not in remote]
    return local, remote


def narrowed(plan: TunnelPlan, sas: Iterable[ChildSaFacts]) -> tuple[frozenset[int], str] | None:
    """(families lost, a sentence) when the installed selectors leave out a family the
    plan proposed; None when they don't."""
    proposed = _proposed(plan)
    local, remote = installed(sas)
    if not local and not remote:
        return None  # a listing without selectors says nothing about them
    have = families(local) & families(remote)
    lost = proposed - have
    if not lost:
        return None
    names = " and ".join(FAMILY[v] for v in sorted(lost))
    said = (
        f"the peer narrowed the traffic selectors to {', '.join(local) or 'nothing'} === "
        f"{', '.join(remote) or 'nothing'}: no CHILD SA covers {names}"
    )
    return frozenset(lost & needed(plan)), said


def _proposed(plan: TunnelPlan) -> frozenset[int]:
    child = plan.conn.child
    if plan.link is None:
        return families(child.local_ts) & families(child.remote_ts)
    return frozenset({4, 6})
