"""BGP over two tunnels on a real IPsec kernel: routevpn's BIRD against two far ends
configured by hand (issue 16).

Topology (support.hapair): the node namespace runs the REAL `routevpn agent`, its charon
and routevpn's BIRD (started as the chart starts it: `bird -f` with a minimal first
configuration in the release's directory, which the agent then replaces); gateways gwa
and gwb each run charon and their own BIRD, configured by hand (support.birdconf: eBGP
from their own ASN, BFD, advertising the far network's IPv4 and IPv6 prefixes; gwb
prepends its AS twice, so its routes are the backup's). Two VpnTunnels ask for BGP
(`spec.bgp`: both peer addresses, BFD on, accepting the far network), and no static
route. In order, on one guest boot:

(a) both tunnels' sessions (IPv4 and IPv6 each) reach Established; status and
    `kubectl get vpnt` say so with the prefix counts; the seconds from the tunnel's
    CHILD SA to its sessions Established are printed;
(b) pings (IPv4 and IPv6, every 10 ms) to the far host cross the primary's tunnel;
(c) the primary's far end loses its outer link: BFD takes the sessions down and traffic
    moves to the backup, losing at most BFD's detection time + 1 s worth of pings (the
    bound derived from both ends' BFD settings, nothing asserted on wall time);
(d) the link back (the far end re-enables its sessions once the tunnel is back with one
    IKE SA at each end): the primary's sessions return, traffic goes back without a loss;
(e) gwb also advertises the node's own network and default routes (IPv4 and IPv6): the
    node refuses them (none in its kernel), its status counts them refused, and the
    far network stays learned.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import test_agent_lab as tal  # type: ignore[import-not-found]  # tests/lab is no package
import test_failover_lab as tfl  # type: ignore[import-not-found]

from routevpn.dataplane import bird_config
from support import birdconf
from support import hapair as ha
from support.bird import running
from support.kube import wait_until

pytestmark = pytest.mark.timeout(900)

PRIMARY, BACKUP = "bgp-primary", "bgp-backup"
GWS = {PRIMARY: ha.GWA, BACKUP: ha.GWB}
IFACES = {
    PRIMARY: {"name": "vti4101", "type": "vti", "key": 4101},
    BACKUP: {"name": "vti4102", "type": "vti", "key": 4102},
}
NODE_ASN, FAR_ASNS = 64512, {PRIMARY: 65001, BACKUP: 65002}
INTERVAL = tfl.INTERVAL  # 10 ms
# BFD: the node's (the renderer's defaults) and the far ends' (support.birdconf). An end
# declares its peer down after the peer's multiplier x the agreed interval (the slower of
# the two ends'); bounded here by the larger multiplier and interval of both, so the bound
# holds whichever end's figure applies.
BFD_DETECTION_S = (
    max(bird_config.DEFAULT_BFD_MULTIPLIER, birdconf.BFD_MULTIPLIER)
    * max(bird_config.DEFAULT_BFD_INTERVAL_MS, birdconf.BFD_INTERVAL_MS)
    / 1000
)
SLACK_S = 1.0  # the allowance: BIRD withdrawing, the kernel route replaced
LOSS_BUDGET = math.ceil((BFD_DETECTION_S + SLACK_S) / INTERVAL)
# An emulated CPU (TCG) on a shared 2-core host schedules BIRD, the kernel and ping late by
# up to half a second at times: allowed on top, and the figure printed is what counts.
EMULATION_PINGS = math.ceil(0.5 / INTERVAL)
FORBIDDEN = (ha.NODE_NET4, "0.0.0.0/0", "::/0")


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with tal.guest_control_plane(tmp_path_factory.mktemp("control-plane")) as kc:
        yield kc


@contextlib.contextmanager
def node_bird(world: ha.World, tmp: Path) -> Iterator[Sequence[str]]:
    """routevpn's BIRD in the node namespace as the chart runs it (charon-daemonset.yaml:
    a minimal first bird.conf in the release's `bird/` directory), and the agent's flags."""
    run = tmp / "node-release"
    conf_dir = run / "bird"
    with running(world.node, conf_dir, "protocol device {\n}\n", name="bird") as bird:
        flags = ["--bird-socket", str(bird.socket), "--bird-config-dir", str(conf_dir)]
        yield [*flags, "--bgp-local-asn", str(NODE_ASN)]


@pytest.fixture(scope="module")
def lab(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The HA topology, the agent beside routevpn's BIRD, both far ends' BIRDs running."""
    tmp = tmp_path_factory.mktemp("bgp")
    with (
        tfl.agent_world(kubeconfig, tmp, beside=lambda w: node_bird(w, tmp)) as h,
        contextlib.ExitStack() as stack,
    ):
        h.far_birds = {
            name: stack.enter_context(
                running(gw.ns, tmp / gw.plan.name, far_config(name), name="far")
            )
            for name, gw in zip((PRIMARY, BACKUP), h.world.gws, strict=True)
        }
        yield h


def far_config(name: str, extra: Sequence[str] = ()) -> str:
    """The far end's hand-written BIRD: eBGP to the node over both inside families."""
    gw = GWS[name]
    peers = [
        birdconf.BgpPeer(gw.inside4[1], gw.inside4[0]),
        birdconf.BgpPeer(gw.inside6[1], gw.inside6[0]),
    ]
    routes = [(ha.FAR_NET4, gw.far4), (ha.FAR_NET6, gw.far6)]
    routes += [(p, gw.far6 if ":" in p else gw.far4) for p in extra]
    prepend = 2 if name == BACKUP else 0
    return birdconf.bgp_far_end(
        gw.inside4[1], FAR_ASNS[name], NODE_ASN, peers, routes, prepend=prepend
    )


def tunnel(h: Any, name: str) -> dict[str, Any]:
    """One of the two, as a user writes a BGP tunnel: inside addresses, spec.bgp, no routes.
    The backup also lists the node's own network in `accept`: the agent's filter must
    refuse it all the same (e)."""
    gw = GWS[name]
    obj = cast(dict[str, Any], tfl.tunnel(h, name, gw, 100))
    spec = obj["spec"]
    del spec["routes"], spec["healthCheck"]
    accept = [ha.FAR_NET4, ha.FAR_NET6] + ([ha.NODE_NET4] if name == BACKUP else [])
    spec["bgp"] = {
        "peerASN": FAR_ASNS[name],
        "peerAddresses": [gw.inside4[1], gw.inside6[1]],
        "bfd": True,
        "holdTime": 9,
        "accept": accept,
    }
    return obj


def sessions(h: Any, name: str) -> dict[str, dict[str, Any]]:
    """status.bgp.sessions of `name`, by peer address."""
    obj = tal.get(h, name) or {}
    found = ((obj.get("status") or {}).get("bgp") or {}).get("sessions") or []
    return {s["peerAddress"]: s for s in found}


def all_established(h: Any, name: str) -> bool:
    s = sessions(h, name)
    return len(s) == 2 and all(v.get("state") == "Established" for v in s.values())


def all_accepted(h: Any, name: str) -> bool:
    s = sessions(h, name)
    accepted = [(v.get("prefixes") or {}).get("accepted", 0) for v in s.values()]
    return len(accepted) == 2 and min(accepted) >= 1


def _fail(h: Any, what: str) -> None:
    birds = "\n".join(
        f"--- {n} far bird\n{b.birdc('show protocols')}\n{b.log_tail()}"
        for n, b in h.far_birds.items()
    )
    status = {n: (tal.get(h, n) or {}).get("status") for n in (PRIMARY, BACKUP)}
    pytest.fail(f"{what}\n{status}\n{ha.diagnose(h.world, h.charon)}\n{birds}\n{h.agent.tail()}")


def wait_sessions(h: Any, name: str, up: bool, timeout: float = 180) -> float:
    """Until every session of `name` is (up) or none is (not up) Established; seconds."""
    start = time.monotonic()
    try:
        wait_until(lambda: all_established(h, name) == up, timeout=timeout, interval=0.2,
                   what=f"{name} sessions {'up' if up else 'down'}")  # fmt: skip
    except TimeoutError as e:
        _fail(h, str(e))
    return time.monotonic() - start


def kernel_route(h: Any, prefix: str) -> str:
    fam = "-6" if ":" in prefix else "-4"
    return cast(str, h.world.node.ip(fam, "route", "show", prefix, "proto", "bird")).strip()


_IKE = re.compile(r"#(\d+), ESTABLISHED, IKEv2, ([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r")


def drop_orphans(h: Any) -> int:
    """Terminate, at each far end, IKE SAs the node does not hold. On the emulated CPU
    the node sometimes initiates twice before the first exchange ends; the far end then
    keeps two IKE SAs whose CHILD SAs share one mark and sends some replies into the one
    the node dropped (docs/ha.md, "The far end"): seen here as one BGP session stuck
    with "No route to host" while the other family's ran."""
    node = {(i, r) for _, i, r in _IKE.findall(h.world.node.run("swanctl", "--list-sas", "--uri",
                                                                 h.charon.uri))}  # fmt: skip
    dropped = 0
    for gw in h.world.gws:
        for n, i, r in _IKE.findall(gw.ns.run("swanctl", "--list-sas", "--uri", gw.charon.uri)):
            if (i, r) not in node:
                print(f"{gw.plan.name}: orphan IKE SA #{n} terminated")
                gw.ns.run("swanctl", "--terminate", "--ike-id", n, "--force", "--uri",
                          gw.charon.uri, check=False)  # fmt: skip
                dropped += 1
    return dropped


def settle_orphans(h: Any, quiet_s: float = 3.0, timeout: float = 60.0) -> None:
    """drop_orphans until none turned up for `quiet_s`: an IKE_AUTH the node gave up may
    still complete at the far end after the node's next attempt did."""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        if drop_orphans(h):
            quiet_since = time.monotonic()
        if time.monotonic() > deadline:
            _fail(h, f"orphan IKE SAs still turning up after {timeout:.0f}s")
        time.sleep(0.5)


def test_a_sessions_establish_on_both_tunnels_with_counts(lab: Any) -> None:
    h = lab
    wait_until(h.agent.ready, timeout=120, interval=0.5, what="agent ready")
    for name in (PRIMARY, BACKUP):
        h.custom.create_namespaced_custom_object(tal.GROUP, tal.VERSION, h.tunnel_ns,
                                                 tal.PLURAL, tunnel(h, name))  # fmt: skip
        tal.deliver_secret(h, name)
        tal.operator_places(h, name, IFACES[name])
    for name in (PRIMARY, BACKUP):
        tal.wait_true(h, name, ("Configured", "IkeEstablished", "ChildSaInstalled"))
    settle_orphans(h)
    for name in (PRIMARY, BACKUP):
        seconds = wait_sessions(h, name, True)
        print(f"{name}: sessions Established {seconds:.1f}s after both tunnels were Ready")
        tal.wait_true(h, name, ("BgpEstablished",), timeout=60)
    for name in (PRIMARY, BACKUP):
        # the far end's UPDATE follows Established, and status the agent's next look
        wait_until(
            lambda n=name: all_accepted(h, n),  # type: ignore[misc]
            timeout=60,
            interval=0.5,
            what=f"{name}: a prefix accepted on each session",
        )
        for peer, s in sessions(h, name).items():
            print(f"{name} {peer}: {s}")
            assert s["prefixes"]["accepted"] == 1, s  # its family's far network
            assert s["prefixes"]["received"] >= 1 and s["refused"] == 0, s
    # the BGP column is in the wide view (most tunnels have no BGP)
    table = h.kubectl("get", "vpnt", "-n", h.tunnel_ns, "-o", "wide").stdout
    print(table)
    assert "BGP" in table.splitlines()[0], table
    assert table.count("Established") >= 2, table


def test_b_traffic_crosses_the_primary(lab: Any) -> None:
    h = lab
    for prefix in (ha.FAR_NET4, ha.FAR_NET6):
        route = kernel_route(h, prefix)
        assert "dev vti4101" in route, (prefix, route)
    with tfl.pinging(h, "bgp-up") as pings:
        tfl.carried_by(h, "vti4101", 200)
    assert [p.lost() for p in pings] == [0, 0], [p.gap() for p in pings]


def test_c_primary_link_down_moves_traffic_within_bfd_detection(lab: Any) -> None:
    h = lab
    gwa = h.world.gws[0]
    with tfl.pinging(h, "bgp-down") as pings:
        broke = time.time()
        gwa.ns.ip("link", "set", "wan", "down")
        tfl.settled(h, pings, "vti4102")
    for p in pings:
        gap = p.gap()
        print(
            f"bgp failover {p.dst}: lost {p.lost()} pings (budget {LOSS_BUDGET}: BFD "
            f"{BFD_DETECTION_S:.2f}s + {SLACK_S:.0f}s), outage {gap.seconds:.2f}s, first reply "
            f"via the backup {gap.after[0] - broke:.2f}s after the break"
        )
        # ping's sequence stalls while a send fails, so the outage is judged by the
        # replies' own timestamps (the guest's), in pings' worth as the budget is
        assert p.lost() > 0, (p.dst, gap)
        assert math.ceil(gap.seconds / INTERVAL) <= LOSS_BUDGET + EMULATION_PINGS, (p.dst, gap)
    for prefix in (ha.FAR_NET4, ha.FAR_NET6):
        assert "dev vti4102" in kernel_route(h, prefix), prefix
    wait_sessions(h, PRIMARY, False, timeout=60)


def test_d_primary_link_up_takes_traffic_back_without_loss(lab: Any) -> None:
    h = lab
    gwa = h.world.gws[0]
    far = h.far_birds[PRIMARY]
    # The far end holds its sessions until the tunnel is back with one IKE SA at each end.
    # On the emulated CPU the node sometimes gives up an IKE_AUTH the far end completed,
    # and the far end's orphan then takes some replies until it is dropped (docs/ha.md,
    # "The far end"): an IKE matter of this harness, seen in CI as ~1 s lost here. What is
    # measured is BGP taking the traffic back onto a working tunnel.
    far_sessions = ("node0", "node1")  # support.birdconf.bgp_far_end's protocol names
    for proto in far_sessions:
        far.birdc(f"disable {proto}")
    with tfl.pinging(h, "bgp-up-again") as pings:
        gwa.ns.ip("link", "set", "wan", "up")
        tal.wait_true(h, PRIMARY, ("IkeEstablished", "ChildSaInstalled"), timeout=240)
        settle_orphans(h)
        for proto in far_sessions:
            far.birdc(f"enable {proto}")
        seconds = wait_sessions(h, PRIMARY, True, timeout=420)
        print(f"primary sessions back {seconds:.1f}s after the far end enabled them")
        tfl.settled(h, pings, "vti4101")
    for p in pings:
        print(f"bgp fail-back {p.dst}: lost {p.lost()} of {len(p.replies())} pings")
    assert [p.lost() for p in pings] == [0, 0], [p.gap() for p in pings]


def test_e_forbidden_prefixes_are_refused_and_counted(lab: Any) -> None:
    h = lab
    answer = h.far_birds[BACKUP].reconfigure(far_config(BACKUP, FORBIDDEN))
    assert "Reconfigured" in answer or "Reconfiguration in progress" in answer, answer

    def refused() -> bool:
        s = sessions(h, BACKUP)
        v4, v6 = s.get(GWS[BACKUP].inside4[1], {}), s.get(GWS[BACKUP].inside6[1], {})
        return bool(v4.get("refused", 0) >= 2 and v6.get("refused", 0) >= 1)

    try:
        wait_until(refused, timeout=90, interval=0.5, what="refused prefixes in status")
    except TimeoutError as e:
        _fail(h, str(e))
    for peer, s in sessions(h, BACKUP).items():
        print(f"{BACKUP} {peer} with forbidden prefixes: {s}")
        assert s["state"] == "Established" and s["prefixes"]["accepted"] == 1, s
    for prefix in FORBIDDEN:
        assert kernel_route(h, prefix) == "", prefix
    default4 = h.world.node.ip("-4", "route", "show", "default")
    assert "proto bird" not in default4 and "vti" not in default4, default4
    assert "vti" not in h.world.node.ip("-6", "route", "show", "default"), "a default via a VTI"
    assert "dev vti4101" in kernel_route(h, ha.FAR_NET4)
    assert re.search(r"\bvia\b", kernel_route(h, ha.FAR_NET6))
