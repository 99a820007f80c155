"""The agent killed (SIGKILL) in the middle of a pass that applies N tunnels, then
restarted (issue 17), while the HA pair's primary carries a 20 ms ping and a TCP stream.
A soak: N is the issue's 50 with ROUTEVPN_SOAK_FULL=1, 20 in CI's shortened form.

Topology: tests/lab/test_faults_lab.py's (support.hapair's node and first far end, the
REAL agent and a charon of its own, the primary up). The far end, by hand, holds N more
connections beside the primary's: one identity each (`right-i.test` / `left-i.test`),
one XFRM interface each (if_id `BASE + i`). The agent is stopped while the N tunnels,
their delivered Secrets and the operator's placement are written, so that its first pass
after the start applies all N; it is SIGKILLed once its log shows some, not all, of
their connections loaded (and charon lists some, not all), then started again.

Asserted once everything is up: one IKE SA and one CHILD SA per tunnel in charon and
exactly the desired connections; exactly the desired links, routes and XFRM states; the
SPIs of every SA that was up at the kill unchanged (no re-key); no ping of the primary
lost; nothing foreign touched; API writes within a per-tunnel budget.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_interface, ip_network

import pytest
import test_agent_lab as tal  # type: ignore[import-not-found]  # the agent lab's API helpers (tests/lab is no package)
import test_failover_lab as tfl  # type: ignore[import-not-found]  # the HA pair's setup
import test_faults_lab as tfa  # type: ignore[import-not-found]  # the fault suite's helpers
from kubernetes import client

from routevpn.api import naming
from support import hapair as ha
from support import swanctl as sw
from support.kube import wait_until
from support.observe import xfrm_states

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1500)]

FULL = os.environ.get("ROUTEVPN_SOAK_FULL") == "1"
N = 50 if FULL else 20
BASE = 4200  # if_ids of the N (the primary's VTI key is 4101)
KILL_AT = 10 if FULL else 6  # connections loaded when the agent is killed (some, not all)


def names() -> list[str]:
    return [f"t{i}" for i in range(N)]


def inside(i: int) -> tuple[str, str, str]:
    """(node inside /127, far end's inside address, the far prefix routed into tunnel i),
    written as the kernel prints them (2001:db8:e0::/64 for tunnel 0)."""
    mine, far, prefix = (f"2001:db8:f0:{i:x}::/127", f"2001:db8:f0:{i:x}::1",
                         f"2001:db8:e0:{i:x}::/64")  # fmt: skip
    return str(ip_interface(mine)), far, str(ip_network(prefix))


def far_end_by_hand(h: tfl.Ha) -> None:
    """gwa: N XFRM interfaces with their inside address, N connections beside `ha`."""
    gw = h.world.gws[0]
    conns = []
    for i in range(N):
        _, far, _ = inside(i)
        gw.ns.ip("link", "add", f"bx{i}", "type", "xfrm", "dev", "wan", "if_id", str(BASE + i))
        gw.ns.ip("link", "set", f"bx{i}", "up")
        gw.ns.ip("-6", "addr", "add", f"{far}/127", "dev", f"bx{i}", "nodad")
        child = sw.Child(f"t{i}", esp_proposals=ha.ESP_PROPOSALS, if_id=BASE + i)
        conns.append(sw.Conn(
            f"t{i}", ha.GWA.outer, ha.GWA.node_outer, f"right-{i}.test", f"left-{i}.test",
            h.psk, [child], proposals=ha.IKE_PROPOSALS,
        ))  # fmt: skip
    gw.load(h.psk, more=tuple(conns))


def place(h: tfl.Ha, i: int) -> None:
    """Tunnel i as the user and the operator write it: object, Secret, status."""
    name = names()[i]
    mine, far, prefix = inside(i)
    h.core.create_namespaced_secret(h.agent_ns, client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=naming.secret_name(h.tunnel_ns, name), labels={tal.NODE_LABEL: h.node},
            annotations=naming.delivered_annotations(h.tunnel_ns, name)),
        data={"psk": base64.b64encode(h.psk.encode()).decode()},
    ))  # fmt: skip
    body = {
        "apiVersion": f"{tal.GROUP}/{tal.VERSION}", "kind": "VpnTunnel",
        "metadata": {"name": name, "namespace": h.tunnel_ns,
                     "labels": {tal.NODE_LABEL: h.node}},
        "spec": {
            "nodeName": h.node,
            "local": {"address": ha.GWA.node_outer, "id": f"left-{i}.test"},
            "remote": {"address": ha.GWA.outer, "id": f"right-{i}.test"},
            "auth": {"type": "psk", "psk": {"secretRef": {"name": "psk"}}},
            "ike": {"proposals": [ha.IKE_PROPOSALS]},
            "child": {"proposals": [ha.ESP_PROPOSALS]},
            "interface": {"type": "xfrm", "addresses": [mine]},
            "routes": [{"to": prefix, "via": far}],
        },
    }  # fmt: skip
    h.custom.create_namespaced_custom_object(tal.GROUP, tal.VERSION, h.tunnel_ns, tal.PLURAL, body)
    status = {
        "apiVersion": f"{tal.GROUP}/{tal.VERSION}", "kind": "VpnTunnel",
        "metadata": {"name": name, "namespace": h.tunnel_ns},
        "status": {"node": h.node,
                   "interface": {"name": f"xfrm{BASE + i}", "type": "xfrm", "ifId": BASE + i}},
    }  # fmt: skip
    h.custom.patch_namespaced_custom_object_status(
        tal.GROUP, tal.VERSION, h.tunnel_ns, tal.PLURAL, name, status,
        field_manager="routevpn-operator", force=True,
        _content_type="application/apply-patch+yaml",
    )  # fmt: skip


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tfl.Ha]:
    """The primary up under the agent, the far end ready for N more."""
    with (
        tal.guest_control_plane(tmp_path_factory.mktemp("control-plane")) as kc,
        tfl.agent_world(kc, tmp_path_factory.mktemp("agent-kill")) as h,
    ):
        h.world.node.ip("route", "add", tfa.FOREIGN_ROUTE[0], "dev", tfa.FOREIGN_ROUTE[1])
        wait_until(h.agent.ready, timeout=120, interval=0.5, what="agent ready")
        tfl.add_tunnel(h, tfl.PRIMARY)
        tfl.wait_up(h, tfl.PRIMARY)
        far_end_by_hand(h)
        yield h


_IKE = re.compile(r"^(?P<conn>\S+): #\d+, (?P<state>[A-Z_]+), IKEv2", re.M)
_CHILD = re.compile(r"^\s+(?P<name>\S+): #\d+, reqid \d+, (?P<state>[A-Z_]+)", re.M)
_CHILD_SPI = re.compile(
    r"^\s+(?P<name>\S+): #\d+, reqid \d+, INSTALLED(?:.*\n)*?\s+in\s+(?P<spi>[0-9a-f]{8})", re.M
)
_CONN = re.compile(r"^([^\s:]+): ", re.M)  # a conn's first line (its version may be empty)


def desired_conns(h: tfl.Ha) -> set[str]:
    return {naming.conn_name(h.tunnel_ns, n) for n in (tfl.PRIMARY, *names())}


def sas(h: tfl.Ha) -> str:
    return sw.swanctl(h.world.node, h.charon.uri, "--list-sas", timeout=120)


def conns(h: tfl.Ha) -> set[str]:
    return set(_CONN.findall(sw.swanctl(h.world.node, h.charon.uri, "--list-conns", timeout=120)))


def installed_spis(text: str) -> dict[str, str]:
    """CHILD SA name → inbound SPI of the INSTALLED ones."""
    return {m["name"]: m["spi"] for m in _CHILD_SPI.finditer(text)}


def loaded_in_log(h: tfl.Ha, mark: int) -> int:
    """How many of the N tunnels' connections the agent's log says it loaded since `mark`."""
    with h.agent.log.open("rb") as f:
        f.seek(mark)
        text = f.read().decode(errors="replace")
    prefix = naming.conn_name(h.tunnel_ns, "t")
    return len(set(re.findall(rf"conn loaded ({re.escape(prefix)}\d+)", text)))


def all_up(h: tfl.Ha) -> bool:
    items = h.custom.list_namespaced_custom_object(tal.GROUP, tal.VERSION, h.tunnel_ns, tal.PLURAL)[
        "items"
    ]
    want = ("IkeEstablished", "ChildSaInstalled", "RoutesInstalled")
    up = [i for i in items if all(tal.conditions(i).get(t, ("",))[0] == "True" for t in want)]
    return len(up) == N + 1


def kill_mid_pass(h: tfl.Ha) -> tuple[int, dict[str, str]]:
    """Stop the agent, write the N, start it, SIGKILL it mid-pass; (loaded, SPIs up)."""
    h.agent.stop()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: place(h, i), range(N)))
    mark = h.agent.log.stat().st_size
    h.agent.start()
    wait_until(lambda: loaded_in_log(h, mark) >= KILL_AT, timeout=600, interval=0.05,
               what=f"{KILL_AT} connections loaded by the agent")  # fmt: skip
    h.agent.stop(signal.SIGKILL)
    return len(conns(h) & desired_conns(h)) - 1, installed_spis(sas(h))


def check_no_duplicates_or_leftovers(h: tfl.Ha) -> None:
    """One IKE and one CHILD SA per tunnel; exactly the desired conns, links, routes, SAs."""
    text, want = sas(h), desired_conns(h)
    ike = Counter(m["conn"] for m in _IKE.finditer(text))
    child = Counter(m["name"] for m in _CHILD.finditer(text))
    assert ike == dict.fromkeys(want, 1), ike
    assert child == dict.fromkeys(want, 1), child
    assert conns(h) == want
    links = set(re.findall(r"^(\S+?)(?:@\S+)?\s", h.world.node.ip("-br", "link"), re.M))
    ours = {ln for ln in links if ln.startswith(("xfrm", "vti4"))}
    assert ours == {f"xfrm{BASE + i}" for i in range(N)} | {"vti4101"}, ours
    routes = h.world.node.ip("-6", "route", "show", "proto", "157")
    prefixes = {ln.split()[0] for ln in routes.splitlines() if ln.strip()}
    assert prefixes == {inside(i)[2] for i in range(N)} | {ha.FAR_NET6}, prefixes
    esp = [s for s in xfrm_states(h.world.node) if s.proto == "esp"]
    # two SAs (in and out) per tunnel: each XFRM tunnel's by its if_id; the VTI tunnel's
    # outbound SA carries its mark and charon leaves its inbound one unmarked
    by_if_id = Counter(s.if_id for s in esp if s.if_id)
    assert len(by_if_id) == N and set(by_if_id.values()) == {2}, by_if_id
    assert len(esp) == 2 * (N + 1), [(s.if_id, s.mark) for s in esp]


def test_agent_killed_mid_pass_then_restarted(many: tfl.Ha) -> None:
    h = many
    before = tfa.foreign(h)
    primary = installed_spis(sas(h))
    ping = ha.Pinger(h.world.node, ha.NODE_LAN4, ha.FAR_HOST4, h.tmp / "kill.txt", tfa.INTERVAL)
    with tfa.tcp_stream(h, h.tmp) as stream:
        ping.start()
        try:
            ping.wait(50)
            loaded, up_at_kill = kill_mid_pass(h)
            listed = sw.swanctl(h.world.node, h.charon.uri, "--list-conns", timeout=120)
            assert 0 < loaded < N, f"not mid-pass: {loaded} of {N} in charon:\n{listed[:3000]}"
            restarted = time.time()
            h.agent.start()  # ready only after its first pass (over all 51): not waited for
            try:
                wait_until(lambda: all_up(h), timeout=1200, interval=2, what=f"{N + 1} up")
            except TimeoutError as e:
                pytest.fail(f"{e}\n{h.agent.tail()}", pytrace=False)
            converged = time.time() - restarted
            spent = tfa.writes(h)  # the restarted agent's counter: from its start
            with tfl.diagnosed(h):
                ping.wait(50, since=time.time())
        finally:
            ping.stop()
        tcp = stream()
    print(
        f"agent-kill: killed with {loaded} of {N} connections loaded and {len(up_at_kill)} "
        f"CHILD SAs up; lost {ping.lost()} pings; all {N + 1} up {converged:.1f}s after the "
        f"restart; {spent:.0f} API writes by the restarted agent"
    )
    assert tcp == "alive", tcp
    assert ping.lost() == 0, ping.gap()
    check_no_duplicates_or_leftovers(h)
    now = installed_spis(sas(h))
    rekeyed = {k: (v, now.get(k)) for k, v in {**primary, **up_at_kill}.items() if now.get(k) != v}
    assert rekeyed == {}, f"re-keyed since the kill: {rekeyed}"
    assert tfa.foreign(h) == before
    assert spent <= tfa.WRITE_BUDGET * (N + 1), (spent, h.agent.tail())
