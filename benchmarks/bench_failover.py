"""Failover of an HA pair: routevpn's agent beside the same pair built by hand.

    .venv/bin/python benchmarks/bench_failover.py [--breaks crash link-down esp-drop]

CHILD SAs need a real IPsec kernel, so the measurement runs inside the QEMU lab guest
(this script boots it and re-runs itself there with --in-guest); the API server runs on
the host, forwarded into the guest, as in bench_agent_scale.py. Topology: support.hapair
(a node, two far-end gateways configured by hand, a far network behind both). Both pairs
use the HA settings of docs/ha.md (DPD delay 2 s; retransmit 1.0 s, base 1.4, 2 tries).

* by hand, the baseline: two VTIs with routes at metric 100 and 200, one swanctl.conf
  (start_action=start, dpd_action=restart) and an updown script on the primary's child
  that moves its routes to metric 300 on down-client and back to 100 on up-client
  (`ip route replace` the new, then delete the old);
* routevpn: the real agent and two VpnTunnels (tests/lab/test_failover_lab.py's setup),
  each with a health check (spec.healthCheck: a ping of its gateway's inside address
  through the tunnel every 1 s, failing after 3 misses), which is what sees ESP dropped
  while IKE passes; the hand pair has nothing like it and stays blind to that break.

For each break of the primary — its far-end charon SIGKILLed (kernel SAs flushed), ESP
dropped on its far gateway (iptables), its far gateway's outer link down — a ping every
10 ms runs from the node's inside address to the far host: lost pings, the longest gap
between replies (the outage) and the time from the break to the first reply through the
backup. Then the primary is restored (the hand pair is re-initiated with swanctl, the
agent re-initiates by itself) and a fresh ping counts the loss at fail-back.
Target: routevpn's outage ≤ the hand pair's + 0.5 s, and 0 lost at fail-back.
Nothing asserts on wall time; the script exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test-support package (tests/ is no package)
sys.path.insert(0, str(REPO / "tests" / "lab"))  # the failover lab test's setup

BREAKS = ("crash", "link-down", "esp-drop")
INTERVAL = 0.01
DETECT_TIMEOUT_S = 30.0  # ~3x the detection time the settings give: longer means "not seen"
PRIMARY_METRIC, BACKUP_METRIC, DOWN_METRIC = 100, 200, 300
PSK = "bench-failover-psk-0123456789abcdef012345"  # throwaway, never logged

UPDOWN = """#!/bin/sh
# charon's updown for the primary child: while it is down its routes sit at {down},
# behind the backup's {backup}; once it is up they are back at {up}. New route first,
# then the old one goes (an `ip route replace` with another metric is another route).
PATH=/usr/sbin:/usr/bin:/sbin:/bin
case "$PLUTO_VERB" in
    up-client) fam=-4 net={net4} via={via4} new={up} old={down} ;;
    down-client) fam=-4 net={net4} via={via4} new={down} old={up} ;;
    up-client-v6) fam=-6 net={net6} via={via6} new={up} old={down} ;;
    down-client-v6) fam=-6 net={net6} via={via6} new={down} old={up} ;;
    *) exit 0 ;;
esac
ip $fam route replace $net via $via dev vti1 metric $new
ip $fam route del $net via $via dev vti1 metric $old 2>/dev/null || true
"""


@dataclass
class Pair:
    """One HA pair on the node: its two tunnel interfaces and how to bring the primary
    back by hand after a restore (a no-op for the agent, which does it itself)."""

    name: str
    world: Any  # support.hapair.World
    primary_dev: str
    backup_dev: str
    reinitiate: Callable[[], None]


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@contextlib.contextmanager
def hand_pair(world: Any, tmp: Path) -> Iterator[Pair]:
    """The baseline pair on `world`'s node: ip, a swanctl.conf and an updown script."""
    from support import hapair as ha
    from support import swanctl as sw
    from support.charon import DEFAULT_PLUGINS, running

    node = world.node
    script = tmp / "updown.sh"
    script.write_text(
        UPDOWN.format(
            up=PRIMARY_METRIC,
            down=DOWN_METRIC,
            backup=BACKUP_METRIC,
            net4=ha.FAR_NET4,
            net6=ha.FAR_NET6,
            via4=ha.GWA.inside4[1],
            via6=ha.GWA.inside6[1],
        )
    )
    script.chmod(0o755)
    conns = []
    for dev, key, gw, metric in (
        ("vti1", 101, ha.GWA, PRIMARY_METRIC),
        ("vti2", 102, ha.GWB, BACKUP_METRIC),
    ):
        node.ip(
            "link",
            "add",
            dev,
            "type",
            "vti",
            "local",
            gw.node_outer,
            "remote",
            gw.outer,
            "key",
            str(key),
        )
        node.sysctl(f"net.ipv4.conf.{dev}.disable_policy", "1")
        node.ip("link", "set", dev, "up")
        for addr in gw.node_inside:
            node.add_address(dev, addr)
        node.ip(
            "route", "add", ha.FAR_NET4, "via", gw.inside4[1], "dev", dev, "metric", str(metric)
        )
        node.ip(
            "-6",
            "route",
            "add",
            ha.FAR_NET6,
            "via",
            gw.inside6[1],
            "dev",
            dev,
            "metric",
            str(metric),
        )
        child = sw.Child(
            dev,
            esp_proposals=ha.ESP_PROPOSALS,
            mark=key,
            start_action="start",
            dpd_action="restart",
            updown=str(script) if dev == "vti1" else None,
        )
        conns.append(
            sw.Conn(
                dev,
                gw.node_outer,
                gw.outer,
                gw.node_outer,
                gw.outer,
                PSK,
                [child],
                proposals=ha.IKE_PROPOSALS,
                dpd_delay=f"{ha.DPD_DELAY_S}s",
            )
        )
    plugins = f"{DEFAULT_PLUGINS} updown"
    with running(node, tmp / "charon", plugins=plugins, extra=ha.RETRANSMIT) as charon:
        sw.write_and_load(node, charon.uri, tmp / "swanctl.conf", conns)

        def up(dev: str) -> None:
            """Initiate `dev` until its CHILD SA is installed (a first attempt may be
            lost while charon's own start action is still under way)."""
            deadline = time.monotonic() + 90
            while sw.child_states(sw.list_sas(node, charon.uri)).get(dev) != "INSTALLED":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{dev} not up: {charon.log_tail(60)}")
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    sw.initiate(node, charon.uri, dev, ike=dev, timeout=10)

        for dev in ("vti1", "vti2"):
            up(dev)

        def reinitiate() -> None:
            up("vti1")

        yield Pair("by hand", world, "vti1", "vti2", reinitiate)


def breaker(gw: Any, kind: str, *, on: bool) -> None:
    """Break (on) or restore (not on) the primary's far gateway in the way `kind` says."""
    if kind == "crash":
        gw.crash() if on else gw.restore()
    elif kind == "link-down":
        gw.ns.ip("link", "set", "wan", "down" if on else "up")
    else:
        gw.esp(drop=on)


def carried(pair: Pair, dev: str, count: int, timeout: float) -> bool:
    """Whether `dev` on the node sends `count` more packets within `timeout` s."""
    from support import hapair as ha

    start = ha.tx_packets(pair.world.node, dev)
    deadline = time.monotonic() + timeout
    while ha.tx_packets(pair.world.node, dev) - start < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def pinging(pair: Pair, log: Path) -> Iterator[Any]:
    """An IPv4 ping every 10 ms from the node's inside address, once it has replies."""
    from support import hapair as ha

    p = ha.Pinger(pair.world.node, ha.NODE_LAN4, ha.FAR_HOST4, log, INTERVAL)
    p.start()
    try:
        p.wait(50)
        yield p
    finally:
        p.stop()


def measure(pair: Pair, kind: str, tmp: Path) -> dict[str, Any]:
    """One break and its restore: lost pings, outage, break → backup, fail-back loss."""
    gw = pair.world.gws[0]
    out: dict[str, Any] = {"pair": pair.name, "break": kind}
    with pinging(pair, tmp / f"{kind}-break.txt") as p:
        broke = time.time()
        breaker(gw, kind, on=True)
        out["detected"] = carried(pair, pair.backup_dev, 150, DETECT_TIMEOUT_S)
        if out["detected"]:
            p.wait(50, since=time.time())
    if out["detected"]:
        gap = p.gap()
        out.update(lost=p.lost(), outage_s=gap.seconds, to_backup_s=gap.after[0] - broke)
    if not out["detected"]:
        # nothing failed over, so nothing fails back: the break only black-holed traffic
        from support import hapair as ha

        p = ha.Pinger(pair.world.node, ha.NODE_LAN4, ha.FAR_HOST4, tmp / f"{kind}-back.txt")
        p.start()
        try:
            breaker(gw, kind, on=False)
            pair.reinitiate()
            p.wait(50, since=time.time(), timeout=120)
        finally:
            p.stop()
        out["failback_lost"] = None
        return out
    with pinging(pair, tmp / f"{kind}-back.txt") as p:
        breaker(gw, kind, on=False)
        pair.reinitiate()
        if not carried(pair, pair.primary_dev, 150, 120):
            raise TimeoutError(f"{pair.name}: the primary never carried again after {kind}")
        p.wait(50, since=time.time())
    out["failback_lost"] = p.lost()
    return out


def run_pair(pair: Pair, breaks: list[str], tmp: Path) -> list[dict[str, Any]]:
    """Every break in turn on one pair."""
    out = []
    for kind in breaks:
        progress(f"{pair.name}: {kind}")
        out.append(measure(pair, kind, tmp))
        progress(f"{pair.name}: {out[-1]}")
    return out


def in_guest(breaks: list[str]) -> int:
    """The measurement itself (inside the lab guest): the hand pair, then routevpn's."""
    import test_failover_lab as tfl  # type: ignore[import-not-found]

    from support import hapair as ha

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        hand, agent = Path(tmp) / "hand", Path(tmp) / "agent"
        hand.mkdir()
        agent.mkdir()
        with ha.world(hand / "world", PSK) as world, hand_pair(world, hand) as pair:
            results += run_pair(pair, breaks, hand)
        with (
            tfl.tal.guest_control_plane(Path(tmp) / "cp") as kubeconfig,
            tfl.agent_world(kubeconfig, agent, ha.RETRANSMIT) as h,
        ):
            tfl.bring_up(h)
            pair = Pair("routevpn", h.world, "vti4101", "vti4102", lambda: None)
            results += run_pair(pair, breaks, agent)
    print("BENCH-RESULTS " + json.dumps(results))
    return 0


def report(results: list[dict[str, Any]]) -> int:
    """Print both pairs side by side with the targets; 1 if a target is missed."""
    print(
        f"{'break':>10} {'pair':>9} {'lost':>6} {'outage':>8} {'→backup':>8} {'fail-back lost':>15}"
    )
    for r in results:
        if r["detected"]:
            figures = f"{r['lost']:>6} {r['outage_s']:>7.2f}s {r['to_backup_s']:>7.2f}s"
        else:
            figures = f"{'no failover within':>23} {DETECT_TIMEOUT_S:.0f}s"
        back = "-" if r["failback_lost"] is None else r["failback_lost"]
        print(f"{r['break']:>10} {r['pair']:>9} {figures} {back:>15}")
    missed = []
    by = {(r["pair"], r["break"]): r for r in results}
    for (name, kind), r in by.items():
        if name != "routevpn":
            continue
        base = by.get(("by hand", kind))
        if r["failback_lost"]:
            missed.append(f"{kind}: {r['failback_lost']} lost at fail-back (target 0)")
        if (
            base
            and base["detected"]
            and (not r["detected"] or r["outage_s"] > base["outage_s"] + 0.5)
        ):
            missed.append(
                f"{kind}: outage {r.get('outage_s')} > by hand {base['outage_s']:.2f}+0.5s"
            )
    print(
        "target: routevpn outage <= by hand + 0.5 s, 0 lost at fail-back: "
        + ("met" if not missed else "MISSED: " + "; ".join(missed))
    )
    return 1 if missed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--breaks", nargs="+", choices=BREAKS, default=list(BREAKS))
    parser.add_argument("--timeout", type=float, default=1500.0, help="guest deadline (s)")
    parser.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_guest:
        return in_guest(args.breaks)
    from support import lab
    from support.cluster import bin_dir

    if bin_dir() is None:
        print("etcd/kube-apiserver not built: run hack/local-cluster.sh build")
        return 1
    cmd = [sys.executable, str(Path(__file__).resolve()), "--in-guest", "--breaks", *args.breaks]
    os.environ.setdefault("ROUTEVPN_LAB_MEMORY_MB", "2048")
    res = lab.run_with_host_api(cmd, timeout=args.timeout)
    line = next((x for x in res.output.splitlines() if x.startswith("BENCH-RESULTS ")), None)
    if line is None:
        print(res.output[-6000:])
        print(f"no results (guest exit {res.returncode}, timed out {res.timed_out})")
        return 1
    print(f"lab guest: accel={res.accel}, wall {res.wall_seconds:.0f}s")
    return report(json.loads(line.removeprefix("BENCH-RESULTS ")))


if __name__ == "__main__":
    sys.exit(main())
