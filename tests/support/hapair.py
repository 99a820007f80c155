"""An HA pair in the lab: a node with two tunnels to two far-end gateways, and a network
behind both gateways. The far ends are configured by hand (ip, iptables, a charon and a
plain swanctl.conf each); the node's side is left to whoever tests it (the agent, or a
hand-made pair in the benchmark).

    node  lan 198.51.100.1/24, 2001:db8:a::1/64 (the inside source)
      wa 192.0.2.1/30 ── gwa wan 192.0.2.2/30   gwa lan 203.0.113.1/30, 2001:db8:f1::1/64 ─┐
      wb 192.0.2.5/30 ── gwb wan 192.0.2.6/30   gwb lan 203.0.113.5/30, 2001:db8:f2::1/64 ─┤
                                                far (203.0.113.2/.6, 2001:db8:f1::2/f2::2),
                                                srv 203.0.113.129/25, 2001:db8:b::1/64

The node's default route points at gwa's outer address, which forwards: traffic the node
sent in clear would reach the far network (and answer), so a leak can't go unseen.

Replies return through the gateway that carried the request because each gateway
source-NATs inside traffic to its own address on the far link (MASQUERADE), as two
gateways with their own uplinks would: the far network answers the gateway, which
translates back and sends the reply into its own tunnel. The far network needs no route
to the node's inside network at all.
"""

from __future__ import annotations

import itertools
import math
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import swanctl as sw
from .charon import Charon, running
from .netns import Netns, netns, veth

NODE_LAN4, NODE_LAN6 = "198.51.100.1", "2001:db8:a::1"
NODE_NET4, NODE_NET6 = "198.51.100.0/24", "2001:db8:a::/64"
FAR_HOST4, FAR_HOST6 = "203.0.113.129", "2001:db8:b::1"
FAR_NET4, FAR_NET6 = "203.0.113.128/25", "2001:db8:b::/64"
PEER_KEY = 42  # each gateway's own VTI key (its own namespace)
# x25519: an emulated CPU (the lab without KVM) takes seconds over ecp384, longer than the
# HA retransmission settings below wait for an answer
IKE_PROPOSALS = "aes256gcm16-prfsha256-x25519"
ESP_PROPOSALS = "aes256gcm16-x25519"

# The HA settings docs/ha.md recommends, for every charon of the pair: DPD every 2 s,
# retransmissions after 1 s, 1.4 s, 1.96 s (benchmarks/bench_failover.py measures these).
DPD_DELAY_S = 2
RETRANSMIT = {"retransmit_timeout": "1.0", "retransmit_base": "1.4", "retransmit_tries": "2"}
# The lab test's: the first retransmission after 2 s. An emulated CPU under a loaded
# host answered IKE_AUTH after 1 s + 1.4 s + 1.96 s, when the node had given up and the
# far end kept an orphan IKE SA (docs/ha.md, "The far end").
LAB_RETRANSMIT = {**RETRANSMIT, "retransmit_timeout": "2.0"}


def dpd_detection_s(delay: float = DPD_DELAY_S, settings: Mapping[str, str] = RETRANSMIT) -> float:
    """docs/ha.md's detection time: the DPD delay, then the DPD's first send and its
    retransmissions, Σ_{n=0..tries} timeout * base^n (1 + 1.4 + 1.96 = 4.36 s here)."""
    timeout = float(settings["retransmit_timeout"])
    base = float(settings["retransmit_base"])
    tries = int(settings["retransmit_tries"])
    return delay + sum(timeout * base**n for n in range(tries + 1))


@dataclass(frozen=True)
class GwPlan:
    """One far-end gateway: its link to the node, its link to the far network, and the
    tunnel's inside /30 and /127 (node side first)."""

    name: str
    node_dev: str
    node_outer: str
    outer: str
    far_dev: str
    lan4: str
    far4: str
    lan6: str
    far6: str
    inside4: tuple[str, str]
    inside6: tuple[str, str]

    @property
    def node_inside(self) -> list[str]:
        """The node's interface addresses for this tunnel (with prefix lengths)."""
        return [f"{self.inside4[0]}/30", f"{self.inside6[0]}/127"]


GWA = GwPlan(
    "gwa",
    "wa",
    "192.0.2.1",
    "192.0.2.2",
    "fa",
    "203.0.113.1",
    "203.0.113.2",
    "2001:db8:f1::1",
    "2001:db8:f1::2",
    ("169.254.20.1", "169.254.20.2"),
    ("2001:db8:120::", "2001:db8:120::1"),
)
GWB = GwPlan(
    "gwb",
    "wb",
    "192.0.2.5",
    "192.0.2.6",
    "fb",
    "203.0.113.5",
    "203.0.113.6",
    "2001:db8:f2::1",
    "2001:db8:f2::2",
    ("169.254.20.5", "169.254.20.6"),
    ("2001:db8:120::2", "2001:db8:120::3"),
)


@dataclass
class Gateway:
    """A live far-end gateway: namespace, charon, and its hand-written swanctl.conf."""

    plan: GwPlan
    ns: Netns
    charon: Charon
    conf: Path

    def load(
        self,
        psk: str,
        *,
        ike_extra: tuple[tuple[str, str], ...] = (),
        child_extra: tuple[tuple[str, str], ...] = (),
        more: tuple[sw.Conn, ...] = (),
    ) -> None:
        """Write and load the responder's connection (a VTI child bound to PEER_KEY), as
        an HA far end should be: its own DPD (it finds a node that vanished), and
        `unique = replace` (a node that re-initiates replaces its old IKE SA at once: an
        IKE SA the node gave up while this end completed it would otherwise keep its
        CHILD SA bound to the same mark, and replies would go into it). `more`: other
        connections to load beside it (the same file)."""
        p = self.plan
        child = sw.Child(
            "ha", esp_proposals=ESP_PROPOSALS, mark=PEER_KEY, dpd_action="clear", extra=child_extra
        )
        conn = sw.Conn(
            "ha",
            p.outer,
            p.node_outer,
            p.outer,
            p.node_outer,
            psk,
            [child],
            proposals=IKE_PROPOSALS,
            dpd_delay=f"{DPD_DELAY_S}s",
            unique="replace",
            extra=ike_extra,
        )
        sw.write_and_load(self.ns, self.charon.uri, self.conf, [conn, *more])

    def crash(self) -> None:
        """SIGKILL its charon and flush its kernel SAs and policies (else the stale SAs
        would go on carrying traffic without any IKE behind them)."""
        self.charon.kill()
        self.ns.ip("xfrm", "state", "flush")
        self.ns.ip("xfrm", "policy", "flush")

    def restore(self) -> None:
        """Start its charon again with the same configuration."""
        self.charon.start()
        sw.load(self.ns, self.charon.uri, self.conf)

    def esp(self, *, drop: bool) -> None:
        """Drop (or stop dropping) the ESP arriving at this gateway."""
        for tool in ("iptables", "ip6tables"):
            self.ns.run(tool, "-I" if drop else "-D", "INPUT", "-p", "esp", "-j", "DROP")


@dataclass
class World:
    """The node namespace (empty but for its links and inside addresses), both gateways
    and the far network's namespace."""

    node: Netns
    gws: tuple[Gateway, Gateway]
    far: Netns


def _gateway(
    stack: ExitStack, node: Netns, far: Netns, p: GwPlan, workdir: Path, extra: Mapping[str, str]
) -> Gateway:
    ns = stack.enter_context(netns(p.name))
    stack.enter_context(veth(node, p.node_dev, ns, "wan"))
    stack.enter_context(veth(ns, "lan", far, p.far_dev))
    node.add_address(p.node_dev, f"{p.node_outer}/30")
    ns.add_address("wan", f"{p.outer}/30")
    ns.add_address("lan", f"{p.lan4}/30")
    ns.add_address("lan", f"{p.lan6}/64")
    far.add_address(p.far_dev, f"{p.far4}/30")
    far.add_address(p.far_dev, f"{p.far6}/64")
    ns.ip(
        "link",
        "add",
        "vti1",
        "type",
        "vti",
        "local",
        p.outer,
        "remote",
        p.node_outer,
        "key",
        str(PEER_KEY),
    )
    for fam in ("ipv4", "ipv6"):
        ns.sysctl(f"net.{fam}.conf.vti1.disable_policy", "1")
    ns.ip("link", "set", "vti1", "up")
    ns.add_address("vti1", f"{p.inside4[1]}/30")
    ns.add_address("vti1", f"{p.inside6[1]}/127")
    ns.ip("route", "add", NODE_NET4, "via", p.inside4[0], "dev", "vti1")
    ns.ip("-6", "route", "add", NODE_NET6, "via", p.inside6[0], "dev", "vti1")
    ns.ip("route", "add", FAR_NET4, "via", p.far4)
    ns.ip("-6", "route", "add", FAR_NET6, "via", p.far6)
    ns.sysctl("net.ipv4.ip_forward", "1")
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")
    for tool in ("iptables", "ip6tables"):
        ns.run(tool, "-t", "nat", "-A", "POSTROUTING", "-o", "lan", "-j", "MASQUERADE")
    charon = stack.enter_context(running(ns, workdir / p.name, extra=extra))
    return Gateway(p, ns, charon, workdir / p.name / "swanctl.conf")


@contextmanager
def world(workdir: Path, psk: str, *, extra: Mapping[str, str] = RETRANSMIT) -> Iterator[World]:
    """The node, both gateways (charon running, connection loaded) and the far network;
    all torn down on exit."""
    with ExitStack() as stack:
        node = stack.enter_context(netns("node"))
        far = stack.enter_context(netns("far"))
        node.ip("link", "add", "lan", "type", "dummy")
        node.ip("link", "set", "lan", "up")
        node.add_address("lan", f"{NODE_LAN4}/24")
        node.add_address("lan", f"{NODE_LAN6}/64")
        far.ip("link", "add", "srv", "type", "dummy")
        far.ip("link", "set", "srv", "up")
        far.add_address("srv", f"{FAR_HOST4}/25")
        far.add_address("srv", f"{FAR_HOST6}/64")
        gwa = _gateway(stack, node, far, GWA, workdir, extra)
        gwb = _gateway(stack, node, far, GWB, workdir, extra)
        node.ip("route", "add", "default", "via", GWA.outer)  # the leak path, see above
        for gw in (gwa, gwb):
            gw.load(psk)
        yield World(node, (gwa, gwb), far)


def tx_packets(ns: Netns, dev: str) -> int:
    """The packets `dev` has sent (its kernel counter)."""
    return int(ns.run("cat", f"/sys/class/net/{dev}/statistics/tx_packets").strip())


# --- a continuous ping ----------------------------------------------------------------

_REPLY = re.compile(r"^\[(?P<t>\d+\.\d+)\] \d+ bytes from .*icmp_seq=(?P<seq>\d+) ", re.M)


@dataclass(frozen=True)
class Gap:
    """The longest run of lost pings: how many, and the replies either side of it
    (receive time by the guest's clock, and sequence number)."""

    lost: int
    before: tuple[float, int]
    after: tuple[float, int]

    @property
    def seconds(self) -> float:
        """The outage as seen by the pinger: last reply before to first reply after."""
        return self.after[0] - self.before[0]


class Pinger:
    """``ping -D`` at a fixed interval from the node's inside address; replies are read
    back from its output (timestamps, sequence numbers)."""

    def __init__(self, ns: Netns, src: str, dst: str, log: Path, interval: float = 0.01) -> None:
        self.ns, self.src, self.dst, self.log, self.interval = ns, src, dst, log, interval
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            # line-buffered: ping's stdio buffers 4 KiB when writing to a file, and
            # replies stuck in the buffer look exactly like lost pings
            argv = [
                "stdbuf",
                "-oL",
                "ping",
                "-D",
                "-n",
                "-i",
                str(self.interval),
                "-I",
                self.src,
                self.dst,
            ]
            self.proc = subprocess.Popen(self.ns.argv(*argv), stdout=out, stderr=out)

    def stop(self) -> None:
        """SIGINT by PID (ping prints its summary), SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def replies(self) -> list[tuple[float, int]]:
        """(time, seq) of every reply so far, duplicates dropped, in sequence order."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        seen = {int(m["seq"]): float(m["t"]) for m in _REPLY.finditer(text)}
        return sorted(((t, s) for s, t in seen.items()), key=lambda r: r[1])

    def wait(self, count: int, *, since: float = 0.0, timeout: float = 60.0) -> None:
        """Until `count` replies received after `since` (guest clock), or TimeoutError."""
        deadline = time.monotonic() + timeout
        while sum(1 for t, _ in self.replies() if t > since) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ping exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{count} replies from {self.dst} after {since}: not in "
                    f"{timeout}s; {self.log.read_text()[-1000:]}"
                )
            time.sleep(0.1)

    def lost(self) -> int:
        """Pings lost between the first and the last reply (the run's tail, in flight
        when it was stopped, is not counted)."""
        seqs = [s for _, s in self.replies()]
        return (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0

    def gap(self) -> Gap:
        """The longest run of lost pings (lost 0 when none was lost)."""
        r = self.replies()
        if len(r) < 2:
            raise AssertionError(f"too few replies to judge: {r}")
        best = max(itertools.pairwise(r), key=lambda p: p[1][1] - p[0][1])
        return Gap(best[1][1] - best[0][1] - 1, best[0], best[1])


def ping_budget(detection_s: float, interval: float, slack_s: float) -> int:
    """Lost pings allowed: (detection + slack) / interval, rounded up."""
    return math.ceil((detection_s + slack_s) / interval)


_SECRET_LINE = re.compile(r"^\s*(aead|enc|auth|auth-trunc|comp)\s.*$", re.M)


def _no_keys(text: str) -> str:
    """`ip xfrm state` without its key lines (a test log never carries a key either)."""
    return _SECRET_LINE.sub("        <key line dropped>", text)


_IKE_EVENTS = re.compile(
    r"initiating|established|retransmit|giving up|deleting|destroying|INVALID|timed? ?out|"
    r"INITIAL_CONTACT|replac|DPD|dead|closing|received DELETE|failed",
    re.I,
)


def ike_events(charon: Charon, last: int = 60) -> str:
    """The IKE story from a charon's log: initiations, retransmissions, deletions."""
    path = charon.log_file
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join([ln for ln in lines if _IKE_EVENTS.search(ln)][-last:])


def diagnose(world: World, node: Charon | None = None) -> str:
    """The state of every namespace of the pair, for a failure's message: links with
    counters, routes of every table, XFRM states (keys dropped) and policies, SAs."""
    out: list[str] = []

    def section(ns: Netns, title: str, *cmd: str) -> None:
        text = ns.run(*cmd, check=False, timeout=15)
        out.append(f"--- {ns.name} {title}\n{_no_keys(text)}")

    for ns in (world.node, *(gw.ns for gw in world.gws)):
        section(ns, "links", "ip", "-s", "-br", "link")
        section(ns, "routes4", "ip", "route", "show", "table", "all")
        section(ns, "routes6", "ip", "-6", "route", "show", "table", "all")
        section(ns, "xfrm state", "ip", "-s", "xfrm", "state")
        section(ns, "xfrm policy", "ip", "xfrm", "policy")
    for gw in world.gws:
        section(gw.ns, "nat", "iptables", "-t", "nat", "-L", "-v", "-n")
        section(gw.ns, "sas", "swanctl", "--list-sas", "--uri", gw.charon.uri)
    if node is not None:
        section(world.node, "sas", "swanctl", "--list-sas", "--uri", node.uri)
        out.append(f"--- node charon\n{ike_events(node)}")
    out += [f"--- {gw.plan.name} charon\n{ike_events(gw.charon)}" for gw in world.gws]
    section(world.far, "links", "ip", "-s", "-br", "link")
    return "\n".join(out)
