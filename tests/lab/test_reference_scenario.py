"""The reference scenario: route-based IPsec by hand, with NO routevpn code at all.

Two sites in network namespaces joined by a veth, each with its own charon loaded
from a hand-written swanctl.conf, tunnels made with plain ``ip`` commands. Each case
proves the same four things: the CHILD SA is INSTALLED, pings cross in both
directions, the ESP byte counters of every SA rise, and the veth carries ESP and no
clear-text ping. routevpn's end-to-end test must reach the same results with one
side configured by routevpn (same topology: support.sites).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import swanctl as sw
from support.observe import CaptureSummary, capture, merge, xfrm_policies, xfrm_states
from support.sites import LEFT, RIGHT, Site, two_sites

PSK = "reference-scenario-psk-0123456789"  # throwaway, never logged


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[tuple[Site, Site]]:
    with two_sites(tmp_path) as pair:
        yield pair


def connect(left: Site, right: Site, tmp: Path, child: sw.Child, *, ipv6_outer: bool) -> str:
    """Load mirrored connections on both sites, initiate from left; return --list-sas."""
    la, ra = (LEFT.outer6, RIGHT.outer6) if ipv6_outer else (LEFT.outer4, RIGHT.outer4)
    for site, local, remote, lid, rid in (
        (left, la, ra, "left.test", "right.test"),
        (right, ra, la, "right.test", "left.test"),
    ):
        conn = sw.Conn("ref", local, remote, lid, rid, PSK, [child])
        sw.write_and_load(site.ns, site.uri, tmp / f"{site.plan.name}.swanctl.conf", [conn])
    sw.initiate(left.ns, left.uri, child.name, ike="ref")
    listing = sw.wait_for(left.ns, left.uri, ike="ref", child=child.name)
    sw.wait_for(right.ns, right.uri, ike="ref", child=child.name)
    return listing


def prove_traffic(left: Site, right: Site, tmp: Path, pings: list[tuple[Site, str, str]]) -> None:
    """Pings (site, dst, src) pass; every ESP SA's counters rise; only ESP on the veth."""
    before = {s.spi: s.bytes for s in xfrm_states(left.ns) if s.proto == "esp"}
    assert len(before) == 2, f"expected one inbound and one outbound SA, got {before}"
    sent = on_the_wire(
        left, right, tmp, lambda: [site.ping(dst, src=src) for site, dst, src in pings]
    )
    after = {s.spi: s.bytes for s in xfrm_states(left.ns) if s.proto == "esp"}
    for spi, count in before.items():
        assert after.get(spi, 0) > count, f"SA {spi}: bytes {count} -> {after.get(spi)}"
    # every ping run sends a request one way and gets a reply the other: both ends emit
    # ESP (ping's own exit status already proved the replies came back)
    for side, seen in zip(("left", "right"), sent, strict=True):
        assert seen.esp >= len(pings), f"{side} sent too little ESP: {seen}"
        assert seen.clear_echo == 0, f"{side} sent clear-text ping on the veth: {seen.samples}"


def on_the_wire(
    left: Site, right: Site, tmp: Path, action: Callable[[], object]
) -> tuple[CaptureSummary, CaptureSummary]:
    """What each site put on the veth while `action` ran (outbound capture at each end)."""
    with (
        capture(left.ns, left.wan, tmp / "left-out.pcap", direction="out") as lcap,
        capture(right.ns, right.wan, tmp / "right-out.pcap", direction="out") as rcap,
    ):
        action()
        return lcap.summary(), rcap.summary()


def both_ways(left: Site, right: Site, *, v4: bool, v6: bool) -> list[tuple[Site, str, str]]:
    """LAN-to-LAN pings in both directions."""
    out = []
    if v4:
        out += [(left, RIGHT.host4, LEFT.host4), (right, LEFT.host4, RIGHT.host4)]
    if v6:
        out += [(left, RIGHT.host6, LEFT.host6), (right, LEFT.host6, RIGHT.host6)]
    return out


def test_seed_case_vti6_over_ipv6(sites: tuple[Site, Site], tmp_path: Path) -> None:
    """The seed: IPv6 outer, vti1 (vti6) with 2001:db8:100::/127, LANs routed into it."""
    left, right = sites
    left.vti("vti1", LEFT.outer6, RIGHT.outer6, key=42)
    right.vti("vti1", RIGHT.outer6, LEFT.outer6, key=42)
    left.address("vti1", "2001:db8:100::/127")
    right.address("vti1", "2001:db8:100::1/127")
    left.route(RIGHT.net6, via="2001:db8:100::1")
    right.route(LEFT.net6, via="2001:db8:100::")

    listing = connect(left, right, tmp_path, sw.Child("vti", mark=42), ipv6_outer=True)
    assert f"remote 'right.test' @ {RIGHT.outer6}" in listing
    states = [s for s in xfrm_states(left.ns) if s.proto == "esp"]
    assert all(s.mode == "tunnel" for s in states), states
    # charon marks the outbound SA; inbound, the mark sits on the policy (mark_in_sa=no)
    out_sa = [s for s in states if s.src == LEFT.outer6]
    assert [s.mark for s in out_sa] == ["0x2a/0xffffffff"], states
    marked = [p for p in xfrm_policies(left.ns) if p.mark == "0x2a/0xffffffff"]
    assert {p.dir for p in marked} >= {"out", "in", "fwd"}, marked
    prove_traffic(left, right, tmp_path, both_ways(left, right, v4=False, v6=True))


def test_ipv4_vti_carries_ipv4_and_ipv6(sites: tuple[Site, Site], tmp_path: Path) -> None:
    """`ip tunnel add … mode vti key N`, 169.254.x.x/30 inside, v4 and v6 traffic."""
    left, right = sites
    for site, local, remote in (
        (left, LEFT.outer4, RIGHT.outer4),
        (right, RIGHT.outer4, LEFT.outer4),
    ):
        site.ns.ip(
            "tunnel", "add", "vti2", "local", local, "remote", remote, "mode", "vti", "key", "44"
        )
        site.ns.sysctl("net.ipv4.conf.vti2.disable_policy", "1")
        site.ns.ip("link", "set", "vti2", "up")
    left.address("vti2", "169.254.44.1/30")
    right.address("vti2", "169.254.44.2/30")
    left.address("vti2", "2001:db8:144::/127")
    right.address("vti2", "2001:db8:144::1/127")
    left.route(RIGHT.net4, via="169.254.44.2")
    right.route(LEFT.net4, via="169.254.44.1")
    left.route(RIGHT.net6, via="2001:db8:144::1")
    right.route(LEFT.net6, via="2001:db8:144::")

    connect(left, right, tmp_path, sw.Child("vti", mark=44), ipv6_outer=False)
    prove_traffic(left, right, tmp_path, both_ways(left, right, v4=True, v6=True))


def test_xfrm_interface_with_if_id(sites: tuple[Site, Site], tmp_path: Path) -> None:
    """An XFRM interface (if_id 43): states and policies carry the if_id, not a mark."""
    left, right = sites
    for site in sites:
        site.xfrm("xfrm3", if_id=43)
    left.address("xfrm3", "169.254.43.1/30")
    right.address("xfrm3", "169.254.43.2/30")
    left.address("xfrm3", "2001:db8:143::/127")
    right.address("xfrm3", "2001:db8:143::1/127")
    left.route(RIGHT.net4, via="169.254.43.2", dev="xfrm3")
    right.route(LEFT.net4, via="169.254.43.1", dev="xfrm3")
    left.route(RIGHT.net6, via="2001:db8:143::1", dev="xfrm3")
    right.route(LEFT.net6, via="2001:db8:143::", dev="xfrm3")

    connect(left, right, tmp_path, sw.Child("xfrm", if_id=43), ipv6_outer=False)
    states = [s for s in xfrm_states(left.ns) if s.proto == "esp"]
    assert states and all(s.if_id == "0x2b" and s.mark is None for s in states), states
    wide = [p for p in xfrm_policies(left.ns) if p.if_id == "0x2b"]
    assert {p.dir for p in wide} >= {"out", "in", "fwd"}, wide
    prove_traffic(left, right, tmp_path, both_ways(left, right, v4=True, v6=True))


def test_policy_based_for_contrast(sites: tuple[Site, Site], tmp_path: Path) -> None:
    """No interface, narrow selectors: the seed's `ip xfrm policy` shape; the rest is clear."""
    left, right = sites
    left.route(RIGHT.net4, via=RIGHT.outer4)
    right.route(LEFT.net4, via=LEFT.outer4)
    child = sw.Child("pol", local_ts=LEFT.net4, remote_ts=RIGHT.net4)
    # the right side's selectors mirror the left's
    for site, conn_child in (
        (left, child),
        (right, sw.Child("pol", local_ts=RIGHT.net4, remote_ts=LEFT.net4)),
    ):
        local, remote = (LEFT.outer4, RIGHT.outer4) if site is left else (RIGHT.outer4, LEFT.outer4)
        lid, rid = ("left.test", "right.test") if site is left else ("right.test", "left.test")
        conn = sw.Conn("ref", local, remote, lid, rid, PSK, [conn_child])
        sw.write_and_load(site.ns, site.uri, tmp_path / f"{site.plan.name}.conf", [conn])
    sw.initiate(left.ns, left.uri, "pol", ike="ref")
    sw.wait_for(left.ns, left.uri, ike="ref", child="pol")

    pols = {(p.dir, p.src, p.dst): p for p in xfrm_policies(left.ns) if p.tmpl_proto is not None}
    for key in (
        ("out", LEFT.net4, RIGHT.net4),
        ("in", RIGHT.net4, LEFT.net4),
        ("fwd", RIGHT.net4, LEFT.net4),
    ):
        assert key in pols, f"policy {key} missing from {sorted(pols)}"
        assert (pols[key].tmpl_proto, pols[key].tmpl_mode) == ("esp", "tunnel")
        assert pols[key].mark is None and pols[key].if_id is None
    prove_traffic(left, right, tmp_path, both_ways(left, right, v4=True, v6=False))

    # outside the selectors, traffic is not protected: the WAN-to-WAN ping is in clear
    seen = merge(
        *on_the_wire(left, right, tmp_path, lambda: left.ping(RIGHT.outer4, src=LEFT.outer4))
    )
    assert seen.clear_echo >= 2 and seen.esp == 0, seen
