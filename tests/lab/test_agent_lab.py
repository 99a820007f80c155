"""routevpn end to end on a real IPsec kernel: one site by the agent, the other by hand.

Runs inside the QEMU lab guest (tests/lab/conftest.py), on the reference topology
(support.sites): site "left" is a node whose charon is driven by a real `routevpn agent`
process, site "right" is configured by hand with ip + swanctl. The test plays the
operator through the API: node label, status.node and status.interface via server-side
apply (field manager routevpn-operator), and the delivered Secret.

The API server: ``ROUTEVPN_LAB_KUBECONFIG``, set by the lab tier (and the benchmark),
which start a control plane on the host and forward it into the guest (QEMU user
networking, service address 192.0.2.100), as a real API server lives off the node;
only when that can't start, a control plane of its own inside the guest
(hack/local-cluster.sh, ~60 s under TCG).
The agent lives in the left site's namespace; a relay in this process carries its
TCP connection to the API server's port in the guest's own namespace.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import vici
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from routevpn.api import naming
from routevpn.api.crd import render_crd_yaml
from support import labspec
from support import swanctl as sw
from support.cluster import ControlPlane, Kubectl, bin_dir, free_port
from support.kube import api_client, apply_crd, create_namespace, create_node, wait_until
from support.netns import Netns
from support.nsrelay import forward_into, http_get_in
from support.sites import LEFT, RIGHT, Site, two_sites
from support.tiers import missing

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "routevpn.io", "v1alpha1", "vpntunnels"
NODE_LABEL = "routevpn.io/node"
FINALIZER = "routevpn.io/agent"
KEY = 4096  # what the operator would allocate (naming.ALLOC_MIN)
PEER_KEY = 42  # the hand-configured far end's own mark
RESYNC = 3.0

# --- the API server ---------------------------------------------------------------


@contextlib.contextmanager
def guest_control_plane(workdir: Path) -> Iterator[Path]:
    """The forwarded host apiserver's kubeconfig, or a control plane inside the guest."""
    given = os.environ.get("ROUTEVPN_LAB_KUBECONFIG")
    if given:
        yield Path(given)
        return
    if os.environ.get(labspec.IN_LAB_ENV) != "1":
        missing("the lab guest (run through tests/lab/conftest.py)")
    if bin_dir() is None:
        missing("etcd/kube-apiserver not built: run hack/local-cluster.sh build")
    cp = ControlPlane.ephemeral(workdir)
    try:
        kc = cp.up()
    except Exception as e:
        cp.down(purge=False)
        pytest.fail(f"no control plane inside the guest: {e}", pytrace=False)
    try:
        yield kc
    finally:
        cp.down(purge=True)


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """See `guest_control_plane`."""
    with guest_control_plane(tmp_path_factory.mktemp("control-plane")) as kc:
        yield kc


@dataclass
class Agent:
    """The agent process in the left site's namespace."""

    ns: Netns
    argv: list[str]
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(self.ns.argv(*self.argv), stdout=out, stderr=out)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    @property
    def pid(self) -> int:
        """The agent's PID (`ip netns exec` execs it)."""
        assert self.proc is not None
        return self.proc.pid

    def ready(self) -> bool:
        return http_get_in(self.ns, self.port, "/readyz")[0] == 200

    def metrics(self) -> str:
        code, text = http_get_in(self.ns, self.port, "/metrics")
        assert code == 200, text
        return text

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join([line for line in lines if " DEBUG " not in line][-n:])


@dataclass
class Lab:
    """Everything the module's tests share."""

    left: Site
    right: Site
    agent: Agent
    custom: client.CustomObjectsApi
    core: client.CoreV1Api
    kubectl: Kubectl
    node: str
    agent_ns: str
    tunnel_ns: str
    psk: str
    before: dict[str, str]


def node_snapshot(site: Site) -> dict[str, str]:
    """What a tunnel may change on the node: links, addresses, routes, xfrm, conns."""
    ns = site.ns
    out = {
        "links": ns.ip("-o", "link", "show"),
        "addrs": ns.ip("-o", "addr", "show"),
        "routes4": ns.ip("-4", "route", "show", "table", "all"),
        "routes6": ns.ip("-6", "route", "show", "table", "all"),
        "xfrm_state": ns.ip("xfrm", "state"),
        "xfrm_policy": ns.ip("xfrm", "policy"),
        "conns": sw.swanctl(ns, site.uri, "--list-conns"),
    }
    # SAs that stay (another tunnel's) count packets: keep who they are, not their counters
    out["xfrm_state"] = "\n".join(
        line
        for line in out["xfrm_state"].splitlines()
        if line.lstrip().startswith(("src", "proto"))
    )
    # an IPv6 address is "tentative" until DAD ends: a state, not a change of the node
    out["addrs"] = out["addrs"].replace(" tentative", "")
    # interface counters and the kernel's link-local bookkeeping vary on their own
    out["links"] = "\n".join(
        line.split(" link/")[0].split(" qdisc")[0] for line in out["links"].splitlines()
    )
    return out


@pytest.fixture(scope="module")
def lab(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """See `lab_world`."""
    with lab_world(kubeconfig, tmp_path_factory.mktemp("agent-lab")) as world:
        yield world


@contextlib.contextmanager
def lab_world(
    kubeconfig: Path,
    tmp: Path,
    *,
    agent_flags: Sequence[str] = (),
    charon_extra: Mapping[str, str] | None = None,
) -> Iterator[Lab]:
    """CRD, namespaces, a Node, the two sites and the agent process in the left site.

    `agent_flags` come after the tests' own (short resync and quiet periods), so they
    override them; `charon_extra` goes into both charons' strongswan.conf.
    """
    bins = bin_dir()
    assert bins is not None
    kubectl = Kubectl(bins / "kubectl", kubeconfig)
    # in this process: a `python -m routevpn crd` costs ~12 s of emulated CPU
    apply_crd(kubectl, render_crd_yaml("tunnel"))
    api = api_client(kubeconfig)
    node = f"lab-node-{secrets.token_hex(3)}"
    agent_ns = create_namespace(api, "routevpn-system")
    tunnel_ns = create_namespace(api, "sites")
    create_node(api, node)
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    api_host, api_port = server.removeprefix("https://").rsplit(":", 1)
    inner = free_port()
    conf = yaml.safe_load(kubeconfig.read_text())
    conf["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{inner}"
    agent_kc = tmp / "agent.kubeconfig"
    agent_kc.write_text(yaml.safe_dump(conf))
    agent_kc.chmod(0o600)
    with two_sites(tmp / "sites", charon_extra=charon_extra) as (left, right):
        before = node_snapshot(left)
        agent = Agent(
            left.ns,
            [sys.executable, "-m", "routevpn", "agent", "--node", node, "--namespace", agent_ns,
             "--vici-socket", str(left.charon.vici_socket if left.charon else ""),
             "--http-port", "19478", "--bind-address", "127.0.0.1",
             "--kubeconfig", str(agent_kc), "--resync-seconds", str(RESYNC),
             "--counters-period", "5", "--quiet-seconds", "30", "--traffic-min-packets", "3",
             "--log-level", "DEBUG",
             *agent_flags],
            tmp / "agent.log",
            19478,
        )  # fmt: skip
        with forward_into(left.ns, inner, (api_host, int(api_port))):
            agent.start()
            try:
                yield Lab(
                    left, right, agent, client.CustomObjectsApi(api), client.CoreV1Api(api),
                    kubectl, node, agent_ns, tunnel_ns, secrets.token_hex(24), before,
                )  # fmt: skip
            finally:
                agent.stop()
                api.close()  # type: ignore[no-untyped-call]


# --- the operator's part ------------------------------------------------------------


def operator_places(lab: Lab, name: str, interface: dict[str, Any] | None) -> None:
    """Label, then status.node (+ interface) by server-side apply as routevpn-operator."""
    lab.custom.patch_namespaced_custom_object(
        GROUP, VERSION, lab.tunnel_ns, PLURAL, name,
        {"metadata": {"labels": {NODE_LABEL: lab.node}}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    status: dict[str, Any] = {"node": lab.node}
    if interface is not None:
        status["interface"] = interface
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VpnTunnel",
        "metadata": {"name": name, "namespace": lab.tunnel_ns},
        "status": status,
    }
    lab.kubectl(
        "apply", "--server-side", "--force-conflicts", "--subresource=status",
        "--field-manager=routevpn-operator", "-f", "-", input=json.dumps(body),
    )  # fmt: skip


def deliver_secret(lab: Lab, name: str) -> None:
    lab.core.create_namespaced_secret(
        lab.agent_ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=naming.secret_name(lab.tunnel_ns, name),
                labels={
                    NODE_LABEL: lab.node,
                    "routevpn.io/tunnel-namespace": lab.tunnel_ns,
                    "routevpn.io/tunnel-name": name,
                },
                annotations={
                    "routevpn.io/content-hash": "h1",
                    **naming.delivered_annotations(lab.tunnel_ns, name),
                },
            ),
            data={"psk": base64.b64encode(lab.psk.encode()).decode()},
        ),
    )


def seed_tunnel(lab: Lab) -> dict[str, Any]:
    """examples/seed-ipv6-vti.yaml, placed on this test's node and namespace."""
    docs = yaml.safe_load_all((REPO / "examples" / "seed-ipv6-vti.yaml").read_text())
    obj = next(d for d in docs if d and d.get("kind") == "VpnTunnel")
    obj["metadata"]["namespace"] = lab.tunnel_ns
    obj["spec"]["nodeName"] = lab.node
    assert obj["spec"]["local"]["address"] == LEFT.outer6
    assert obj["spec"]["remote"]["address"] == RIGHT.outer6
    return cast(dict[str, Any], obj)


def right_side_by_hand(lab: Lab) -> None:
    """The far end of the seed tunnel: a VTI6, its inside address, a route, a conn."""
    r = lab.right
    r.vti("vti1", RIGHT.outer6, LEFT.outer6, PEER_KEY)
    r.address("vti1", "2001:db8:100::1/127")
    r.route(LEFT.net6, via="2001:db8:100::", dev="vti1")
    conn = sw.Conn(
        "seed", RIGHT.outer6, LEFT.outer6, RIGHT.outer6, LEFT.outer6, lab.psk,
        [sw.Child("seed", esp_proposals="aes256gcm16-ecp384", mark=PEER_KEY)],
        proposals="aes256gcm16-prfsha384-ecp384",
    )  # fmt: skip
    sw.write_and_load(r.ns, r.uri, r.workdir / "swanctl.conf", [conn])


def get(lab: Lab, name: str) -> dict[str, Any] | None:
    try:
        return cast(
            dict[str, Any],
            lab.custom.get_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL, name),
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def conditions(obj: dict[str, Any] | None) -> dict[str, tuple[str, str, str]]:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in conds}


def wait_true(lab: Lab, name: str, types: tuple[str, ...], timeout: float = 120) -> None:
    def ok() -> bool:
        c = conditions(get(lab, name))
        return all(c.get(t, ("",))[0] == "True" for t in types)

    try:
        wait_until(ok, timeout=timeout, interval=0.5, what=f"{types} of {name}")
    except TimeoutError:
        pytest.fail(f"{name}: {conditions(get(lab, name))}\nagent:\n{lab.agent.tail()}")


def child_spis(site: Site, conn: str) -> set[tuple[str, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    assert site.charon is not None
    s.connect(str(site.charon.vici_socket))
    session = vici.Session(s)
    try:
        out = set()
        for event in session.list_sas({"ike": conn}):
            for sa in event.values():
                for c in (sa.get("child-sas") or {}).values():
                    if c.get("state") == b"INSTALLED":
                        out.add((c["spi-in"].decode(), c["spi-out"].decode()))
        return out
    finally:
        s.close()


# --- the tests ---------------------------------------------------------------------

SEED = "site-b"


def test_seed_example_comes_up_and_carries_ipv6(lab: Lab) -> None:
    wait_until(lab.agent.ready, timeout=120, interval=0.5, what="agent ready")
    right_side_by_hand(lab)
    lab.custom.create_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL,
                                               seed_tunnel(lab))  # fmt: skip
    deliver_secret(lab, SEED)
    operator_places(lab, SEED, {"name": "vti1", "type": "vti", "key": KEY})
    wait_true(lab, SEED, ("Configured", "IkeEstablished", "ChildSaInstalled", "RoutesInstalled"))
    lab.left.ping(RIGHT.host6, src=LEFT.host6, count=5)
    # the replies arrived through the tunnel: TrafficFlowing turns True at the next pass
    wait_true(lab, SEED, ("TrafficFlowing",), timeout=30)
    obj = get(lab, SEED)
    assert obj is not None
    child = obj["status"]["child"]
    assert child["state"] == "INSTALLED" and child["spiIn"] and child["spiOut"]
    link = lab.left.ns.ip("-d", "link", "show", "vti1")
    assert "vti6" in link and "ikey 0.0.16.0" in link, link  # key 4096, dotted
    assert f"alias routevpn:{lab.tunnel_ns}/{SEED}" in link, link
    default = lab.left.ns.ip("-6", "route", "show", "default")
    assert "via 2001:db8:100::1 dev vti1 proto 157" in default, default


def test_inner_mtu_is_reported_and_the_interface_follows_it(lab: Lab) -> None:
    """IPv6 outer over a 1500-byte WAN, AES-GCM-16, no NAT-T: 1500 - 40 (IPv6) - 8 (ESP
    header) - 8 (IV) - 16 (ICV) = 1428, aligned to 4, less the 2-byte trailer: 1426.
    The kernel agrees: a 1427-byte inner packet gets "packet too big, mtu 1426"."""
    assert "mtu 1500" in lab.left.ns.ip("link", "show", lab.left.wan)
    obj = get(lab, SEED)
    assert obj is not None
    child = obj["status"]["child"]
    assert child["algorithms"]["encryption"] == "AES_GCM_16-256", child
    assert child.get("innerMtu") == 1426, child

    def vti_mtu() -> str:
        return lab.left.ns.ip("link", "show", "vti1").split(" mtu ")[1].split()[0]

    wait_until(lambda: vti_mtu() == "1426", timeout=30, interval=0.5, what="vti1 mtu 1426")
    # 1426 bytes inner (1378 of ICMPv6 payload + 8 + 40) cross with DF; one more doesn't
    ping = ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "3", "-M", "do", "-I", LEFT.host6]
    ok = subprocess.run(lab.left.ns.argv(*ping, "-s", "1378", RIGHT.host6),
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lab.left.ns.ip("link", "set", "vti1", "mtu", "1500")  # drift, and room to try
    big = subprocess.run(lab.left.ns.argv(*ping, "-s", "1379", RIGHT.host6),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert big.returncode != 0 and "mtu=1426" in big.stdout + big.stderr, big.stdout
    # the agent repairs the drift within a resync
    wait_until(lambda: vti_mtu() == "1426", timeout=RESYNC * 5, interval=0.5, what="repair")


def test_kill_9_of_the_agent_loses_no_packet_and_keeps_the_spis(lab: Lab) -> None:
    conn = f"routevpn.{lab.tunnel_ns}.{SEED}"
    spis = child_spis(lab.left, conn)
    assert spis, "no INSTALLED CHILD SA to begin with"
    ping = subprocess.Popen(
        lab.left.ns.argv("ping", "-n", "-i", "0.2", "-c", "60", "-W", "2", "-I", LEFT.host6,
                         RIGHT.host6),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        lab.agent.stop(signal.SIGKILL)
        lab.agent.start()
        wait_until(lab.agent.ready, timeout=120, interval=0.5, what="agent ready again")
        out, _ = ping.communicate(timeout=120)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    assert ping.returncode == 0, out
    assert " 0% packet loss" in out, out
    assert child_spis(lab.left, conn) == spis, "the CHILD SA was re-keyed"


def test_deleting_the_tunnel_leaves_the_node_as_it_was(lab: Lab) -> None:
    lab.custom.delete_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL, SEED)
    wait_until(lambda: get(lab, SEED) is None, timeout=60, interval=0.5, what="tunnel gone")
    after = node_snapshot(lab.left)
    for key, value in lab.before.items():
        assert after[key] == value, f"{key} differs after teardown:\n{value}\n---\n{after[key]}"


# --- the other examples: IPv4 VTI, XFRM interface, policy-based ------------------------
#
# Their addresses are adapted to the reference topology (the example's peer addresses
# and far LANs are stand-ins); everything else in each example is used as written.


@dataclass(frozen=True)
class Case:
    """One example on the reference topology."""

    file: str
    interface: dict[str, Any] | None
    spec: dict[str, Any]
    right: Callable[[Lab], tuple[sw.Child, tuple[str, ...]]]  # child, links to remove
    pings: tuple[tuple[str, str], ...]  # (dst, src) from the left site
    node_routes: tuple[tuple[str, str, str], ...] = field(default=())  # (side, prefix, via)


def _right_ipv4_vti(lab: Lab) -> tuple[sw.Child, tuple[str, ...]]:
    r = lab.right
    r.ns.ip("tunnel", "add", "vti2", "local", RIGHT.outer4, "remote", LEFT.outer4,
            "mode", "vti", "key", "44")  # fmt: skip
    r.ns.sysctl("net.ipv4.conf.vti2.disable_policy", "1")
    r.ns.ip("link", "set", "vti2", "up")
    r.address("vti2", "169.254.10.2/30")
    r.route(LEFT.net4, via="169.254.10.1")
    return sw.Child("ex", esp_proposals="aes256gcm16-ecp384", mark=44), ("vti2",)


def _right_xfrm(lab: Lab) -> tuple[sw.Child, tuple[str, ...]]:
    r = lab.right
    r.xfrm("xfrm7", if_id=7)
    r.address("xfrm7", "169.254.20.2/30")
    r.address("xfrm7", "2001:db8:120::1/127")
    r.route(LEFT.net4, via="169.254.20.1")
    r.route(LEFT.net6, via="2001:db8:120::")
    return sw.Child("ex", esp_proposals="aes256gcm16-ecp384", if_id=7), ("xfrm7",)


def _right_policy(lab: Lab) -> tuple[sw.Child, tuple[str, ...]]:
    child = sw.Child(
        "ex", local_ts=RIGHT.net4, remote_ts=LEFT.net4, esp_proposals="aes256gcm16-ecp384"
    )
    return child, ()


CASES = {
    "ipv4-vti": Case(
        "ipv4-vti.yaml",
        {"name": "vti4100", "type": "vti", "key": 4100},
        {"remote": {"address": RIGHT.outer4, "id": RIGHT.outer4}},
        _right_ipv4_vti,
        ((RIGHT.host4, LEFT.host4),),
    ),
    "xfrm-interface": Case(
        "xfrm-interface.yaml",
        {"name": "xfrm-sitec", "type": "xfrm", "ifId": 43},
        {
            "remote": {"address": RIGHT.outer4},
            "routes": [
                {"to": RIGHT.net4, "via": "169.254.20.2"},
                {"to": RIGHT.net6, "via": "2001:db8:120::1"},
            ],
        },
        _right_xfrm,
        ((RIGHT.host4, LEFT.host4), (RIGHT.host6, LEFT.host6)),
    ),
    "policy-based": Case(
        "policy-based.yaml",
        None,
        {
            "remote": {"address": RIGHT.outer4},
            "child": {"trafficSelectors": {"local": [LEFT.net4], "remote": [RIGHT.net4]}},
        },
        _right_policy,
        ((RIGHT.host4, LEFT.host4),),
        # policy mode routes nothing: the node's own routing must reach the far LAN
        node_routes=(("left", RIGHT.net4, RIGHT.outer4), ("right", LEFT.net4, LEFT.outer4)),
    ),
}


@pytest.mark.parametrize("case_id", list(CASES))
def test_example_comes_up_carries_traffic_and_goes_away_cleanly(lab: Lab, case_id: str) -> None:
    case = CASES[case_id]
    wait_until(lab.agent.ready, timeout=120, interval=0.5, what="agent ready")
    for side, prefix, via in case.node_routes:
        (lab.left if side == "left" else lab.right).route(prefix, via=via)
    before = node_snapshot(lab.left)
    child, right_links = case.right(lab)
    try:
        run_case(lab, case, child, before)
    finally:
        # a leftover far-end VTI with the same endpoints would swallow the next case's ESP
        for link in right_links:
            lab.right.ns.ip("link", "delete", link, check=False)


def diagnose(lab: Lab) -> str:
    """Both sites' links, xfrm state/policies and routes, for a failure message."""
    out = []
    for site in (lab.left, lab.right):
        for args in (("-d", "link"), ("xfrm", "state"), ("xfrm", "policy"), ("route",),
                     ("-6", "route")):  # fmt: skip
            out.append(f"--- {site.plan.name}: ip {' '.join(args)}")
            out.append(site.ns.ip(*args, check=False))
    return "\n".join(out)


def run_case(lab: Lab, case: Case, child: sw.Child, before: dict[str, str]) -> None:
    """Bring the example up against the far end, prove traffic, delete, compare the node."""
    conn = sw.Conn(
        "ex", RIGHT.outer4, LEFT.outer4, RIGHT.outer4, LEFT.outer4, lab.psk, [child],
        proposals="aes256gcm16-prfsha384-ecp384",
    )  # fmt: skip
    sw.write_and_load(lab.right.ns, lab.right.uri, lab.right.workdir / "swanctl.conf", [conn])
    docs = yaml.safe_load_all((REPO / "examples" / case.file).read_text())
    obj = next(d for d in docs if d and d.get("kind") == "VpnTunnel")
    name = obj["metadata"]["name"]
    obj["metadata"]["namespace"] = lab.tunnel_ns
    obj["spec"].pop("nodeSelector", None)
    obj["spec"]["nodeName"] = lab.node
    obj["spec"].update(case.spec)
    assert obj["spec"]["local"]["address"] == LEFT.outer4
    lab.custom.create_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL, obj)
    try:
        deliver_secret(lab, name)
        operator_places(lab, name, case.interface)
        wait_true(
            lab, name, ("Configured", "IkeEstablished", "ChildSaInstalled", "RoutesInstalled")
        )
        for dst, src in case.pings:
            try:
                lab.left.ping(dst, src=src, count=3)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{diagnose(lab)}") from None
        wait_true(lab, name, ("TrafficFlowing",), timeout=30)
        routes = conditions(get(lab, name))["RoutesInstalled"]
        assert routes[1] == ("NotApplicable" if case.interface is None else "Installed"), routes
    finally:
        with contextlib.suppress(ApiException):
            lab.custom.delete_namespaced_custom_object(GROUP, VERSION, lab.tunnel_ns, PLURAL, name)
        wait_until(lambda: get(lab, name) is None, timeout=60, interval=0.5, what=f"{name} gone")
    after = node_snapshot(lab.left)
    for key, value in before.items():
        assert after[key] == value, f"{key} differs after teardown:\n{value}\n---\n{after[key]}"
