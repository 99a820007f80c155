"""Allocation: uniqueness, stability, one number space, conflicts named and ordered."""

from __future__ import annotations

from routevpn.api import naming
from routevpn.api.conditions import Reason
from routevpn.api.spec import VpnTunnelSpec, parse_spec
from routevpn.controller.allocation import Holder, allocate, holder_for

LO, HI = naming.ALLOC_MIN, naming.ALLOC_MAX


def spec(**iface: object) -> VpnTunnelSpec:
    body: dict[str, object] = {
        "nodeName": "n1",
        "remote": {"address": "198.51.100.1"},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "s"}}},
    }
    if iface:
        body["interface"] = iface
    return parse_spec(body)


def h(i: int, s: VpnTunnelSpec, held: dict[str, object] | None = None) -> Holder:
    return holder_for(f"ns/t{i}", (f"2026-01-01T00:00:{i:02d}Z", "ns", f"t{i}"), s, held)


def test_sequential_allocation_is_unique_and_never_zero() -> None:
    holders: list[Holder] = []
    seen: set[int] = set()
    for i in range(50):
        me = h(i, spec())
        got = allocate(me, spec(), holders, LO, HI)
        assert got.interface is not None
        seen.add(int(str(got.interface["key"])))
        holders.append(h(i, spec(), got.interface))
    assert len(seen) == 50 and min(seen) == LO and 0 not in seen


def test_held_number_is_kept() -> None:
    me = h(5, spec(), {"name": "vti5000", "type": "vti", "key": 5000})
    got = allocate(
        me, spec(), [h(1, spec(), {"name": "vti4096", "type": "vti", "key": 4096})], LO, HI
    )
    assert got.interface == {"name": "vti5000", "type": "vti", "key": 5000}


def test_keys_and_if_ids_share_one_space() -> None:
    vti = h(1, spec(), {"name": "vti4096", "type": "vti", "key": 4096})
    got = allocate(h(2, spec(type="xfrm")), spec(type="xfrm"), [vti], LO, HI)
    assert got.interface == {"name": "xfrm4097", "type": "xfrm", "ifId": 4097}


def test_explicit_key_conflict_names_the_earlier_tunnel() -> None:
    first = h(1, spec(key=7))
    got = allocate(h(2, spec(key=7)), spec(key=7), [first], LO, HI)
    assert (got.interface, got.reason, got.other) == (None, Reason.KEY_IN_USE, "ns/t1")
    assert "ns/t1" in got.message
    # Between two that ask, neither placed with it, the earlier one is not the one that loses.
    assert allocate(first, spec(key=7), [h(2, spec(key=7))], LO, HI).interface is not None
    # A later tunnel already placed with it keeps it: the earlier ask waits.
    placed_later = h(2, spec(key=7), {"name": "vti7", "type": "vti", "key": 7})
    assert allocate(first, spec(key=7), [placed_later], LO, HI).other == "ns/t2"
    xf = spec(type="xfrm", ifId=9)
    assert allocate(h(2, xf), xf, [h(1, xf)], LO, HI).reason == Reason.IF_ID_IN_USE


def test_name_and_address_conflicts() -> None:
    named = spec(name="wan0")
    assert (
        allocate(h(2, named), named, [h(1, named)], LO, HI).reason == Reason.INTERFACE_NAME_IN_USE
    )
    a = spec(addresses=["169.254.10.1/30"])
    b = spec(addresses=["169.254.10.1/29"])
    got = allocate(h(2, b), b, [h(1, a)], LO, HI)
    assert got.reason == Reason.ADDRESS_IN_USE and "169.254.10.1" in got.message


def test_allocation_steps_over_explicit_claims_and_names() -> None:
    others = [h(1, spec(key=LO)), h(2, spec(name=f"vti{LO + 1}"))]
    got = allocate(h(3, spec()), spec(), others, LO, HI)
    assert got.interface == {"name": f"vti{LO + 2}", "type": "vti", "key": LO + 2}


def test_placed_tunnel_keeps_its_allocation_against_any_newcomer() -> None:
    """Nothing that runs is taken away: the asker waits (a conflict naming the holder)."""
    held = {"name": f"vti{LO}", "type": "vti", "key": LO}
    placed = h(9, spec(), held)
    # An earlier-created tunnel asking for the number explicitly: the placed one keeps it...
    assert allocate(placed, spec(), [h(1, spec(key=LO))], LO, HI).interface == held
    # ...and the asker is told who holds it.
    got = allocate(h(1, spec(key=LO)), spec(key=LO), [placed], LO, HI)
    assert (got.interface, got.reason, got.other) == (None, Reason.KEY_IN_USE, "ns/t9")
    # A later tunnel created in the same second (name sorts first) asking for the name.
    named = spec(name=f"vti{LO}")
    got = allocate(h(0, named), named, [placed], LO, HI)
    assert (got.reason, got.other) == (Reason.INTERFACE_NAME_IN_USE, "ns/t9")
    # Inside addresses: placed with them is holding them.
    a = spec(addresses=["169.254.10.1/30"])
    placed_a = h(9, a, held)
    assert allocate(placed_a, a, [h(1, a)], LO, HI).interface == held
    assert allocate(h(1, a), a, [placed_a], LO, HI).reason == Reason.ADDRESS_IN_USE


def test_a_duplicate_is_resolved_in_favour_of_the_earlier() -> None:
    """Both placed with one number (only after a split decision): the later re-allocates."""
    held = {"name": f"vti{LO}", "type": "vti", "key": LO}
    early, late = h(1, spec(), held), h(2, spec(), held)
    assert allocate(early, spec(), [late], LO, HI).interface == held
    got = allocate(late, spec(), [early], LO, HI)
    assert got.interface is not None and got.interface["key"] == LO + 1


def test_exhausted() -> None:
    full = [h(1, spec(), {"name": "vti10", "type": "vti", "key": 10})]
    got = allocate(h(2, spec()), spec(), full, 10, 10)
    assert got.reason == Reason.ALLOCATION_EXHAUSTED
