"""The TCP MSS clamp through a PMTUD black hole, on a real IPsec kernel (issue 17).

Topology: support.hapair's node and its first far-end gateway (configured by hand), the
REAL agent and its charon in the node namespace, one VpnTunnel (the HA pair's primary,
the test playing the operator), and a client namespace behind the node (the node
forwards for it, as a VPN gateway does):

    client 198.51.100.130/25 ── node (vti4101) ══ ESP over wa/wan, MTU 1400 ══ gwa ── far

The node's outer link to gwa has MTU 1400, so the tunnel's inner MTU (and the
interface's, which follows it) is below the 1500 of the client's and far host's links.
ICMP "fragmentation needed" is dropped at the client and at the far host, so path MTU
discovery can't tell either of them: a PMTUD black hole, the case MSS clamping is for.
A 1 MiB TCP transfer each way, DF set, from the client to the far host:

- with the agent's clamp off (`--no-mss-clamp`) it stalls: full-size segments are
  dropped at the tunnel, forever (fewer than 1 MiB arrive within STALL_S);
- with it on (the default) it completes, the SYNs' MSS lowered both ways in routevpn's
  own table; a foreign nftables table of the node is left exactly as it was, and
  deleting the tunnel removes routevpn's table.

Nothing asserts on wall time; the transfer times are printed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
import test_agent_lab as tal  # type: ignore[import-not-found]  # tests/lab is no package
import test_failover_lab as tfl  # type: ignore[import-not-found]  # the HA pair's setup

from routevpn.dataplane import mss
from support import hapair as ha
from support.kube import wait_until
from support.netns import Netns, netns, veth

pytestmark = pytest.mark.timeout(900)

OUTER_MTU = 1400
SIZE = 1 << 20
PORT = 5002
CLIENT, CLIENT_GW = "198.51.100.130", "198.51.100.129"
# How long a transfer without the clamp is given before it counts as stalled: with the
# clamp the same transfer takes about 3 s on the emulated CPU; without it no full-size
# segment ever passes (Linux's tcp_mtu_probing is off by default), so a longer wait
# would only prove the same 0 bytes for longer.
STALL_S = 20.0
IFACE = tfl.IFACES[tfl.PRIMARY]["name"]
# Someone else's firewall on the node: routevpn must never touch it.
FOREIGN = """table inet fw {
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname "wb" tcp dport 22 counter drop
	}
}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[tfl.Ha, Netns]]:
    """The agent and its tunnel over a 1400-byte outer link, a client behind the node."""
    tmp = tmp_path_factory.mktemp("mss")
    with (
        tal.guest_control_plane(tmp_path_factory.mktemp("control-plane")) as kc,
        tfl.agent_world(kc, tmp) as h,
        netns("client") as client,
        veth(h.world.node, "cl", client, "eth0"),
    ):
        node, gwa = h.world.node, h.world.gws[0]
        node.ip("link", "set", ha.GWA.node_dev, "mtu", str(OUTER_MTU))
        gwa.ns.ip("link", "set", "wan", "mtu", str(OUTER_MTU))
        node.add_address("cl", f"{CLIENT_GW}/25")
        node.sysctl("net.ipv4.ip_forward", "1")
        client.add_address("eth0", f"{CLIENT}/25")
        client.ip("route", "add", "default", "via", CLIENT_GW)
        (tmp / "foreign.nft").write_text(FOREIGN)
        node.run("nft", "-f", str(tmp / "foreign.nft"))
        for ns in (client, h.world.far):  # the black hole: PMTUD can't rescue anyone
            ns.run("iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type",
                   "fragmentation-needed", "-j", "DROP")  # fmt: skip
        wait_until(h.agent.ready, timeout=120, interval=0.5, what="agent ready")
        tfl.add_tunnel(h, tfl.PRIMARY)
        tfl.wait_up(h, tfl.PRIMARY)
        yield h, client


def restart_agent(h: tfl.Ha, *flags: str) -> None:
    """The agent again, with `flags` instead of the clamp flags it had (tunnels stay up)."""
    h.agent.stop()
    h.agent.argv = [a for a in h.agent.argv if a not in ("--mss-clamp", "--no-mss-clamp")]
    h.agent.argv += list(flags)
    h.agent.start()
    with tfl.diagnosed(h):
        wait_until(h.agent.ready, timeout=120, interval=0.5, what="agent ready again")


def ours(node: Netns) -> frozenset[mss.ClampRule] | None:
    out = node.run("nft", "-j", "list", "table", mss.FAMILY, mss.TABLE, check=False)
    return mss.parse(json.loads(out)) if out.strip().startswith("{") else None


def foreign(node: Netns) -> str:
    return node.run("nft", "-a", "list", "table", "inet", "fw")


def link_mtu(node: Netns, dev: str) -> int:
    return int(node.run("cat", f"/sys/class/net/{dev}/mtu").strip())


def transfer(h: tfl.Ha, client: Netns, label: str) -> tuple[int, int, float]:
    """1 MiB from the client to the far host and 1 MiB back, DF set; (bytes the far
    host received, bytes the client received, seconds), after at most STALL_S."""
    got = h.tmp / f"{label}-server.txt"
    server = subprocess.Popen(
        h.world.far.argv("python3", "-c", _SERVER, ha.FAR_HOST4, str(PORT), str(SIZE), str(got)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: got.exists(), timeout=60, interval=0.2, what="server listening")
        argv = ("python3", "-c", _CLIENT, ha.FAR_HOST4, str(PORT), str(SIZE), str(STALL_S))
        done = subprocess.run(
            client.argv(*argv), capture_output=True, text=True, timeout=STALL_S * 3
        )
        print(f"{label}: client {done.stdout.strip()} {done.stderr.strip()[-300:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return int(got.read_text() or 0), int(result["received"]), float(result["seconds"])
    finally:
        server.kill()
        server.wait(10)


# The transfer's two ends, run as `python3 -c` inside the namespaces. The server writes
# how much it has received so far (the file's existence says it listens).
_SERVER = """
import pathlib, socket, sys
size, out = int(sys.argv[3]), pathlib.Path(sys.argv[4])
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
out.write_text("0")
c, _ = s.accept()
n = 0
while n < size:
    b = c.recv(65536)
    if not b:
        break
    n += len(b)
    out.write_text(str(n))
c.sendall(b"y" * size)
c.close()
"""
_CLIENT = """
import json, socket, sys, time
host, port, size, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF
s.settimeout(limit)
start = time.monotonic()
received = mss = 0
try:
    s.connect((host, port))
    mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    s.settimeout(max(0.1, limit - (time.monotonic() - start)))
    s.sendall(b"x" * size)
    while received < size:
        b = s.recv(65536)
        if not b:
            break
        received += len(b)
except OSError as e:
    print("stopped:", type(e).__name__, file=sys.stderr)
print(json.dumps({"received": received, "seconds": time.monotonic() - start, "mss": mss}))
"""


def test_a_pmtud_black_hole_stalls_without_the_clamp_and_not_with_it(
    world: tuple[tfl.Ha, Netns],
) -> None:
    h, client = world
    node = h.world.node
    before = foreign(node)

    def inner_mtu() -> int | None:
        child = ((tal.get(h, tfl.PRIMARY) or {}).get("status") or {}).get("child") or {}
        return child.get("innerMtu")

    wait_until(lambda: inner_mtu() is not None and link_mtu(node, IFACE) == inner_mtu(),
               timeout=120, interval=0.5, what="the interface MTU following innerMtu")  # fmt: skip
    mtu = link_mtu(node, IFACE)
    print(f"outer MTU {OUTER_MTU}: innerMtu {inner_mtu()}, {IFACE} MTU {mtu}")
    assert mtu < OUTER_MTU

    restart_agent(h, "--no-mss-clamp")
    wait_until(lambda: ours(node) is None, timeout=60, interval=0.5, what="no routevpn table")
    far_got, back, secs = transfer(h, client, "unclamped")
    print(f"clamp off: far host received {far_got} of {SIZE}, client {back}, {secs:.1f}s")
    assert far_got < SIZE or back < SIZE, "the transfer passed the black hole without a clamp"

    restart_agent(h, "--mss-clamp")
    want = mss.rules_for({IFACE: mtu})
    wait_until(lambda: ours(node) == want, timeout=60, interval=0.5, what="routevpn's table")
    print(node.run("nft", "list", "table", mss.FAMILY, mss.TABLE))
    far_got, back, secs = transfer(h, client, "clamped")
    print(f"clamp on: far host received {far_got} of {SIZE}, client {back}, {secs:.1f}s")
    assert (far_got, back) == (SIZE, SIZE)
    assert foreign(node) == before

    tfl.delete_tunnel(h, tfl.PRIMARY)
    wait_until(lambda: ours(node) is None, timeout=60, interval=0.5, what="table removed")
    assert foreign(node) == before
