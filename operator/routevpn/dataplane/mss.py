"""TCP MSS clamping on routevpn's interfaces, as nftables rules: pure (no I/O).

What is wanted is a set of `ClampRule`s: for each routevpn interface and each inner
family, SYNs leaving through it (`oifname`) and arriving from it (`iifname`) get their
MSS option lowered to what fits the interface's MTU. The interface MTU follows the
tunnel's inner MTU (`agent.mtu`, `status.child.innerMtu`) unless the spec sets one, so
it is the size a packet may have in the tunnel either way.

Why a value computed from the interface MTU and not `tcp option maxseg size set rt
mtu`: `rt mtu` is the MTU of the route *out* of the node. For a SYN entering the
tunnel that is the tunnel's route, right; for a SYN arriving *from* the tunnel it is
the route towards the LAN (1500), which clamps nothing, yet that SYN's MSS tells the
LAN host how big to send into the tunnel. A fixed value per interface serves both
directions, and is lowered only (a smaller MSS a host asked for stays).

The rules live in routevpn's own table (`table inet routevpn`, one base chain in the
forward hook), replaced as a whole in one `nft -f` transaction (`render`): nothing of
any other table or rule is read or written. The node's own connections need no clamp:
the kernel derives their MSS from the route's MTU, which is the interface's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

FAMILY: Literal["inet"] = "inet"
TABLE = "routevpn"
CHAIN = "mss-clamp"
#: nftables' `mangle` priority (-150): before any filter chain of the forward hook.
PRIORITY = -150
#: IPv4 + TCP headers (20 + 20) and IPv6 + TCP headers (40 + 20): MSS = MTU less these.
HEADERS = {"ipv4": 40, "ipv6": 60}
# What an interface name may be here: a Linux name of the characters routevpn's API
# allows (api/naming) and nothing that could end an nft string or statement.
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

Direction = Literal["iifname", "oifname"]
Family = Literal["ipv4", "ipv6"]


class ClampError(ValueError):
    """A name or MTU that can't go into a rule (never reaches nft)."""


@dataclass(frozen=True, slots=True, order=True)
class ClampRule:
    """SYNs of `family` matching `direction` == `ifname`: MSS lowered to `mss`."""

    ifname: str
    direction: Direction
    family: Family
    mss: int

    def render(self) -> str:
        """The rule's nft statement (MSS lowered only, never raised)."""
        return (
            f'{self.direction} "{self.ifname}" meta nfproto {self.family} '
            f"tcp flags & (syn | rst) == syn tcp option maxseg size > {self.mss} "
            f"tcp option maxseg size set {self.mss}"
        )


def rules_for(links: Mapping[str, int]) -> frozenset[ClampRule]:
    """The rules for interfaces `links` (name → MTU): both directions, both families."""
    out: set[ClampRule] = set()
    for name, mtu in links.items():
        if not _IFNAME.match(name):
            raise ClampError(f"interface name {name!r} can't go into an nft rule")
        for family, headers in HEADERS.items():
            mss = mtu - headers
            if not 0 < mss < 65536:
                raise ClampError(f"interface {name}: MTU {mtu} leaves no MSS for {family}")
            for direction in ("oifname", "iifname"):
                out.add(ClampRule(name, direction, family, mss))  # type: ignore[arg-type]
    return frozenset(out)


def render(rules: Iterable[ClampRule]) -> str:
    """One `nft -f` transaction: routevpn's table replaced as a whole, or removed when
    `rules` is empty. `table` before `delete table` makes the delete valid when the
    table does not exist yet; the kernel applies the whole script or nothing."""
    head = f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
    ordered = sorted(rules)
    if not ordered:
        return head
    body = "".join(f"\t\t{r.render()}\n" for r in ordered)
    return (
        f"{head}table {FAMILY} {TABLE} {{\n\tchain {CHAIN} {{\n"
        f"\t\ttype filter hook forward priority {PRIORITY}; policy accept;\n"
        f"{body}\t}}\n}}\n"
    )


#: What `parse` says of a table that holds anything routevpn did not render.
FOREIGN_SHAPE: frozenset[ClampRule] = frozenset({ClampRule("?", "iifname", "ipv4", 0)})


def parse(listing: Mapping[str, Any]) -> frozenset[ClampRule]:
    """The rules of `nft -j list table inet routevpn`'s output.

    Anything that is not exactly what `render` writes (another chain, hook or
    priority, a rule of another shape) yields `FOREIGN_SHAPE`, which no desired set
    equals: the table is then replaced as a whole.
    """
    rules: set[ClampRule] = set()
    for item in listing.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            shape = (c.get("name"), c.get("hook"), c.get("prio"), c.get("policy"))
            if shape != (CHAIN, "forward", PRIORITY, "accept"):
                return FOREIGN_SHAPE
        elif "rule" in item:
            rule = _rule(item["rule"].get("expr", []))
            if rule is None:
                return FOREIGN_SHAPE
            rules.add(rule)
        elif not {"metainfo", "table"} & set(item):
            return FOREIGN_SHAPE
    return frozenset(rules)


def _rule(expr: list[dict[str, Any]]) -> ClampRule | None:
    """A `ClampRule` from one rule's expressions, None if it is not of that shape."""
    seen: dict[str, Any] = {}
    for e in expr:
        match, mangle = e.get("match"), e.get("mangle")
        if match is not None:
            left = match.get("left", {})
            if "meta" in left:
                seen[left["meta"].get("key")] = match.get("right")
            elif "tcp option" in left and match.get("op") == ">":
                seen["above"] = match.get("right")
            elif "&" in left and match.get("right") == "syn":
                seen["syn"] = True
            else:
                return None
        elif mangle is not None and "tcp option" in mangle.get("key", {}):
            seen["set"] = mangle.get("value")
        else:
            return None
    directions = [d for d in ("iifname", "oifname") if d in seen]
    family, mss = seen.get("nfproto"), seen.get("set")
    valid = (
        len(directions) == 1
        and seen.get("syn") is True
        and family in HEADERS
        and isinstance(mss, int)
        and seen.get("above") == mss
        and isinstance(seen[directions[0]], str)
    )
    if not valid:
        return None
    return ClampRule(seen[directions[0]], directions[0], family, mss)  # type: ignore[arg-type]
