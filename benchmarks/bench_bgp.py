"""BIRD's own cost with many BGP sessions: one node BIRD with N eBGP sessions.

    .venv/bin/python benchmarks/bench_bgp.py [--sessions 200] [--routes 0 100] [--bfd]

Two throwaway network namespaces on this host joined by N veth pairs (rv<i>, a /126 each
in 2001:db8:ff00::/40: no IPsec is needed to weigh BIRD itself, and routevpn's BIRD runs
one session per interface). The far namespace runs one BIRD with N sessions, written by
hand, each originating `--routes` IPv6 /64s of its own (session i: under
2001:db8:<1000+i>::/48); the node namespace runs one BIRD with the configuration the
agent renders for N tunnels with one IPv6 session each (`bird_config.render`: per
session a table, an import filter accepting only its `accept` prefix and refusing the
forbidden networks, the next hop forced to the peer, an import limit, a pipe into the
kernel's table; BIRD's kernel protocol installing accepted routes at metric 32).

For each `--routes` value, fresh daemons: seconds from the node BIRD's start until all N
sessions are Established and until every route is in the node's kernel table; then the
node BIRD's RSS (VmRSS, VmHWM) and the total of its `show memory`; and the same for
the far end. Baseline: the same node BIRD with no sessions at all.
Nothing asserts on wall time. Exits non-zero when a session does not come up or a
route does not arrive; removes both namespaces and stops both daemons by PID.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test-support package (tests/ is no package)

from routevpn.api import naming  # noqa: E402
from routevpn.dataplane.bird_config import BirdSettings, render  # noqa: E402
from routevpn.dataplane.plan import BgpPlan  # noqa: E402
from support.bird import Bird  # noqa: E402
from support.netns import Netns, netns, run  # noqa: E402

NODE_ASN, FAR_ASN = 64512, 65001
MAX_PREFIXES = 10000
# what the agent's filter refuses whatever `accept` says: the node's network here
FORBIDDEN6 = (ip_network("2001:db8:a::/64"),)


def link(i: int) -> tuple[str, str]:
    """Session i's node and far addresses (a /126 of its own, on veth rv<i>)."""
    return f"2001:db8:ff{i // 256:02x}:{i % 256:x}::1", f"2001:db8:ff{i // 256:02x}:{i % 256:x}::2"


def behind(i: int) -> str:
    """The /48 session i's far end originates /64s from (and the node accepts)."""
    return f"2001:db8:{0x1000 + i:x}::/48"


def far_config(sessions: int, routes: int, bfd: bool) -> str:
    """The far end, by hand: one session per veth, each exporting its own statics."""
    parts = ["log stderr { warning, error, fatal };", "router id 192.0.2.2;", "protocol device { }"]
    if bfd:
        parts.append('protocol bfd { interface "rv*" { interval 100 ms; multiplier 5; }; }')
    for i in range(sessions):
        node, far = link(i)
        base = behind(i).split("::/")[0]
        statics = "\n".join(f"  route {base}:{j:x}::/64 unreachable;" for j in range(routes))
        parts.append(f"protocol static s{i} {{\n  ipv6;\n{statics}\n}}")
        parts.append(
            f"protocol bgp p{i} {{\n  local {far} as {FAR_ASN};\n  neighbor {node} as {NODE_ASN};\n"
            f'  interface "rv{i}";\n  direct;\n  connect retry time 5;\n'
            f"  bfd {'on' if bfd else 'off'};\n"
            f'  ipv6 {{ import none; export where proto = "s{i}"; }};\n}}'
        )
    return "\n".join(parts) + "\n"


def node_config(sessions: int, bfd: bool) -> str:
    """The node's, as the agent renders it for N tunnels with one IPv6 session each."""
    plans = []
    for i in range(sessions):
        node, far = link(i)
        plans.append(
            BgpPlan(
                ref=f"bench/t{i}",
                protocol=naming.bgp_protocol(f"rv{i}", 6),
                interface=f"rv{i}",
                local_address=ip_address(node),
                peer_address=ip_address(far),
                local_asn=NODE_ASN,
                peer_asn=FAR_ASN,
                accept=(ip_network(behind(i)),),
                forbidden=FORBIDDEN6,
                bfd=bfd,
                max_prefixes=MAX_PREFIXES,
            )
        )
    conf = render(plans, BirdSettings(router_id=ip_address("192.0.2.1")))  # type: ignore[arg-type]
    return "log stderr { warning, error, fatal };\n" + conf


@dataclass
class Figures:
    routes: int
    established_s: float
    routes_s: float
    node_rss_kib: int
    node_hwm_kib: int
    node_bird_mem: str
    far_rss_kib: int
    bfd_up: int


def rss(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM of `pid` in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    kib = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M))
    return int(kib["VmRSS"]), int(kib["VmHWM"])


def bird_total(bird: Bird) -> str:
    """The `Total:` line of `show memory` (effective and overhead)."""
    out = bird.birdc("show memory")
    m = re.search(r"^\s*Total:\s+(.*)$", out, re.M)
    return " ".join(m.group(1).split()) if m else out.strip()


def kernel_routes(ns: Netns) -> int:
    """BIRD's routes in the namespace's main IPv6 table."""
    return len(ns.ip("-6", "route", "show", "proto", "bird").splitlines())


def established(bird: Bird) -> int:
    return bird.birdc("show protocols").count("Established")


@contextmanager
def world(sessions: int) -> Iterator[tuple[Netns, Netns]]:
    """node and far joined by N veth pairs rv<i>, each with its session's /126."""
    with netns("bgpbn") as node, netns("bgpbf") as far:
        batch: dict[str, list[str]] = {node.name: [], far.name: []}
        for i in range(sessions):
            n, f = link(i)
            batch[node.name].append(f"link add rv{i} type veth peer name rv{i} netns {far.name}")
        for i in range(sessions):
            n, f = link(i)
            batch[node.name] += [f"link set rv{i} up", f"addr add {n}/126 dev rv{i} nodad"]
            batch[far.name] += [f"link set rv{i} up", f"addr add {f}/126 dev rv{i} nodad"]
        for ns in (node, far):
            with tempfile.NamedTemporaryFile("w", prefix="bench-bgp-", suffix=".ip") as script:
                script.write("\n".join(batch[ns.name]) + "\n")
                script.flush()
                run(["ip", "-n", ns.name, "-batch", script.name], timeout=300)
        yield node, far


def wait(what: str, check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - start


def measure(sessions: int, routes: int, bfd: bool, tmp: Path) -> Figures:
    conf = node_config(sessions, bfd)
    with world(sessions) as (node_ns, far_ns):
        far = Bird(far_ns, tmp / f"far-{routes}", far_config(sessions, routes, bfd))
        node = Bird(node_ns, tmp / f"node-{routes}", conf)
        far.start(timeout=120)
        try:
            start = time.monotonic()
            node.start(timeout=120)
            try:
                timeout = 60 + sessions
                try:
                    wait("sessions", lambda: established(node) >= sessions, timeout)
                except TimeoutError as e:
                    bfd_up = node.birdc("show bfd sessions").count(" Up ")
                    raise TimeoutError(
                        f"{e}: {established(node)} of {sessions} Established, BFD up {bfd_up}"
                    ) from None
                up = time.monotonic() - start
                want = sessions * routes
                wait("routes", lambda: kernel_routes(node_ns) >= want, timeout + want / 100)
                done = time.monotonic() - start
                time.sleep(2)  # let BIRD settle its pools before reading them
                assert node.proc is not None and far.proc is not None
                n_rss, n_hwm = rss(node.proc.pid)
                bfd_up = node.birdc("show bfd sessions").count(" Up ") if bfd else 0
                far_rss = rss(far.proc.pid)[0]
                return Figures(routes, up, done, n_rss, n_hwm, bird_total(node), far_rss, bfd_up)
            finally:
                node.stop()
        finally:
            far.stop()


def baseline(tmp: Path) -> tuple[int, str]:
    """The node BIRD with no session: RSS and `show memory` total."""
    with netns("bgpb0") as ns:
        bird = Bird(ns, tmp / "empty", node_config(0, False))
        bird.start()
        try:
            time.sleep(1)
            assert bird.proc is not None
            return rss(bird.proc.pid)[0], bird_total(bird)
        finally:
            bird.stop()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--routes", type=int, nargs="+", default=[0, 100])
    ap.add_argument("--bfd", action="store_true", help="BFD on every session (100 ms x 3)")
    args = ap.parse_args()
    print(f"{args.sessions} sessions, BFD {'on' if args.bfd else 'off'}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-bgp-") as d:
        tmp = Path(d)
        b_rss, b_mem = baseline(tmp)
        print(f"baseline, no sessions: node BIRD RSS {b_rss / 1024:.1f} MiB; show memory: {b_mem}")
        print(
            "routes/session  established(s)  all routes in kernel(s)  "
            "node RSS MiB (HWM)  node show memory (effective, overhead)  far RSS MiB  BFD up"
        )
        for routes in args.routes:
            try:
                f = measure(args.sessions, routes, args.bfd, tmp)
            except TimeoutError as e:
                print(f"{routes:>14}  {e}")
                failed = True
                continue
            print(
                f"{f.routes:>14}  {f.established_s:>14.1f}  {f.routes_s:>23.1f}  "
                f"{f.node_rss_kib / 1024:>8.1f} ({f.node_hwm_kib / 1024:.1f})  "
                f"{f.node_bird_mem:>37}  {f.far_rss_kib / 1024:>11.1f}  {f.bfd_up:>6}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
