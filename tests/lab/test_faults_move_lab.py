"""A tunnel moved to another node by relabelling (issue 17): the old node is left clean,
the new one brings it up and carries traffic.

Topology: support.hapair's node ("A": its agent and charon, tfl.agent_world) and a
second node namespace ("B": 192.0.2.9/30 on a link to the first far end, its own
inside network 198.51.100.0/24 on a dummy, its own charon and its own `routevpn agent
--node B`), both with the far end gwa (configured by hand: an XFRM interface and a
connection that accepts identity `node.test` from either node's address).

The test plays the operator (controller/decide.py's move): status.node and
status.localAddress name B while the label still names A, so A's agent tears the
tunnel down and removes its finalizer; then the label (and the delivered Secret's)
names B, and B's agent configures it. A 20 ms ping runs from each node's inside
network to the far host: A's until the move, B's after. Asserted: on A no link, route
of routevpn's, XFRM state or policy, or charon connection remains; B's conditions are
True and B's pings come back through the tunnel. Printed: pings lost on A (from the
move on, all by design), the seconds from the relabel to B's first reply, API writes
of both agents. Nothing asserts on wall time.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import test_agent_lab as tal  # type: ignore[import-not-found]  # the agent lab's API helpers (tests/lab is no package)
import test_failover_lab as tfl  # type: ignore[import-not-found]  # the HA pair's setup
import test_faults_lab as tfa  # type: ignore[import-not-found]  # the fault suite's helpers

from routevpn.api import naming
from support import hapair as ha
from support import swanctl as sw
from support.charon import Charon, running
from support.kube import api_client, create_node, wait_until
from support.netns import Netns, netns, veth
from support.nsrelay import forward_into

pytestmark = pytest.mark.timeout(900)

NAME = "mover"
B_OUTER, GW_B_SIDE = "192.0.2.9", "192.0.2.10"
IF_ID = 77  # the far end's XFRM interface for the moving tunnel
IFNAME = "vti4301"
IFACE: dict[str, object] = {"name": IFNAME, "type": "vti", "key": 4301}
INSIDE4 = ("169.254.30.1", "169.254.30.2")


@dataclass
class Two:
    """Node A (the HA world) and node B."""

    a: tfl.Ha
    b_ns: Netns
    b_charon: Charon
    b_agent: Any  # test_agent_lab.Agent
    b_node: str


def _node_b(stack: contextlib.ExitStack, h: tfl.Ha, kc: Path, tmp: Path) -> Two:
    """B's namespace, link to gwa, inside network, charon, Node object and agent."""
    gw = h.world.gws[0]
    b = stack.enter_context(netns("nodeb"))
    stack.enter_context(veth(b, "wc", gw.ns, "wan2"))
    b.add_address("wc", f"{B_OUTER}/30")
    gw.ns.add_address("wan2", f"{GW_B_SIDE}/30")
    b.ip("route", "add", "default", "via", GW_B_SIDE)
    b.ip("link", "add", "lan", "type", "dummy")
    b.ip("link", "set", "lan", "up")
    b.add_address("lan", f"{ha.NODE_LAN4}/24")
    charon = stack.enter_context(running(b, tmp / "b-charon", extra=ha.LAB_RETRANSMIT))
    b_node = f"{h.node}-b"
    api = api_client(kc)
    stack.callback(api.close)
    create_node(api, b_node)
    agent_kc, inner, target = tfl._agent_kubeconfig(kc, tmp)
    stack.enter_context(forward_into(b, inner, target))
    agent = tal.Agent(
        b,
        [sys.executable, "-m", "routevpn", "agent", "--node", b_node, "--namespace", h.agent_ns,
         "--vici-socket", str(charon.vici_socket), "--http-port", "19478",
         "--bind-address", "127.0.0.1", "--kubeconfig", str(agent_kc),
         "--resync-seconds", "3", "--log-level", "DEBUG"],
        tmp / "agent-b.log",
        19478,
    )  # fmt: skip
    agent.start()
    stack.callback(agent.stop)
    return Two(h, b, charon, agent, b_node)


def far_end_by_hand(h: tfl.Ha) -> None:
    """gwa: an XFRM interface for the mover, the node networks routed into it, and a
    connection from `node.test` at either node's address (beside the pair's `ha`)."""
    gw = h.world.gws[0]
    # the pair's VTI (local 192.0.2.2, remote node A) would take node A's ESP for itself
    # and drop it (its key is no SA's mark): it goes, with its routes, in this module
    gw.ns.ip("link", "delete", "vti1")
    gw.ns.ip("link", "add", "mv", "type", "xfrm", "dev", "wan", "if_id", str(IF_ID))
    gw.ns.ip("link", "set", "mv", "up")
    gw.ns.add_address("mv", f"{INSIDE4[1]}/30")
    gw.ns.ip("route", "add", ha.NODE_NET4, "via", INSIDE4[0], "dev", "mv")
    child = sw.Child("mv", esp_proposals=ha.ESP_PROPOSALS, if_id=IF_ID)
    conn = sw.Conn(
        "mv", ha.GWA.outer, f"{ha.GWA.node_outer},{B_OUTER}", ha.GWA.outer, "node.test",
        h.psk, [child], proposals=ha.IKE_PROPOSALS, unique="replace",
    )  # fmt: skip
    gw.load(h.psk, more=(conn,))


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    with (
        tal.guest_control_plane(tmp_path_factory.mktemp("control-plane")) as kc,
        tfl.agent_world(kc, tmp_path_factory.mktemp("move")) as h,
        contextlib.ExitStack() as stack,
    ):
        t = _node_b(stack, h, kc, tmp_path_factory.mktemp("node-b"))
        far_end_by_hand(h)
        for agent in (h.agent, t.b_agent):  # two agents starting at once: generous
            try:
                wait_until(agent.ready, timeout=300, interval=0.5, what="agent ready")
            except TimeoutError as e:
                pytest.fail(f"{e}\n{agent.tail()}", pytrace=False)
        yield t


def body(h: tfl.Ha) -> dict[str, Any]:
    """The mover: no local address in spec (the operator picks the node's), one id."""
    return {
        "apiVersion": f"{tal.GROUP}/{tal.VERSION}",
        "kind": "VpnTunnel",
        "metadata": {"name": NAME, "namespace": h.tunnel_ns},
        "spec": {
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "local": {"id": "node.test"},
            "remote": {"address": ha.GWA.outer, "id": ha.GWA.outer},
            "auth": {"type": "psk", "psk": {"secretRef": {"name": "ha-psk", "key": "psk"}}},
            "ike": {"proposals": [ha.IKE_PROPOSALS]},
            "child": {"proposals": [ha.ESP_PROPOSALS]},
            "interface": {"addresses": [f"{INSIDE4[0]}/30"]},
            "routes": [{"to": ha.FAR_NET4, "via": INSIDE4[1]}],
        },
    }


def place(h: tfl.Ha, node: str, local: str) -> None:
    """The operator's status: node, local address, interface (server-side apply)."""
    status = {"node": node, "localAddress": local, "interface": IFACE}
    doc = {"apiVersion": f"{tal.GROUP}/{tal.VERSION}", "kind": "VpnTunnel",
           "metadata": {"name": NAME, "namespace": h.tunnel_ns}, "status": status}  # fmt: skip
    h.kubectl("apply", "--server-side", "--force-conflicts", "--subresource=status",
              "--field-manager=routevpn-operator", "-f", "-", input=json.dumps(doc))  # fmt: skip


def label(h: tfl.Ha, node: str) -> None:
    """The tunnel's and its delivered Secret's node label (the operator's)."""
    patch = {"metadata": {"labels": {tal.NODE_LABEL: node}}}
    h.custom.patch_namespaced_custom_object(
        tal.GROUP, tal.VERSION, h.tunnel_ns, tal.PLURAL, NAME, patch,
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    h.core.patch_namespaced_secret(naming.secret_name(h.tunnel_ns, NAME), h.agent_ns, patch)


def _tunnel_policies(text: str) -> str:
    """`ip xfrm policy` without charon's per-socket bypass policies (`socket in/out`):
    those are the IKE sockets' own, there while charon runs, whatever tunnels it has."""
    blocks = re.split(r"\n(?=\S)", text.strip())
    return "\n".join(b for b in blocks if b.strip() and "\tsocket " not in b)


def leftovers(ns: Netns, charon: Charon) -> dict[str, str]:
    """What a tunnel leaves on a node if not cleaned: its link, routes, XFRM, conns."""
    out = {
        "link": ns.ip("link", "show", IFNAME, check=False),
        "routes": ns.ip("route", "show", "table", "all", "proto", "157"),
        "xfrm state": ns.ip("xfrm", "state"),
        "xfrm policy": _tunnel_policies(ns.ip("xfrm", "policy")),
        "conns": sw.swanctl(ns, charon.uri, "--list-conns"),
    }
    return {k: v for k, v in out.items() if v.strip()}


def test_tunnel_moved_to_another_node_by_relabelling(two: Two) -> None:
    h = two.a
    h.custom.create_namespaced_custom_object(tal.GROUP, tal.VERSION, h.tunnel_ns, tal.PLURAL,
                                             body(h))  # fmt: skip
    tal.deliver_secret(h, NAME)
    label(h, h.node)
    place(h, h.node, ha.GWA.node_outer)
    tal.wait_true(h, NAME, ("IkeEstablished", "ChildSaInstalled", "RoutesInstalled"))
    ping_a = ha.Pinger(h.world.node, ha.NODE_LAN4, ha.FAR_HOST4, h.tmp / "a.txt", tfa.INTERVAL)
    ping_b = ha.Pinger(two.b_ns, ha.NODE_LAN4, ha.FAR_HOST4, h.tmp / "b.txt", tfa.INTERVAL)
    w0 = tfa.writes(h) + _writes_b(two)
    ping_a.start()
    try:
        with tfl.diagnosed(h):
            ping_a.wait(50)
        # A's pings end at the move: once A's route is gone they would leave in clear
        # (support.hapair's leak path) and their replies go to B's tunnel
        ping_a.stop()
        moved = time.time()
        place(h, two.b_node, B_OUTER)  # A tears down and lets go (its finalizer)
        wait_until(lambda: tal.FINALIZER not in _finalizers(h), timeout=120, interval=0.5,
                   what="node A's agent letting go")  # fmt: skip
        label(h, two.b_node)
        ping_b.start()
        tal.wait_true(h, NAME, ("IkeEstablished", "ChildSaInstalled", "RoutesInstalled"))
        with tfl.diagnosed(h):
            ping_b.wait(50, timeout=180)
    finally:
        ping_a.stop()
        ping_b.stop()
    first_b = ping_b.replies()[0][0] - moved
    spent = tfa.writes(h) + _writes_b(two) - w0
    print(
        f"move: first reply through node B {first_b:.1f}s after the move began, then "
        f"{ping_b.lost()} lost; node A lost {ping_a.lost()} before the move; {spent:.0f} API "
        "writes by both agents"
    )
    assert leftovers(h.world.node, h.charon) == {}, "node A not clean"
    assert IFNAME in two.b_ns.ip("-br", "link"), "no tunnel interface on node B"
    assert ping_b.lost() == 0, ping_b.gap()
    assert spent <= 2 * tfa.WRITE_BUDGET, (spent, h.agent.tail(), two.b_agent.tail())


def _finalizers(h: tfl.Ha) -> list[str]:
    return list(((tal.get(h, NAME) or {}).get("metadata") or {}).get("finalizers") or [])


def _writes_b(two: Two) -> float:
    return float(tfa.agent_writes(two.b_agent))
