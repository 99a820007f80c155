"""The agent as a real process with a real BIRD, against the real API server: spec.bgp.

Topology (throwaway namespaces only):

    netns "node"  203.0.113.1 (vnode) ── veth ── netns "far"
      charon, BIRD (the node's), the agent          vti7 ── veth ── far0: BIRD, AS 65001

This host's kernel has no VTI, so the tunnel interface is a veth named like the one the
operator allocated (vti7) carrying the inside /30: the agent can't make the tunnel's link
(it is not routevpn's: Configured=False, InterfaceNameTaken), but the BGP session runs over
it, so everything BGP is real: the agent renders and loads BIRD's configuration through
the control socket, reads the session back into status, metrics and the kernel table.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_agent_node as an  # type: ignore[import-not-found]  # tests/cluster is no package
import yaml
from kubernetes import client

from support import bird_configs as cfg
from support.bird import BIRD, Bird
from support.charon import CHARON, Charon
from support.cluster import ClusterAccess, free_port
from support.kube import create_namespace, create_node, delete_namespace, delete_node, wait_until
from support.netns import have_root, netns, veth
from support.nsrelay import forward_into
from support.operator import release_tunnels
from support.tiers import missing

pytestmark = [pytest.mark.netns, pytest.mark.timeout(420)]

NAME = "bgp-site"
BGP = {
    "peerASN": 65001,
    "peerAddresses": ["169.254.10.2"],
    "accept": ["198.51.100.0/24"],
    "holdTime": 9,
}


def _agent_argv(
    node: str, agent_ns: str, charon: Charon, bird: Bird, kubeconfig: Path
) -> list[str]:
    return [
        sys.executable, "-m", "routevpn", "agent", "--node", node, "--namespace", agent_ns,
        "--vici-socket", str(charon.vici_socket), "--http-port", "19479",
        "--bind-address", "127.0.0.1", "--kubeconfig", str(kubeconfig),
        "--resync-seconds", "3", "--log-level", "DEBUG",
        "--bird-socket", str(bird.socket), "--bird-config-dir", str(bird.workdir),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def world(
    cluster: ClusterAccess,
    crd: list[str],
    kube: client.ApiClient,
    kubeconfig_for: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[an.World, Bird]]:
    if not have_root():
        missing("root (network namespaces)")
    if not CHARON.exists() or not BIRD.exists():
        missing(f"charon ({CHARON}) and bird ({BIRD})")
    tmp = tmp_path_factory.mktemp("agent-bgp")
    node = f"agent-bgp-{secrets.token_hex(3)}"
    agent_ns = create_namespace(kube, "routevpn-system")
    tunnel_ns = create_namespace(kube, "tenant")
    create_node(kube, node)
    api = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    api_host, api_port = api.removeprefix("https://").rsplit(":", 1)
    inner_port = free_port()
    kubeconfig = kubeconfig_for(f"https://127.0.0.1:{inner_port}")
    try:
        with (
            netns("bgnode") as node_net,
            netns("bgfar") as far_net,
            netns("bgpeer") as peer_net,
            veth(node_net, "vnode", peer_net, "vpeer"),
            veth(node_net, "vti7", far_net, "far0"),
        ):
            node_net.add_address("vnode", f"{an.NODE_ADDR}/24")
            peer_net.add_address("vpeer", f"{an.PEER_ADDR}/24")
            node_net.add_address("vti7", "169.254.10.1/30")
            far_net.add_address("far0", "169.254.10.2/30")
            (tmp / "bird").mkdir(parents=True)
            far = Bird(far_net, tmp / "far", cfg.far_end(
                router_id="169.254.10.2", asn=65001,
                peers=[("far0", "169.254.10.2", "169.254.10.1", 64512)],
                routes4=("198.51.100.0/24", "0.0.0.0/0", "203.0.113.0/24"),
            ))  # fmt: skip
            # bird.conf is the file the agent writes (as in the chart's container)
            bird = Bird(node_net, tmp / "bird", "protocol device {\n}\n")
            charon = Charon(node_net, tmp / "charon")
            for daemon in (far, bird, charon):
                daemon.start()
            agent = an.AgentProc(
                node_net, _agent_argv(node, agent_ns, charon, bird, kubeconfig),
                tmp / "agent.log", 19479,
            )  # fmt: skip
            try:
                with forward_into(node_net, inner_port, (api_host, int(api_port))):
                    agent.start()
                    yield an.World(
                        node=node, agent_ns=agent_ns, tunnel_ns=tunnel_ns, node_net=node_net,
                        peer_net=far_net, charon=charon, peer=charon, agent=agent,
                        custom=client.CustomObjectsApi(kube), core=client.CoreV1Api(kube),
                        kubectl=cluster.kubectl, psk=secrets.token_hex(24),
                        peer_conf=tmp / "unused",
                    ), bird  # fmt: skip
            finally:
                agent.stop()
                for daemon in (charon, bird, far):
                    daemon.stop()
    finally:
        delete_namespace(kube, tunnel_ns)  # kept for the secret scan first, then
        # released: the agent is gone, and its finalizers would keep the tunnels,
        # Terminating, for every later cluster-wide test (release-all counts them)
        release_tunnels(kube, tunnel_ns)
        delete_namespace(kube, agent_ns)
        delete_node(kube, node)


def _place_with_interface(w: an.World) -> None:
    """As the operator: the node label, status.node and the allocated interface."""
    an.place(w, NAME)
    status = {
        "apiVersion": f"{an.GROUP}/{an.VERSION}",
        "kind": "VpnTunnel",
        "metadata": {"name": NAME, "namespace": w.tunnel_ns},
        "status": {"node": w.node, "interface": {"name": "vti7", "type": "vti", "key": 4103}},
    }
    w.kubectl(
        "apply", "--server-side", "--force-conflicts", "--subresource=status",
        "--field-manager=routevpn-operator", "-f", "-", input=json.dumps(status),
    )  # fmt: skip


def test_bgp_session_established_reported_and_routes_installed(
    world: tuple[an.World, Bird],
) -> None:
    w, bird = world
    an.wait_ready(w)
    an.create_tunnel(
        w, NAME, mode="route", child={},
        interface={"type": "vti", "addresses": ["169.254.10.1/30"]}, bgp=BGP,
    )  # fmt: skip
    an.deliver_secret(w, NAME, w.psk)
    _place_with_interface(w)
    an.wait_conditions(w, NAME, {"BgpEstablished": ("True", "Established")}, timeout=90)

    def counted() -> dict[str, Any] | None:
        # the prefixes arrive after the session is up: a later pass reports them
        sessions = ((an.get(w, NAME) or {}).get("status") or {}).get("bgp", {}).get("sessions")
        return sessions[0] if sessions and sessions[0]["prefixes"]["received"] == 3 else None

    session = wait_until(counted, timeout=60, interval=0.5, what="prefixes in status.bgp")
    assert session["peerAddress"] == "169.254.10.2" and session["state"] == "Established"
    # 198.51.100.0/24 accepted; the default route and the node's own network refused
    assert session["prefixes"]["accepted"] == 1 and session["refused"] == 2, session
    assert "169.254.10.2" in bird.conf.read_text()
    routes = w.node_net.ip("-4", "route", "show", "proto", "bird")
    assert "198.51.100.0/24 via 169.254.10.2 dev vti7" in routes and "default" not in routes
    metrics = w.agent.metrics()
    up = {k: v for k, v in metrics.items() if k.startswith("routevpn_tunnel_bgp_session_up{")}
    assert list(up.values()) == [1.0] and f'name="{NAME}"' in next(iter(up)), up
    assert 'peer="169.254.10.2"' in next(iter(up))


def test_bird_gone_is_daemon_unreachable_for_the_bgp_tunnel_only(
    world: tuple[an.World, Bird],
) -> None:
    w, bird = world
    if an.get(w, NAME) is None:
        test_bgp_session_established_reported_and_routes_installed(world)
    before = an.conditions(an.get(w, NAME))["Configured"]
    bird.stop()
    try:
        an.wait_conditions(w, NAME, {"BgpEstablished": ("False", "DaemonUnreachable")})
        after = an.conditions(an.get(w, NAME))["Configured"]
        assert (after["status"], after["reason"]) == (before["status"], before["reason"])
    finally:
        bird.start()
    # BIRD back (it reads the agent's last bird.conf): Established again
    an.wait_conditions(w, NAME, {"BgpEstablished": ("True", "Established")}, timeout=90)
