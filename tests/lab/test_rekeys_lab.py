"""Rekeys under traffic (issue 17): short lifetimes at both ends, so both initiate rekeys
and collisions happen, with a ping every 20 ms through the tunnel.

Topology: support.hapair's node and its first far-end gateway (a hand-written
swanctl.conf), one VpnTunnel with CHILD SAs rekeyed every 25-30 s and IKE SAs every
80-90 s; the far end rekeys its CHILD SAs after 30 s and its IKE SA after 90 s (first
case) or re-authenticates its IKE SA after 90 s instead of rekeying it (second case).
Each case asserts: no ping lost (at most a second's worth against the re-authenticating
far end: see that test), CHILD SAs and IKE SAs really replaced (counted from
the SPIs charon lists, sampled every second), no duplicate CHILD SA left at the end on
either side, and the tunnel's status showing the SPIs of the SA installed now.

A soak: CI runs each case for 70 s at halved lifetimes (CHILD SAs replaced every
13-20 s, IKE SAs every 35-45 s: at least 2 CHILD and 1 IKE replacement);
`ROUTEVPN_SOAK_FULL=1` runs the issue's lifetimes (CHILD 30 s, IKE 90 s at the far end)
for its 10 minutes, and then at least 20 CHILD and 5 IKE rekeys are asserted. Nothing
asserts on wall time.

Every lost ping is accounted for: the kernels' own xfrm error counters
(``/proc/net/xfrm_stat``, per namespace) are read on both sides around each run and
printed. Rekeys: neither kernel drops a packet. Against the re-authenticating far end
the node's kernel drops only packets that arrive for an SA it does not have: it never
fails to send (see that test).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import test_agent_lab as tal  # type: ignore[import-not-found]  # the agent lab's API helpers (tests/lab is no package)
import test_failover_lab as tfl  # type: ignore[import-not-found]  # the HA pair's setup

from support import hapair as ha
from support import swanctl as sw
from support.kube import wait_until
from support.observe import xfrm_stat, xfrm_stat_delta

FULL = os.environ.get("ROUTEVPN_SOAK_FULL") == "1"
RUN_S = 600.0 if FULL else 70.0
pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(RUN_S) * 2 + 600)]

INTERVAL = 0.02
NAME = "rekeys"
if FULL:  # the lifetimes: CHILD SAs rekeyed at 25-30 s, IKE SAs at 80-90 s
    CHILD = {"lifetime": "45s", "rekeyMargin": "15s", "rekeyFuzz": "5s"}
    IKE = {"lifetime": "120s", "rekeyMargin": "30s", "rekeyFuzz": "10s"}
    FAR_CHILD_S, FAR_IKE_S = 30, 90
else:  # CI's form: the same races at about half the lifetimes
    CHILD = {"lifetime": "30s", "rekeyMargin": "10s", "rekeyFuzz": "7s"}  # rekey at 13-20 s
    IKE = {"lifetime": "60s", "rekeyMargin": "15s", "rekeyFuzz": "10s"}  # rekey at 35-45 s
    FAR_CHILD_S, FAR_IKE_S = 15, 40
FAR_CHILD = (
    ("rekey_time", f"{FAR_CHILD_S}s"),
    ("life_time", f"{FAR_CHILD_S + 15}s"),
    ("rand_time", "0s"),
)
FAR_REKEY = (("rekey_time", f"{FAR_IKE_S}s"), ("over_time", "30s"), ("rand_time", "0s"))
FAR_REAUTH = (("rekey_time", "0s"), ("reauth_time", f"{FAR_IKE_S}s"), ("over_time", "30s"))
# Both ends make before break on re-authentication (the far end's choice, and charon's).
SETTINGS = {**ha.LAB_RETRANSMIT, "make_before_break": "yes"}


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tfl.Ha]:
    """The agent and one tunnel with short lifetimes, up."""
    with (
        tal.guest_control_plane(tmp_path_factory.mktemp("control-plane")) as kc,
        tfl.agent_world(kc, tmp_path_factory.mktemp("rekeys"), SETTINGS) as h,
    ):
        h.world.gws[0].load(h.psk, ike_extra=FAR_REKEY, child_extra=FAR_CHILD)
        wait_until(h.agent.ready, timeout=120, interval=0.5, what="agent ready")
        body = tfl.tunnel(h, NAME, ha.GWA, 100)
        body["spec"]["ike"].update(IKE)
        body["spec"]["child"].update(CHILD)
        h.custom.create_namespaced_custom_object(
            tal.GROUP, tal.VERSION, h.tunnel_ns, tal.PLURAL, body
        )
        tal.deliver_secret(h, NAME)
        tal.operator_places(h, NAME, {"name": "vti4101", "type": "vti", "key": 4101})
        tal.wait_true(h, NAME, ("IkeEstablished", "ChildSaInstalled", "RoutesInstalled"))
        yield h


_CHILD_IN = re.compile(r"INSTALLED, TUNNEL.*?\n(?:.*\n)*?\s+in\s+([0-9a-f]{8})", re.M)
_IKE = re.compile(r"^\S+: #\d+, ESTABLISHED, IKEv2, ([0-9a-f]{16})_i", re.M)


@dataclass
class Seen:
    """SPIs seen over the run, on the node, and in the tunnel's status."""

    child: set[str] = field(default_factory=set)
    ike: set[str] = field(default_factory=set)
    status: set[str] = field(default_factory=set)
    lost: int = 0
    # xfrm_stat counters that moved during the run, on the node and at the far end
    node_drops: dict[str, int] = field(default_factory=dict)
    far_drops: dict[str, int] = field(default_factory=dict)


def installed(h: tfl.Ha) -> tuple[list[str], list[str]]:
    """The node's installed CHILD SAs' inbound SPIs and its established IKE SAs' SPIs."""
    text = sw.list_sas(h.world.node, h.charon.uri)
    return _CHILD_IN.findall(text), _IKE.findall(text)


def status_spi(h: tfl.Ha) -> str | None:
    child: dict[str, Any] = ((tal.get(h, NAME) or {}).get("status") or {}).get("child") or {}
    spi = child.get("spiIn")
    return str(spi) if spi else None


def soak(h: tfl.Ha, label: str, allowed_lost: int = 0) -> Seen:
    """RUN_S seconds of pings, sampling the SAs every second; then the assertions."""
    seen = Seen()
    gw = h.world.gws[0]
    stat0 = xfrm_stat(h.world.node), xfrm_stat(gw.ns)
    ping = ha.Pinger(h.world.node, ha.NODE_LAN4, ha.FAR_HOST4, h.tmp / f"{label}.txt", INTERVAL)
    ping.start()
    try:
        ping.wait(50)
        end = time.monotonic() + RUN_S
        while time.monotonic() < end:
            children, ikes = installed(h)
            seen.child.update(children)
            seen.ike.update(ikes)
            if (spi := status_spi(h)) is not None:
                seen.status.add(spi)
            time.sleep(1)
        ping.wait(50, since=time.time())
    finally:
        ping.stop()
    seen.node_drops = xfrm_stat_delta(stat0[0], xfrm_stat(h.world.node))
    seen.far_drops = xfrm_stat_delta(stat0[1], xfrm_stat(gw.ns))
    seen.lost = ping.lost()
    child_rekeys, ike_rekeys = len(seen.child) - 1, len(seen.ike) - 1
    print(
        f"{label}: {RUN_S:.0f}s, {child_rekeys} CHILD and {ike_rekeys} IKE SA replacements, "
        f"{len(seen.status)} SPIs in status, lost {seen.lost} of {len(ping.replies())} pings; "
        f"xfrm_stat moved on the node {seen.node_drops or 'none'}, "
        f"at the far end {seen.far_drops or 'none'}"
    )
    assert seen.lost <= allowed_lost, (label, ping.gap())
    minimum = (20, 5) if FULL else (2, 1)
    assert child_rekeys >= minimum[0] and ike_rekeys >= minimum[1], seen
    # no duplicate left behind: one CHILD SA installed on each side once rekeys settle
    wait_until(lambda: len(installed(h)[0]) == 1, timeout=60, interval=1, what="one CHILD SA")
    wait_until(
        lambda: sw.list_sas(gw.ns, gw.charon.uri).count("INSTALLED, TUNNEL") == 1,
        timeout=60,
        interval=1,
        what="one CHILD SA at the far end",
    )
    # status follows: the SPI of the SA installed now (the agent passes on child-rekey)
    wait_until(
        lambda: status_spi(h) == installed(h)[0][0], timeout=30, interval=0.5, what="status SPI"
    )
    return seen


def test_rekeys_from_both_ends_lose_no_packet(one: tfl.Ha) -> None:
    seen = soak(one, "rekey")
    assert not seen.node_drops and not seen.far_drops, (seen.node_drops, seen.far_drops)


# What a node may count while the far end re-authenticates: packets that arrive for an
# SA the node no longer (or not yet) has. Anything else (no outbound SA, a blocked
# policy, an acquire that failed) would be the node failing to send: none is allowed.
REAUTH_NODE_DROPS = frozenset({"XfrmInNoStates"})


def test_a_far_end_that_reauthenticates_loses_under_a_second(one: tfl.Ha) -> None:
    gw = one.world.gws[0]
    gw.load(one.psk, ike_extra=FAR_REAUTH, child_extra=FAR_CHILD)
    # a fresh IKE SA, so the far end's re-authentication time applies to it
    old = set(installed(one)[1])
    sw.swanctl(gw.ns, gw.charon.uri, "--terminate", "--ike", "ha", "--force")
    wait_until(
        lambda: bool(set(installed(one)[1]) - old) and len(installed(one)[0]) == 1,
        timeout=120,
        interval=1,
        what="a new IKE SA and its CHILD SA",
    )
    # Not 0, whatever the node does. A re-authentication is a new IKE SA with a new
    # CHILD SA (RFC 7296 2.8.3), with none of a rekey's hand-over. The node, answering
    # IKE_AUTH, installs its new outbound SA at once (strongSwan's child_create does for
    # every IKE_AUTH responder), so what it sends in the next round trip reaches a far
    # end that has not installed the inbound SA yet (the far end's XfrmInNoStates). The
    # far end's DELETE of the old IKE SA removes the old SAs at the node first, while
    # the far end may still send on its old outbound SA until the answer arrives (the
    # node's XfrmInNoStates). And the far end, swapping its own SAs, drops some of its
    # own outbound packets (XfrmAcquireError). Two runs: 6 lost of 3375 (far end 2 + 3,
    # node 0) and 4 of 3450 (far end 1 + 2, node 1). So the test asserts that the node
    # never failed to send (only inbound packets for an SA it did not have), and that
    # the loss stays within a second's worth, which a break-before-make
    # re-authentication (the old SAs deleted first) exceeds.
    seen = soak(one, "reauth", allowed_lost=round(1.0 / INTERVAL))
    assert set(seen.node_drops) <= REAUTH_NODE_DROPS, seen.node_drops
