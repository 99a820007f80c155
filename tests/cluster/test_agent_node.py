"""The node agent as a real process for a simulated node, against the real API server.

Topology (all inside throwaway network namespaces; the host's network is never touched):

    netns "node"  203.0.113.1 ── veth ── 203.0.113.2  netns "peer"
      charon (the agent's, VICI socket on disk)        charon, configured by hand (swanctl)
      routevpn agent  ── 127.0.0.1:P ─► in-process relay ─► the test's kube-apiserver

The test acts as the operator through the API (label, status.node via server-side apply
with field manager routevpn-operator, the delivered Secret). This host's kernel has no
ESP, so the tunnel is policy-based and the CHILD SA's install fails in the kernel: the
agent must report IkeEstablished=True and ChildSaInstalled=False with the kernel's
reason. Everything else (finalizer, status, events, metrics, idempotence, drift repair,
restart without re-key, GC that spares foreign config, teardown) is asserted for real.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import vici
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from routevpn.api import naming
from support import swanctl
from support.charon import CHARON, Charon
from support.cluster import ClusterAccess, free_port
from support.kube import create_namespace, create_node, delete_namespace, delete_node, wait_until
from support.netns import Netns, have_root, netns, veth
from support.nsrelay import forward_into, http_get_in
from support.operator import release_tunnels
from support.secretscan import REGISTRY
from support.tiers import missing

pytestmark = [pytest.mark.netns, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "routevpn.io", "v1alpha1", "vpntunnels"
NODE_LABEL = "routevpn.io/node"
FINALIZER = "routevpn.io/agent"
NODE_ADDR, PEER_ADDR = "203.0.113.1", "203.0.113.2"
LOCAL_TS, REMOTE_TS = "192.0.2.0/25", "198.51.100.0/24"
IKE_PROPOSAL = "aes256gcm16-prfsha384-ecp384"  # the agent's documented default
ESP_PROPOSAL = "aes256gcm16-ecp384"
RESYNC = 3.0
# This host's kernel has no ESP: the CHILD SA can't be installed. Whichever end tries
# first reports it: the initiator (us) as KernelSaInstallFailed, or the responder (the
# peer, which installs before answering) as a NO_PROPOSAL_CHOSEN notify we receive.
KERNEL_REFUSES_SA = ("NoProposalChosen", "KernelSaInstallFailed")


# --- the world: node, namespaces, charons, the agent ----------------------------------


@dataclass
class AgentProc:
    """The agent process inside the node's namespace."""

    ns: Netns
    argv: list[str]
    log: Path
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        REGISTRY.add_log(self.log)  # scanned for secrets at the end of the session
        out = self.log.open("ab")
        out.write(f"\n----- start #{self.starts} -----\n".encode())
        out.flush()
        self.proc = subprocess.Popen(self.ns.argv(*self.argv), stdout=out, stderr=out)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        code, text = self.http("/metrics")
        if code == 200:
            REGISTRY.add_text("agent /metrics", text)
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def http(self, path: str) -> tuple[int, str]:
        """GET a path of the agent's HTTP server (inside the namespace): (status, body)."""
        return http_get_in(self.ns, self.http_port, path)

    def metrics(self) -> dict[str, float]:
        """The agent's /metrics as {series: value}."""
        code, text = self.http("/metrics")
        assert code == 200, f"/metrics failed ({code}): {self.tail()}"
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class World:
    """Everything one module of tests shares."""

    node: str
    agent_ns: str
    tunnel_ns: str
    node_net: Netns
    peer_net: Netns
    charon: Charon
    peer: Charon
    agent: AgentProc
    custom: client.CustomObjectsApi
    core: client.CoreV1Api
    kubectl: Any
    psk: str
    peer_conf: Path
    tunnels: list[str] = field(default_factory=list)


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the series of metric `name` that carry all of `labels`."""
    total = 0.0
    for series, value in metrics.items():
        base, _, rest = series.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def tunnel_writes(metrics: dict[str, float]) -> float:
    """The agent's API writes for tunnels: all of them but its liveness Lease's renewals
    (one every 10 s whatever the tunnels do: `agent.liveness`)."""
    total = metric_sum(metrics, "routevpn_agent_api_writes_total")
    return total - metric_sum(metrics, "routevpn_agent_api_writes_total", kind="lease")


@pytest.fixture(scope="module")
def world(
    cluster: ClusterAccess,
    crd: list[str],
    kube: client.ApiClient,
    kubeconfig_for: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    if not have_root():
        missing("root (network namespaces)")
    if not CHARON.exists():
        missing(f"charon ({CHARON})")
    tmp = tmp_path_factory.mktemp("agent-node")
    node = f"agent-node-{secrets.token_hex(3)}"
    agent_ns = create_namespace(kube, "routevpn-system")
    tunnel_ns = create_namespace(kube, "tenant")
    create_node(kube, node)
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    api_host, api_port = server.removeprefix("https://").rsplit(":", 1)
    inner_port = free_port()
    kubeconfig = kubeconfig_for(f"https://127.0.0.1:{inner_port}")
    http_port = 19478
    try:
        with (
            netns("rvnode") as node_net,
            netns("rvpeer") as peer_net,
            veth(node_net, "vnode", peer_net, "vpeer"),
        ):
            node_net.add_address("vnode", f"{NODE_ADDR}/24")
            peer_net.add_address("vpeer", f"{PEER_ADDR}/24")
            charon = Charon(node_net, tmp / "charon-node")
            peer = Charon(peer_net, tmp / "charon-peer")
            charon.start()
            peer.start()
            psk = secrets.token_hex(24)
            peer_conf = tmp / "peer" / "swanctl.conf"
            agent = AgentProc(
                node_net,
                [
                    sys.executable,
                    "-m",
                    "routevpn",
                    "agent",
                    "--node",
                    node,
                    "--namespace",
                    agent_ns,
                    "--vici-socket",
                    str(charon.vici_socket),
                    "--http-port",
                    str(http_port),
                    "--bind-address",
                    "127.0.0.1",
                    "--kubeconfig",
                    str(kubeconfig),
                    "--resync-seconds",
                    str(RESYNC),
                    "--counters-period",
                    "5",
                    "--log-level",
                    "DEBUG",
                ],
                tmp / "agent.log",
                http_port,
            )
            try:
                with forward_into(node_net, inner_port, (api_host, int(api_port))):
                    agent.start()
                    yield World(
                        node=node,
                        agent_ns=agent_ns,
                        tunnel_ns=tunnel_ns,
                        node_net=node_net,
                        peer_net=peer_net,
                        charon=charon,
                        peer=peer,
                        agent=agent,
                        custom=client.CustomObjectsApi(kube),
                        core=client.CoreV1Api(kube),
                        kubectl=cluster.kubectl,
                        psk=psk,
                        peer_conf=peer_conf,
                    )
            finally:
                agent.stop()
                peer.stop()
                charon.stop()
    finally:
        delete_namespace(kube, tunnel_ns)  # kept for the secret scan first, then
        # released: the agent is gone, and its finalizers would keep the tunnels,
        # Terminating, for every later cluster-wide test (release-all counts them)
        release_tunnels(kube, tunnel_ns)
        delete_namespace(kube, agent_ns)
        delete_node(kube, node)


# --- acting as the operator -------------------------------------------------------


def peer_conn(w: World, name: str, psk: str | None = None) -> swanctl.Conn:
    """The far end of tunnel `name`, written by hand."""
    return swanctl.Conn(
        name=f"peer-{name}",
        local_addrs=PEER_ADDR,
        remote_addrs=NODE_ADDR,
        local_id=PEER_ADDR,
        remote_id=NODE_ADDR,
        psk=psk or w.psk,
        proposals=IKE_PROPOSAL,
        children=[
            swanctl.Child(
                name=f"peer-{name}",
                local_ts=REMOTE_TS,
                remote_ts=LOCAL_TS,
                esp_proposals=ESP_PROPOSAL,
            )
        ],
    )


def tunnel_body(w: World, name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "nodeName": w.node,
        "mode": "policy",
        "local": {"address": NODE_ADDR},
        "remote": {"address": PEER_ADDR},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "user-psk"}}},
        "child": {"trafficSelectors": {"local": [LOCAL_TS], "remote": [REMOTE_TS]}},
    }
    base.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VpnTunnel",
        "metadata": {"name": name, "namespace": w.tunnel_ns},
        "spec": base,
    }


def deliver_secret(w: World, name: str, psk: str) -> None:
    """The Secret the operator delivers into the agent's namespace (its PSK registered for
    the secret scan)."""
    REGISTRY.add_psk(psk, f"delivered {w.tunnel_ns}/{name}")
    secret_name = naming.secret_name(w.tunnel_ns, name)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=secret_name,
            namespace=w.agent_ns,
            labels={
                NODE_LABEL: w.node,
                "routevpn.io/tunnel-namespace": w.tunnel_ns,
                "routevpn.io/tunnel-name": name,
            },
            annotations={
                "routevpn.io/content-hash": secrets.token_hex(8),
                **naming.delivered_annotations(w.tunnel_ns, name),
            },
        ),
        data={"psk": base64.b64encode(psk.encode()).decode()},
    )
    try:
        w.core.create_namespaced_secret(w.agent_ns, body)
    except ApiException as e:
        if e.status != 409:
            raise
        w.core.replace_namespaced_secret(secret_name, w.agent_ns, body)


def place(w: World, name: str, *, node: str | None = None, label: str | None = None) -> None:
    """Operator's placement: the node label, then status.node (SSA, routevpn-operator)."""
    w.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        w.tunnel_ns,
        PLURAL,
        name,
        {"metadata": {"labels": {NODE_LABEL: label or w.node}}},
        _content_type="application/merge-patch+json",
    )
    status = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VpnTunnel",
        "metadata": {"name": name, "namespace": w.tunnel_ns},
        "status": {"node": node or w.node},
    }
    w.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--subresource=status",
        "--field-manager=routevpn-operator",
        "-f",
        "-",
        input=json.dumps(status),
    )


def create_tunnel(w: World, name: str, **spec: Any) -> None:
    w.custom.create_namespaced_custom_object(
        GROUP, VERSION, w.tunnel_ns, PLURAL, tunnel_body(w, name, **spec)
    )
    w.tunnels.append(name)


def get(w: World, name: str) -> dict[str, Any] | None:
    try:
        obj = cast(
            dict[str, Any],
            w.custom.get_namespaced_custom_object(GROUP, VERSION, w.tunnel_ns, PLURAL, name),
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return obj


def conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}


Want = dict[str, tuple[str, str | tuple[str, ...] | None]]


def wait_conditions(w: World, name: str, want: Want, timeout: float = 60) -> dict[str, Any]:
    """Poll until every condition type has (status, reason); reason None = any."""

    def check() -> dict[str, Any] | None:
        obj = get(w, name)
        conds = conditions(obj)
        for t, (status, reason) in want.items():
            c = conds.get(t)
            reasons = (reason,) if isinstance(reason, str) else reason
            if c is None or c["status"] != status or (reasons and c["reason"] not in reasons):
                return None
        return obj

    try:
        return wait_until(check, timeout=timeout, interval=0.3, what=f"conditions of {name}")
    except TimeoutError:
        conds = {
            t: (c["status"], c["reason"], c["message"]) for t, c in conditions(get(w, name)).items()
        }
        pytest.fail(f"{name}: wanted {want}, have {conds}\nagent log:\n{w.agent.tail()}")


def vici_session(path: Path) -> Any:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return vici.Session(s)


def charon_state(path: Path) -> dict[str, Any]:
    """Connections, shared-key ids and IKE SAs (name → (uniqueid, state)) of a charon."""
    session = vici_session(path)
    try:
        conns = [c.decode() for c in session.get_conns()["conns"]]
        keys = [k.decode() for k in session.get_shared()["keys"]]
        sas: dict[str, tuple[str, str, list[tuple[str, str]]]] = {}
        for event in session.list_sas():
            for conn, sa in event.items():
                children = [
                    (c["spi-in"].decode(), c["spi-out"].decode())
                    for c in (sa.get("child-sas") or {}).values()
                    if "spi-in" in c
                ]
                sas[conn] = (sa["uniqueid"].decode(), sa["state"].decode(), children)
        return {"conns": conns, "keys": keys, "sas": sas}
    finally:
        session.transport.close()


def agent_events(w: World, name: str) -> list[client.CoreV1Event]:
    events = w.core.list_namespaced_event(
        w.tunnel_ns, field_selector=f"involvedObject.name={name}"
    ).items
    return [e for e in events if e.reporting_component == "routevpn-agent"]


def wait_ready(w: World) -> None:
    try:
        wait_until(lambda: w.agent.http("/readyz")[0] == 200, timeout=60, interval=0.3,
                   what="agent /readyz")  # fmt: skip
    except TimeoutError as e:
        pytest.fail(f"{e}: {w.agent.http('/readyz')}\nagent log:\n{w.agent.tail()}")


# --- the tests: each makes the state it needs (fixtures below), so any one runs alone ---

T1 = "site-b"
PENDING = "route-pending"


@pytest.fixture
def t1(w: World) -> str:
    """Tunnel T1 placed on the node with the far end's side loaded and its IKE SA up
    (made here when an earlier test has not left it so)."""
    if get(w, T1) is None:
        swanctl.write_and_load(w.peer_net, w.peer.uri, w.peer_conf, [peer_conn(w, T1)])
        wait_ready(w)
        create_tunnel(w, T1)
        deliver_secret(w, T1, w.psk)
        place(w, T1)
    wait_conditions(w, T1, {"IkeEstablished": ("True", "Established")})
    return T1


@pytest.fixture
def pending(w: World) -> str:
    """A route-mode tunnel placed without an allocated interface (made when missing)."""
    if get(w, PENDING) is None:
        create_tunnel(
            w,
            PENDING,
            mode="route",
            child={},
            interface={"addresses": ["169.254.30.1/30"]},
            routes=[{"to": "198.51.100.0/24", "via": "169.254.30.2"}],
        )
        deliver_secret(w, PENDING, w.psk)
        place(w, PENDING)
    return PENDING


def test_configures_a_placed_tunnel_and_reports_conditions_events_metrics(w: World) -> None:
    if get(w, T1) is not None:  # left by another test of this module: start from nothing
        w.custom.delete_namespaced_custom_object(GROUP, VERSION, w.tunnel_ns, PLURAL, T1)
        wait_until(lambda: get(w, T1) is None, timeout=30, interval=0.3, what=f"{T1} deleted")
    swanctl.write_and_load(w.peer_net, w.peer.uri, w.peer_conf, [peer_conn(w, T1)])
    wait_ready(w)
    create_tunnel(w, T1)
    deliver_secret(w, T1, w.psk)
    # not labelled yet: invisible to the agent (server-side selector), left alone
    assert FINALIZER not in (get(w, T1) or {})["metadata"].get("finalizers", [])
    place(w, T1)
    obj = wait_conditions(
        w,
        T1,
        {
            "Configured": ("True", "Applied"),
            "IkeEstablished": ("True", "Established"),
            "RoutesInstalled": ("True", "NotApplicable"),
        },
    )
    assert FINALIZER in obj["metadata"]["finalizers"]
    child = wait_conditions(w, T1, {"ChildSaInstalled": ("False", KERNEL_REFUSES_SA)})
    conds = conditions(child)
    for c in conds.values():
        if c["type"] in ("Configured", "IkeEstablished", "ChildSaInstalled"):
            assert c["observedGeneration"] == obj["metadata"]["generation"]
            assert c["lastTransitionTime"]
    assert conds["TrafficFlowing"]["status"] == "Unknown"
    status = child["status"]
    assert status["ike"]["state"] == "ESTABLISHED"
    assert status["ike"]["algorithms"]["encryption"].startswith("AES_GCM_16")
    assert status["node"] == w.node  # the operator's field is untouched
    assert w.psk not in json.dumps(child)
    # the operator's fields stay the operator's: the agent manages only its own
    managers = {m["manager"]: m for m in child["metadata"]["managedFields"]}
    agent_fields = json.dumps(managers["routevpn-agent"]["fieldsV1"])
    assert '"f:node"' not in agent_fields and 'k:{\\"type\\":\\"Ready\\"}' not in agent_fields
    # the peer sees the same IKE SA
    peer_sas = swanctl.ike_states(swanctl.list_sas(w.peer_net, w.peer.uri))
    assert peer_sas.get(f"peer-{T1}") == "ESTABLISHED"

    # one Event per transition, from routevpn-agent (sent right after the status write
    # that carries the transition, so they may arrive a moment after it)
    def event_reasons() -> set[str] | None:
        seen = {str(e.reason) for e in agent_events(w, T1)}
        done = seen >= {"Applied", "Established"} and seen & set(KERNEL_REFUSES_SA)
        return seen if done else None

    reasons = wait_until(event_reasons, timeout=20, what="agent events")
    assert reasons & set(KERNEL_REFUSES_SA)
    warning = [e for e in agent_events(w, T1) if e.reason in KERNEL_REFUSES_SA]
    assert warning and warning[0].type == "Warning"
    metrics = w.agent.metrics()
    labels = f'name="{T1}",namespace="{w.tunnel_ns}",node="{w.node}"'
    assert metrics[f'routevpn_tunnel_ike_state{{{labels},state="ESTABLISHED"}}'] == 1.0
    # charon's KernelSaInstallFailed / NO_PROPOSAL_CHOSEN lines are negotiation failures
    assert metrics[f"routevpn_tunnel_ike_failures_total{{{labels}}}"] >= 1
    assert metric_sum(metrics, "routevpn_tunnel_established_timestamp_seconds") > 1e9
    assert metric_sum(metrics, "routevpn_agent_reconcile_total") >= 1


def _quiet_counters(w: World) -> tuple[float, float, float]:
    m = w.agent.metrics()
    return (
        tunnel_writes(m),
        metric_sum(m, "routevpn_agent_dataplane_changes_total"),
        metric_sum(m, "routevpn_agent_reconcile_total"),
    )


def test_a_pass_with_nothing_changed_changes_and_writes_nothing(w: World, t1: str) -> None:
    # let the bring-up settle (events of the first seconds), then watch two resyncs
    wait_conditions(w, T1, {"ChildSaInstalled": ("False", KERNEL_REFUSES_SA)})
    # the pass that wrote that status may still be sending its Events: let it end
    seen = _quiet_counters(w)[2]
    wait_until(
        lambda: _quiet_counters(w)[2] > seen,
        timeout=2 * RESYNC + 10,
        interval=0.5,
        what="the pass that reported the conditions to end",
    )
    writes0, changes0, passes0 = _quiet_counters(w)
    wait_until(
        lambda: _quiet_counters(w)[2] >= passes0 + 2,
        timeout=4 * RESYNC + 10,
        interval=0.5,
        what="two more reconcile passes",
    )
    writes1, changes1, _ = _quiet_counters(w)
    assert (writes1, changes1) == (writes0, changes0), w.agent.tail()


def test_drift_is_repaired_within_one_resync(w: World, t1: str) -> None:
    conn = f"routevpn.{w.tunnel_ns}.{T1}"
    before = charon_state(w.charon.vici_socket)["sas"][conn]
    swanctl.swanctl(w.node_net, w.charon.uri, "--terminate", "--ike", conn)
    # unload the connection too: the agent must load it again and bring the SA back
    session = vici_session(w.charon.vici_socket)
    try:
        session.unload_conn({"name": conn})
    finally:
        session.transport.close()

    def back() -> bool:
        state = charon_state(w.charon.vici_socket)
        sa = state["sas"].get(conn)
        return (
            conn in state["conns"]
            and sa is not None
            and sa[1] == "ESTABLISHED"
            and (sa[0] != before[0])
        )

    wait_until(back, timeout=RESYNC + 15, interval=0.3, what=f"repair of {conn}")
    wait_conditions(w, T1, {"IkeEstablished": ("True", "Established")})


def test_secret_rotation_reloads_the_key_and_reauthenticates_at_once(w: World, t1: str) -> None:
    """A rotated PSK is loaded and the IKE SA re-authenticated with it at once (the SA
    authenticated with the old key must not live on for hours). The far end's admin
    changes the key first, then the Secret changes, as docs/status.md says to
    ("Rotating a PSK or key")."""
    conn = f"routevpn.{w.tunnel_ns}.{T1}"
    wait_conditions(w, T1, {"IkeEstablished": ("True", "Established")})
    ike_before = charon_state(w.charon.vici_socket)["sas"][conn]
    loaded = metric_sum(w.agent.metrics(), "routevpn_agent_dataplane_changes_total", what="secret")
    w.psk = secrets.token_hex(24)
    swanctl.write_and_load(w.peer_net, w.peer.uri, w.peer_conf, [peer_conn(w, T1, w.psk)])
    deliver_secret(w, T1, w.psk)  # a new content hash, as the operator writes it
    wait_until(
        lambda: (
            metric_sum(w.agent.metrics(), "routevpn_agent_dataplane_changes_total", what="secret")
            > loaded
        ),
        timeout=RESYNC + 15,
        interval=0.3,
        what="the rotated key loaded into charon",
    )
    assert conn in charon_state(w.charon.vici_socket)["keys"]

    def reauthenticated() -> bool:
        sa = charon_state(w.charon.vici_socket)["sas"].get(conn)
        return sa is not None and sa[1] == "ESTABLISHED" and sa[0] != ike_before[0]

    wait_until(reauthenticated, timeout=RESYNC + 30, interval=0.3, what=f"reauth of {conn}")
    wait_conditions(w, T1, {"IkeEstablished": ("True", "Established")})


def load_by_hand(w: World, *conns: tuple[str, str]) -> None:
    """Load connections (name, peer address) and their keys into the node's charon over
    VICI, as someone else would (swanctl --load-all would unload the agent's too)."""
    session = vici_session(w.charon.vici_socket)
    try:
        for name, peer in conns:
            session.load_conn({name: {
                "local_addrs": [NODE_ADDR], "remote_addrs": [peer],
                "local": {"auth": "psk", "id": NODE_ADDR},
                "remote": {"auth": "psk", "id": peer},
                "children": {name: {"local_ts": [LOCAL_TS], "remote_ts": [REMOTE_TS]}},
            }})  # fmt: skip
            session.load_shared(
                {"id": name, "type": "IKE", "data": secrets.token_hex(16), "owners": [peer]}
            )
    finally:
        session.transport.close()


def test_restart_of_the_agent_disturbs_nothing_and_gcs_only_its_own(w: World, t1: str) -> None:
    conn = f"routevpn.{w.tunnel_ns}.{T1}"
    # a foreign connection, and a stale one of routevpn's own that no tunnel wants
    load_by_hand(w, ("routevpn.gone.tunnel", "198.51.100.77"), ("manual-x", "198.51.100.88"))
    before = charon_state(w.charon.vici_socket)
    assert {"routevpn.gone.tunnel", "manual-x"} <= set(before["conns"])
    ike_before = before["sas"][conn]
    obj_before = get(w, T1)
    assert obj_before is not None
    w.agent.stop(signal.SIGKILL)
    w.agent.start()
    wait_ready(w)
    wait_until(
        lambda: metric_sum(w.agent.metrics(), "routevpn_agent_reconcile_total") >= 3,
        timeout=4 * RESYNC + 10,
        interval=0.5,
        what="reconcile passes after the restart",
    )
    after = charon_state(w.charon.vici_socket)
    assert after["sas"][conn][:2] == ike_before[:2], "the IKE SA was re-keyed or re-initiated"
    assert "manual-x" in after["conns"]
    assert "routevpn.gone.tunnel" not in after["conns"]
    assert "routevpn.gone.tunnel" not in after["keys"]
    # nothing to report after a restart: the status on the server is already right
    m = w.agent.metrics()
    assert tunnel_writes(m) == 0, w.agent.tail()
    # ...but its liveness Lease, renewed at once by the restarted agent (held by its node).
    assert metric_sum(m, "routevpn_agent_api_writes_total", kind="lease") >= 1
    coord: Any = client.CoordinationV1Api(w.core.api_client)
    lease = coord.read_namespaced_lease(naming.agent_lease_name(w.node), w.agent_ns)
    assert lease.spec.holder_identity == w.node
    obj_after = get(w, T1)
    assert obj_after is not None
    assert obj_after["metadata"]["resourceVersion"] == obj_before["metadata"]["resourceVersion"]


def test_route_mode_without_an_allocated_interface_is_pending(w: World, pending: str) -> None:
    obj = wait_conditions(w, pending, {"Configured": ("Unknown", "Pending")})
    assert "status.interface" in conditions(obj)["Configured"]["message"]
    assert conditions(obj)["IkeEstablished"]["reason"] == "Pending"


def test_a_tunnel_of_another_node_is_never_touched(w: World) -> None:
    name = "elsewhere"
    create_tunnel(w, name)
    place(w, name, node="some-other-node", label="some-other-node")
    # two resyncs: the agent never sees it (server-side selector), so nothing appears
    passes = metric_sum(w.agent.metrics(), "routevpn_agent_reconcile_total")
    wait_until(
        lambda: metric_sum(w.agent.metrics(), "routevpn_agent_reconcile_total") >= passes + 2,
        timeout=4 * RESYNC + 10,
        interval=0.5,
        what="two passes",
    )
    obj = get(w, name)
    assert obj is not None
    assert FINALIZER not in obj["metadata"].get("finalizers", [])
    assert not conditions(obj)


def test_moving_away_tears_down_and_releases_the_finalizer(w: World) -> None:
    name = "mover"
    conn = f"routevpn.{w.tunnel_ns}.{name}"
    create_tunnel(w, name)
    deliver_secret(w, name, w.psk)
    place(w, name)
    wait_until(
        lambda: (
            FINALIZER in (get(w, name) or {})["metadata"].get("finalizers", [])
            and conn in charon_state(w.charon.vici_socket)["conns"]
        ),
        timeout=60,
        what="configured: the agent's finalizer and its connection",
    )
    place(w, name, node="another-node")  # label still ours, status.node elsewhere
    wait_until(
        lambda: FINALIZER not in (get(w, name) or {})["metadata"].get("finalizers", []),
        timeout=30,
        what="finalizer released after the move",
    )
    assert conn not in charon_state(w.charon.vici_socket)["conns"]


def test_deleting_the_tunnel_cleans_up_and_removes_the_finalizer(w: World, t1: str) -> None:
    conn = f"routevpn.{w.tunnel_ns}.{T1}"
    load_by_hand(w, ("manual-x", "198.51.100.88"))  # again: this test may run alone
    w.custom.delete_namespaced_custom_object(GROUP, VERSION, w.tunnel_ns, PLURAL, T1)
    wait_until(lambda: get(w, T1) is None, timeout=30, interval=0.3, what=f"{T1} deleted")
    state = charon_state(w.charon.vici_socket)
    assert conn not in state["conns"] and conn not in state["keys"]
    assert conn not in state["sas"]
    assert "manual-x" in state["conns"]  # still not ours to touch
    m = w.agent.metrics()
    assert not [k for k in m if f'name="{T1}"' in k], "metrics of a deleted tunnel remain"


@pytest.fixture
def w(world: World) -> World:
    """Short name for the module's world."""
    return world
