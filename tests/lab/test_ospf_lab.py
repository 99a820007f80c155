"""OSPF with the user's own daemon over a routevpn tunnel, on a real IPsec kernel (issue 16).

Topology (support.hapair, as test_failover_lab.py uses it): the node namespace runs the
REAL `routevpn agent` and its charon, and one VpnTunnel (no bgp, no routes) to gateway
gwa, configured by hand. The node also runs its own BIRD, configured by hand as
docs/ospf.md tells a user to (OSPFv2, routevpn's VTI as point-to-point, the kernel at
a metric of its own); gwa runs BIRD with OSPF over its VTI and originates the far
network (support.birdconf). The cases, in order on one topology:

(a) the adjacency forms over the tunnel, the node learns the far network (a kernel
    route `proto bird` via the routevpn interface), and pings go through the tunnel;
(b) the agent's passes leave that route alone: several resyncs, a spec change (a static
    route of routevpn's beside the OSPF route, same prefix, another metric, then gone
    again) and an agent restart (a whole first pass) neither delete nor replace it:
    `ip monitor route` sees routevpn's own route come and go and not a single change of
    BIRD's, and the adjacency is still Full.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import test_agent_lab as tal  # type: ignore[import-not-found]  # tests/lab is no package
import test_failover_lab as tfl  # type: ignore[import-not-found]

from support import birdconf
from support import hapair as ha
from support.bird import Bird, running
from support.kube import wait_until
from support.netns import Netns

pytestmark = pytest.mark.timeout(600)

NAME = "ospf"
VTI = "vti4101"
IFACE = {"name": VTI, "type": "vti", "key": 4101}
GW = ha.GWA
INSIDE4 = "169.254.20.0/30"
STATIC_METRIC = 300  # routevpn's own route to the same prefix, under OSPF's


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with tal.guest_control_plane(tmp_path_factory.mktemp("control-plane")) as kc:
        yield kc


@pytest.fixture(scope="module")
def ospf(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The HA topology with the agent (only gwa is used), nothing of OSPF yet."""
    with tfl.agent_world(kubeconfig, tmp_path_factory.mktemp("ospf")) as h:
        yield h


def tunnel(h: Any) -> dict[str, Any]:
    """The tunnel to gwa: its inside addresses, no routes, no health check."""
    obj = tfl.tunnel(h, NAME, GW, 100)
    del obj["spec"]["healthCheck"]
    del obj["spec"]["routes"]
    return cast(dict[str, Any], obj)


def learned(node: Netns) -> str:
    """The node's kernel route to the far network that its own BIRD installed."""
    return node.ip("route", "show", ha.FAR_NET4, "proto", "bird").strip()


def successful_passes(h: Any) -> float:
    """The agent's successful reconcile passes so far (its metric)."""
    pattern = r'^routevpn_agent_reconcile_total\{result="success"\} (\S+)$'
    m = re.search(pattern, h.agent.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


@contextlib.contextmanager
def route_monitor(node: Netns, log: Path) -> Iterator[Path]:
    """`ip -o monitor route` in the node namespace for the block, into `log`."""
    with log.open("wb") as out:
        proc = subprocess.Popen(node.argv("ip", "-o", "monitor", "route"), stdout=out, stderr=out)
    try:
        time.sleep(0.5)  # subscribed before anything happens
        yield log
    finally:
        proc.terminate()
        proc.wait(10)


def _diagnosed(h: Any, user: Bird | None = None) -> str:
    bird = "" if user is None else user.birdc("show ospf neighbors") + user.log_tail()
    return f"{ha.diagnose(h.world, h.charon)}\n--- node bird\n{bird}\n{h.agent.tail()}"


@pytest.fixture(scope="module")
def user_bird(ospf: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bird]:
    """The tunnel up, both BIRDs running; yields the node's (the user's) BIRD."""
    h = ospf
    tmp = tmp_path_factory.mktemp("ospf-birds")
    wait_until(h.agent.ready, timeout=120, interval=0.5, what="agent ready")
    h.custom.create_namespaced_custom_object(tal.GROUP, tal.VERSION, h.tunnel_ns, tal.PLURAL,
                                             tunnel(h))  # fmt: skip
    tal.deliver_secret(h, NAME)
    tal.operator_places(h, NAME, IFACE)
    tal.wait_true(h, NAME, ("Configured", "IkeEstablished", "ChildSaInstalled"))
    node, gw = h.world.node, h.world.gws[0]
    # OSPF refuses a neighbour whose MTU differs (its DBD packets): the far end's tunnel
    # MTU set to the node's, which the agent keeps at the inner MTU (status.child.innerMtu)
    mtu = _inner_mtu(h)
    wait_until(lambda: f" mtu {mtu} " in node.ip("link", "show", VTI), timeout=60,
               interval=0.5, what=f"{VTI} mtu {mtu}")  # fmt: skip
    gw.ns.ip("link", "set", "vti1", "mtu", str(mtu))
    far_conf = birdconf.ospf_far_end(GW.inside4[1], "vti1", [(ha.FAR_NET4, GW.far4)])
    user_conf = birdconf.ospf_user_node(GW.inside4[0], VTI, INSIDE4)
    with running(gw.ns, tmp / "gwa", far_conf), running(node, tmp / "node", user_conf) as user:
        yield user


def _inner_mtu(h: Any) -> int:
    def mtu() -> int:
        obj = tal.get(h, NAME) or {}
        return int(((obj.get("status") or {}).get("child") or {}).get("innerMtu") or 0)

    return wait_until(mtu, timeout=60, interval=0.5, what="status.child.innerMtu")


def test_a_adjacency_forms_and_the_node_learns_the_far_network(ospf: Any, user_bird: Bird) -> None:
    h, node = ospf, ospf.world.node
    try:
        wait_until(
            lambda: birdconf.ospf_full(user_bird), timeout=120, interval=0.5, what="OSPF Full"
        )
        wait_until(
            lambda: learned(node), timeout=60, interval=0.5, what=f"{ha.FAR_NET4} proto bird"
        )
    except TimeoutError as e:
        pytest.fail(f"{e}\n{_diagnosed(h, user_bird)}")
    route = learned(node)
    print(f"learned: {route}")
    assert f"via {GW.inside4[1]} dev {VTI}" in route, route
    assert f"metric {birdconf.USER_KERNEL_METRIC}" in route, route
    before = ha.tx_packets(node, VTI)
    ping = ("ping", "-n", "-c", "5", "-i", "0.2", "-W", "3", "-I", ha.NODE_LAN4, ha.FAR_HOST4)
    out = node.run(*ping, check=False)
    assert " 0% packet loss" in out, f"{out}\n{_diagnosed(h, user_bird)}"
    # through the tunnel, not the node's default route to gwa's outer address
    assert ha.tx_packets(node, VTI) - before >= 5


def test_b_agent_passes_leave_the_ospf_route_alone(
    ospf: Any, user_bird: Bird, tmp_path: Path
) -> None:
    h, node = ospf, ospf.world.node
    route = learned(node)
    assert route, "no OSPF route to begin with"
    static = {"to": ha.FAR_NET4, "via": GW.inside4[1], "metric": STATIC_METRIC}
    with route_monitor(node, tmp_path / "monitor.txt") as log:
        passes = successful_passes(h)
        _patch_routes(h, [static])
        wait_until(lambda: _ours(node), timeout=60, interval=0.5, what="routevpn's static route")
        _wait_passes(h, passes + 3)
        h.agent.stop()  # a restart: the next first pass reads the node from scratch
        h.agent.start()
        wait_until(h.agent.ready, timeout=120, interval=0.5, what="agent ready again")
        _wait_passes(h, 3)
        _patch_routes(h, None)
        wait_until(lambda: not _ours(node), timeout=60, interval=0.5, what="static route gone")
        _wait_passes(h, successful_passes(h) + 3)
    events = [ln for ln in log.read_text().splitlines() if ha.FAR_NET4 in ln]
    print("route events of the far network:\n" + "\n".join(events))
    # routevpn's own route came and went; BIRD's was never touched
    assert any("proto 157" in ln for ln in events), events
    assert [ln for ln in events if "proto bird" in ln] == [], events
    assert learned(node) == route
    assert birdconf.ospf_full(user_bird)


def _ours(node: Netns) -> str:
    return node.ip("route", "show", ha.FAR_NET4, "proto", "157").strip()


def _patch_routes(h: Any, routes: list[dict[str, Any]] | None) -> None:
    """Set (or with None remove) spec.routes, as the user would."""
    h.custom.patch_namespaced_custom_object(
        tal.GROUP, tal.VERSION, h.tunnel_ns, tal.PLURAL, NAME, {"spec": {"routes": routes}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip


def _wait_passes(h: Any, count: float) -> None:
    wait_until(lambda: successful_passes(h) >= count, timeout=120, interval=0.5,
               what=f"{count} successful passes")  # fmt: skip
