"""The node agent bringing up N tunnels on one node, beside the same work done by hand.

    .venv/bin/python benchmarks/bench_agent_scale.py [--tunnels 1 200] [--logs DIR]

CHILD SAs need a real IPsec kernel, so the measurement runs inside the QEMU lab guest
(this script boots it and re-runs itself there with --in-guest). The API server runs on
the host, as a real one runs off the node, reached through QEMU user networking on a
TEST-NET range. Inside, on the reference topology (support.sites), for each N:

* baseline, by hand: a shell-style script (ip + one swanctl.conf, start_action=start)
  makes N XFRM interfaces with an inside address and a route each on the left site,
  loads N connections; seconds until all N CHILD SAs are INSTALLED; then it is all
  removed again;
* the agent: from the first API write, seconds until all N VpnTunnels report
  IkeEstablished, ChildSaInstalled and RoutesInstalled True. What is written is what a
  `kubectl apply` and the operator write: the tunnel (with the operator's node label),
  its delivered Secret and the operator's status (node, allocated if_id), eight
  requests in flight. Then the agent's RSS (VmRSS, VmHWM); the writes of the settling
  period (each idle tunnel's TrafficFlowing turns False once, after the agent's quiet
  period); and the API writes of a quiet window after that, when nothing changes.

Both charons and the agent run with production settings (strongSwan's retransmission
schedule; the agent's default resync, counter and quiet periods). The far end (right
site) is configured by hand once per N and serves both runs. Figures are printed;
nothing asserts on wall time. XFRM interfaces are used because many VTIs sharing the
same two outer addresses can't all receive (the VTI input lookup ignores keys), while
XFRM interfaces are told apart by if_id.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test-support package (tests/ is no package)
sys.path.insert(0, str(REPO / "tests" / "lab"))  # the agent lab test's relay helpers

PSK = "bench-agent-psk-0123456789abcdef0123456789"  # throwaway, never logged
BASE_ID = 4096
# Production settings, not the tests' short ones: the agent's default resync, counter
# and quiet periods, and strongSwan's own retransmission schedule (the test charons give
# up after ~10 s, which 200 IKE_SA_INITs at once under emulation can exceed).
AGENT_DEFAULTS = ("--resync-seconds", "30", "--counters-period", "60", "--quiet-seconds", "120")
CHARON_DEFAULTS = {"retransmit_tries": "5", "retransmit_timeout": "4.0"}
# After all are up, before the quiet window: until every tunnel's TrafficFlowing has
# turned False (fewer than 30 packets within 60 s for the agent's quiet period of 120 s:
# the kernel's own IPv6 packets on a new interface stay below that, docs/status.md), at
# most this long; then one resync.
SETTLE_S = 420.0
RESYNC_S = 30.0
GROUP, VERSION, PLURAL = "routevpn.io", "v1alpha1", "vpntunnels"


def inside(i: int) -> tuple[str, str, str]:
    """(left inside /127, right inside address, the far prefix routed into tunnel i)."""
    return f"2001:db8:f0:{i:x}::/127", f"2001:db8:f0:{i:x}::1", f"2001:db8:e0:{i:x}::/64"


def poll(check: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    """Poll with a deadline (no bare sleeps); raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f}s")
        time.sleep(every)


def installed(site: Any, n: int, prefix: str) -> int:
    """CHILD SAs INSTALLED in the site's charon among connections starting with `prefix`."""
    from support import swanctl as sw

    states = sw.child_states(sw.list_sas(site.ns, site.uri))
    return sum(1 for name, st in states.items() if name.startswith(prefix) and st == "INSTALLED")


def right_side(right: Any, n: int, workdir: Path) -> None:
    """The far end of N tunnels, by hand: XFRM interfaces, addresses, routes, conns."""
    from support import swanctl as sw
    from support.sites import LEFT, RIGHT

    conns = []
    for i in range(n):
        _, far, _ = inside(i)
        right.ns.ip("link", "add", f"bx{i}", "type", "xfrm", "dev", right.wan,
                    "if_id", str(BASE_ID + i))  # fmt: skip
        right.ns.ip("link", "set", f"bx{i}", "up")
        right.ns.ip("-6", "addr", "add", f"{far}/127", "dev", f"bx{i}", "nodad")
        child = sw.Child(f"t{i}", esp_proposals="aes256gcm16-ecp384", if_id=BASE_ID + i)
        conns.append(sw.Conn(
            f"t{i}", RIGHT.outer6, LEFT.outer6, f"right-{i}.test", f"left-{i}.test", PSK,
            [child], proposals="aes256gcm16-prfsha384-ecp384",
        ))  # fmt: skip
    sw.write_and_load(right.ns, right.uri, workdir / "right.conf", conns)


def by_hand(left: Any, n: int, workdir: Path) -> tuple[float, int]:
    """The baseline: ip + swanctl on the left; (seconds until N CHILD SAs and routes, how
    many came up). By hand nothing retries what charon gave up on (keyingtries 1): after
    900 s the baseline is reported with the count it reached, and the run goes on."""
    from support import swanctl as sw
    from support.sites import LEFT, RIGHT

    t0 = time.monotonic()
    conns = []
    for i in range(n):
        mine, far, prefix = inside(i)
        left.ns.ip("link", "add", f"hx{i}", "type", "xfrm", "dev", left.wan,
                   "if_id", str(BASE_ID + i))  # fmt: skip
        left.ns.ip("link", "set", f"hx{i}", "up")
        left.ns.ip("-6", "addr", "add", mine, "dev", f"hx{i}", "nodad")
        left.ns.ip("-6", "route", "replace", prefix, "via", far, "dev", f"hx{i}")
        child = sw.Child(f"h{i}", esp_proposals="aes256gcm16-ecp384", if_id=BASE_ID + i,
                         start_action="start")  # fmt: skip
        conns.append(sw.Conn(
            f"h{i}", LEFT.outer6, RIGHT.outer6, f"left-{i}.test", f"right-{i}.test", PSK,
            [child], proposals="aes256gcm16-prfsha384-ecp384",
        ))  # fmt: skip
    sw.write_and_load(left.ns, left.uri, workdir / "left.conf", conns)
    try:
        poll(lambda: installed(left, n, "h") >= n, 900, f"{n} hand-made CHILD SAs")
    except TimeoutError:
        states = sw.child_states(sw.list_sas(left.ns, left.uri))
        progress(f"by hand: CHILD states {sorted(states.values())[:20]} ({len(states)} in all)")
    took, up = time.monotonic() - t0, installed(left, n, "h")
    sw.write_and_load(left.ns, left.uri, workdir / "left.conf", [])  # unload all again
    for i in range(n):
        left.ns.ip("link", "delete", f"hx{i}", check=False)
    poll(lambda: installed(left, n, "h") == 0, 120, "hand-made SAs gone")
    return took, up


def agent_run(lab: Any, n: int, quiet: float) -> dict[str, Any]:
    """The agent: API objects for N tunnels → seconds until all are up; RSS; quiet writes.

    The clock starts when the first object is written. What is written is what a user's
    `kubectl apply` and the operator would write: each tunnel (already carrying the
    operator's node label), its delivered Secret, and the operator's status (node and
    allocated interface), eight requests in flight like a client applying a manifest.
    """
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client

    from routevpn.api import naming
    from support.sites import LEFT, RIGHT

    names = [f"t{i}" for i in range(n)]
    log_mark = lab.agent.log.stat().st_size

    def place(i: int) -> None:
        name = names[i]
        mine, far, prefix = inside(i)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "VpnTunnel",
            "metadata": {"name": name, "namespace": lab.tunnel_ns,
                         "labels": {"routevpn.io/node": lab.node}},
            "spec": {
                "nodeName": lab.node,
                "local": {"address": LEFT.outer6, "id": f"left-{i}.test"},
                "remote": {"address": RIGHT.outer6, "id": f"right-{i}.test"},
                "auth": {"type": "psk", "psk": {"secretRef": {"name": "psk"}}},
                "interface": {"type": "xfrm", "addresses": [mine]},
                "routes": [{"to": prefix, "via": far}],
            },
        }  # fmt: skip
        # as the operator delivers it: its name, the node label and the tunnel annotation
        lab.core.create_namespaced_secret(lab.agent_ns, client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=naming.secret_name(lab.tunnel_ns, name),
                labels={"routevpn.io/node": lab.node},
                annotations=naming.delivered_annotations(lab.tunnel_ns, name)),
            data={"psk": base64.b64encode(PSK.encode()).decode()},
        ))  # fmt: skip
        lab.custom.create_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL, body)
        status = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VpnTunnel",
            "metadata": {"name": name, "namespace": lab.tunnel_ns},
            "status": {
                "node": lab.node,
                "interface": {"name": f"xfrm{BASE_ID + i}", "type": "xfrm", "ifId": BASE_ID + i},
            },
        }
        lab.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, lab.tunnel_ns, PLURAL, name, status,
            field_manager="routevpn-operator", force=True,
            _content_type="application/apply-patch+yaml",
        )  # fmt: skip

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(place, range(n)))
    placed = time.monotonic() - t0
    want = {"IkeEstablished", "ChildSaInstalled", "RoutesInstalled"}

    def all_up() -> bool:
        up = sum(all(c.get(t) == "True" for t in want) for c in _conditions(lab))
        return up >= n

    poll(all_up, 1200, f"{n} tunnels up through the agent", every=2.0)
    took = time.monotonic() - t0
    with lab.agent.log.open("rb") as f:
        f.seek(log_mark)
        passes = pass_summary(f.read().decode(errors="replace"))
    failed = lab.agent.log.read_text(errors="replace").count("reconcile pass failed")
    pid = lab.agent.pid
    rss = _status_kib(pid, "VmRSS") / 1024
    hwm = _status_kib(pid, "VmHWM") / 1024
    # Settling: once per tunnel, TrafficFlowing turns False (NoTrafficReceived) when no
    # packet has come in for the agent's quiet period; those are real transitions.
    settle_from, settle_wall, t_settle = _writes(lab.agent.metrics()), time.time(), time.monotonic()

    def settled_count() -> int:
        return sum(1 for conds in _conditions(lab) if conds.get("TrafficFlowing") == "False")

    with contextlib.suppress(TimeoutError):  # reported below: how many had settled
        poll(lambda: settled_count() >= n, SETTLE_S, "every tunnel idle", every=5.0)
    idle = settled_count()
    wait(RESYNC_S)  # the pass that wrote the last verdict ends (its Events included)
    settle_took = time.monotonic() - t_settle
    before = _writes(lab.agent.metrics())
    settled = _event_reasons(lab, settle_wall, time.time())
    # steady state: nothing changes; count API writes over several resyncs
    quiet_wall = time.time()
    wait(quiet)
    after = _writes(lab.agent.metrics())
    quiet_reasons = _event_reasons(lab, quiet_wall, time.time())
    traffic = traffic_on(lab, names, min(10, n // 2))
    t_delete = time.monotonic()
    for name in names:
        lab.custom.delete_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL, name)
    poll(
        lambda: (
            not lab.custom.list_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL)[
                "items"
            ]
        ),
        900,
        "tunnels deleted",
        every=1.0,
    )
    deleted = time.monotonic() - t_delete
    quiet_writes = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k)}
    settle_writes = {k: v - settle_from.get(k, 0.0) for k, v in before.items()
                     if v != settle_from.get(k)}  # fmt: skip
    return {"placed_s": placed, "up_s": took, "rss_mib": rss, "hwm_mib": hwm,
            "quiet_writes": sum(quiet_writes.values()), "quiet_by_kind": quiet_writes,
            "quiet_s": quiet, "writes_total": sum(after.values()), "passes": passes,
            "failed_passes": failed, "deleted_s": deleted, "settle_s": settle_took,
            "idle": idle,
            "settle_writes": settle_writes, "settle_events": settled,
            "quiet_events": quiet_reasons, "traffic": traffic}  # fmt: skip


def traffic_on(lab: Any, names: list[str], k: int) -> dict[str, Any]:
    """Real traffic through the first `k` (idle, TrafficFlowing False) tunnels: a ping
    every 0.2 s for 10 s into each, all at once. Seconds until those k are Flowing,
    whether exactly those are, and the Events meanwhile (TrafficFlowing's are limited
    per tunnel: the first verdict, NoTrafficReceived, was posted minutes ago)."""
    import subprocess

    if k == 0:
        return {"k": 0}
    wall, t0 = time.time(), time.monotonic()
    pings = [
        subprocess.Popen(
            lab.left.ns.argv("ping", "-n", "-q", "-c", "50", "-i", "0.2", "-W", "2", inside(i)[1]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(k)
    ]
    lost = sum(p.wait(timeout=120) != 0 for p in pings)

    def flowing() -> set[str]:
        items = lab.custom.list_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL)
        return {
            obj["metadata"]["name"]
            for obj in items["items"]
            for c in obj.get("status", {}).get("conditions", [])
            if c["type"] == "TrafficFlowing" and c["status"] == "True"
        }

    with contextlib.suppress(TimeoutError):  # reported: which ones are Flowing
        poll(lambda: len(flowing()) >= k, 180, f"{k} tunnels Flowing", every=2.0)
    took, now = time.monotonic() - t0, flowing()
    wait(RESYNC_S)  # a pass more: nothing else turns Flowing
    later = flowing()
    return {"k": k, "s": took, "exact": now == later == set(names[:k]), "flowing": len(later),
            "ping_failures": lost, "events": _event_reasons(lab, wall, time.time())}  # fmt: skip


_PASS = re.compile(r"pass over (\d+) tunnel\(s\): (.*)$")


def pass_summary(log: str) -> dict[str, float]:
    """The agent's reconcile passes in `log` (its DEBUG lines): count, tunnels, seconds
    per phase."""
    out: dict[str, float] = {"passes": 0, "tunnels": 0}
    for line in log.splitlines():
        m = _PASS.search(line)
        if m is None:
            continue
        out["passes"] += 1
        out["tunnels"] += int(m.group(1))
        for part in m.group(2).split(", "):
            phase, _, secs = part.rpartition(" ")
            out[phase] = round(out.get(phase, 0.0) + float(secs.rstrip("s")), 3)
    return out


def _conditions(lab: Any) -> list[dict[str, str]]:
    """Each tunnel's conditions as {type: status}."""
    items = lab.custom.list_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL)
    return [
        {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        for obj in items["items"]
    ]


def wait(seconds: float) -> None:
    """Let `seconds` pass (a window in which the agent is observed, not a timed assert)."""
    t0 = time.monotonic()
    poll(lambda: time.monotonic() - t0 >= seconds, seconds + 5, "window", every=1.0)


def _event_reasons(lab: Any, since: float, until: float) -> dict[str, int]:
    """The agent's Events about the tunnels in [since, until] (wall clock), by reason."""
    out: dict[str, int] = {}
    events = lab.core.list_namespaced_event(lab.tunnel_ns).items
    for ev in events:
        stamp = ev.last_timestamp or ev.first_timestamp or ev.event_time
        if ev.reporting_component != "routevpn-agent" or stamp is None:
            continue
        # the API's timestamps have one-second resolution
        if since - 1 <= stamp.timestamp() <= until + 1:
            out[ev.reason] = out.get(ev.reason, 0) + 1
    return out


def progress(text: str) -> None:
    """A progress line on the guest's output (seen even if a later step fails)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _status_kib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    return 0.0


def _writes(metrics: str) -> dict[str, float]:
    """routevpn_agent_api_writes_total by kind."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("routevpn_agent_api_writes_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rpartition(" ")[2])
    return out


def in_guest(counts: list[int], quiet: float) -> int:
    """The measurement itself (inside the lab guest)."""
    import tempfile

    import test_agent_lab as tal  # type: ignore[import-not-found]

    results: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp,
        tal.guest_control_plane(Path(tmp) / "cp") as kubeconfig,
    ):
        progress("control plane up")
        for n in counts:
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            with tal.lab_world(
                kubeconfig, work, agent_flags=AGENT_DEFAULTS, charon_extra=CHARON_DEFAULTS
            ) as lab:
                poll(lab.agent.ready, 180, "agent ready")
                right_side(lab.right, n, work)
                progress(f"N={n}: far end ready")
                hand, hand_up = by_hand(lab.left, n, work)
                progress(f"N={n}: by hand {hand:.1f}s, {hand_up} up")
                try:
                    agent = agent_run(lab, n, quiet)
                finally:
                    keep = os.environ.get("ROUTEVPN_LAB_SCRATCH")
                    if keep:  # the agent's log, for --logs on the host
                        shutil.copy(lab.agent.log, Path(keep) / f"agent-{n}.log")
                progress(f"N={n}: agent {agent}")
                results.append({"tunnels": n, "by_hand_s": hand, "by_hand_up": hand_up, **agent})
    print("BENCH-RESULTS " + json.dumps(results))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunnels", type=int, nargs="+", default=[1, 200])
    parser.add_argument("--quiet", type=float, default=70.0, help="steady-state window (s)")
    parser.add_argument("--timeout", type=float, default=2400.0, help="guest deadline (s)")
    parser.add_argument("--logs", type=Path, help="copy the agent's log(s) into this folder")
    parser.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_guest:
        return in_guest(args.tunnels, args.quiet)

    from support import lab
    from support.cluster import bin_dir

    if bin_dir() is None:
        print("etcd/kube-apiserver not built: run hack/local-cluster.sh build")
        return 1
    cmd = [sys.executable, str(Path(__file__).resolve()), "--in-guest", "--quiet",
           str(args.quiet), "--tunnels", *map(str, args.tunnels)]  # fmt: skip
    os.environ.setdefault("ROUTEVPN_LAB_MEMORY_MB", "2048")

    # The API server runs on the host, as a real one runs off the node: the guest's two
    # emulated CPUs are left to the agent, charon and the far end.
    def keep_logs(scratch: Path) -> None:
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in scratch.glob("agent-*.log"):
                shutil.copy(log, args.logs / log.name)

    res = lab.run_with_host_api(cmd, timeout=args.timeout, keep=keep_logs)
    line = next((x for x in res.output.splitlines() if x.startswith("BENCH-RESULTS ")), None)
    if line is None:
        print(res.output[-6000:])
        print(f"no results (guest exit {res.returncode}, timed out {res.timed_out})")
        return 1
    print(f"lab guest: accel={res.accel}, wall {res.wall_seconds:.0f}s")
    print(f"{'tunnels':>8} {'by hand':>9} {'agent':>9} {'placed':>8} {'RSS':>8} {'HWM':>8} "
          f"{'quiet writes':>13}")  # fmt: skip
    for r in json.loads(line.removeprefix("BENCH-RESULTS ")):
        print(
            f"{r['tunnels']:>8} {r['by_hand_s']:>8.1f}s {r['up_s']:>8.1f}s {r['placed_s']:>7.1f}s "
            f"{r['rss_mib']:>6.0f}Mi {r['hwm_mib']:>6.0f}Mi "
            f"{r['quiet_writes']:>6.0f} in {r['quiet_s']:.0f}s {r['quiet_by_kind']} "
            f"(writes to get there: {r['writes_total']:.0f})"
        )
        if r["by_hand_up"] < r["tunnels"]:
            print(
                f"{'':>8} by hand: only {r['by_hand_up']} of {r['tunnels']} up after "
                f"{r['by_hand_s']:.0f}s (charon gave up on the rest; nothing retries)"
            )
        print(f"{'':>8} agent passes until all up: {r['passes']}; "
              f"failed passes: {r['failed_passes']}")  # fmt: skip
        print(f"{'':>8} settling {r['settle_s']:.0f}s after all up (until {r['idle']}/"
              f"{r['tunnels']} idle, TrafficFlowing False): writes {r['settle_writes']}, "
              f"events {r['settle_events']}")  # fmt: skip
        print(f"{'':>8} quiet window events: {r['quiet_events']}")
        t = r["traffic"]
        if t["k"]:
            print(f"{'':>8} traffic into {t['k']} of them: Flowing after {t['s']:.0f}s, "
                  f"exactly those {t['k']}: {t['exact']} ({t['flowing']} Flowing a resync "
                  f"later), failed pings {t['ping_failures']}, events {t['events']}")  # fmt: skip
        print(f"{'':>8} delete all → objects gone (agent teardown, finalizers): "
              f"{r['deleted_s']:.1f}s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
