"""The chart on the lab node, where only the node's own shell can tell: traffic and ESP
counters through the seed tunnel, the kernel's SAs, charon's socket directory, the
examples' drift, a `helm upgrade` that rolls the agent without re-keying, charon's pod
deleted or kept away, and a clean node after the tunnel's deletion and `helm uninstall`.

The release is the session's (``installed``, ``seed``: tests/node/conftest.py);
what any real cluster can show through kubectl alone is in test_e2e.py, which runs
first. This module runs last: its last test uninstalls.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from routevpn.api import naming
from support import farend, release
from support import node as labnode
from support.kube import wait_until
from support.node_release import (
    AGENT_NAMESPACE,
    CHART,
    NAMESPACE,
    PODS_READY_TIMEOUT,
    RELEASE,
    ROOT,
    SEED,
    TUNNEL,
    TUNNEL_NS,
    TUNNEL_READY_TIMEOUT,
    Installed,
    Seed,
)
from support.release import FIELD_MANAGER

# One boot of the node and one install serve the session; the first test may pay for both.
pytestmark = pytest.mark.timeout(2400)

#: charon's VICI socket directory on the node (the chart's, for this release).
VICI_DIR = f"/run/routevpn/{NAMESPACE}/{RELEASE}"


def _ready(pod: dict[str, Any]) -> bool:
    return release.ready(pod)


def _tunnel(node: labnode.LabNode) -> dict[str, Any] | None:
    return release.tunnel(node.kubectl, TUNNEL_NS, TUNNEL)


def _conditions(tunnel: dict[str, Any] | None) -> dict[str, str]:
    return release.conditions(tunnel)


def test_pods_run_the_local_images(installed: Installed) -> None:
    """The archives hack/images.sh built, imported into containerd: nothing pulled."""
    want = {
        "operator": "docker.io/library/routevpn:dev",
        "agent": "docker.io/library/routevpn:dev",
        "charon": "docker.io/library/routevpn-charon:dev",
    }
    for component, image in want.items():
        pods = installed.pods(component)
        assert pods, component
        for pod in pods:
            assert pod["spec"]["nodeName"] == labnode.NODE_NAME
            seen = {s["image"] for s in pod["status"]["containerStatuses"]}
            assert seen == {image}, (component, seen)


def test_the_socket_directory_is_roots_alone(installed: Installed) -> None:
    """charon's VICI socket on the node: in the release's own directory, 0700 root's,
    the socket itself not open to others; the agent reached it through its read-only
    mount (it is Ready, which needs charon)."""
    out = installed.node.run(f"stat -c '%a %u %g %F' {VICI_DIR} {VICI_DIR}/charon.vici")
    directory, sock = out.splitlines()
    assert directory == "700 0 0 directory", out
    mode, uid, _, kind = sock.split(" ", 3)
    assert (uid, kind) == ("0", "socket"), out
    assert int(mode, 8) & 0o007 == 0, out


def _esp_counters(node: labnode.LabNode) -> tuple[int, int]:
    """(bytes, packets) summed over the node's ESP states (``ip -s xfrm state``)."""
    out = node.run("ip -s xfrm state")
    total_bytes = total_packets = 0
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "lifetime current:" and i + 1 < len(lines):
            # "  123(bytes), 4(packets)"
            parts = lines[i + 1].replace("(", " ").replace(")", " ").replace(",", " ").split()
            total_bytes += int(parts[0])
            total_packets += int(parts[2])
    return total_bytes, total_packets


def test_seed_example_carries_traffic_both_ways(installed: Installed, seed: Seed) -> None:
    node = installed.node
    before = _esp_counters(node)
    out = node.run(farend.ping_script(farend.FAR_LAN, farend.NODE_LAN, far=False), timeout=60)
    assert " 0% packet loss" in out, out
    out = node.run(farend.ping_script(farend.NODE_LAN, farend.FAR_LAN, far=True), timeout=60)
    assert " 0% packet loss" in out, out
    after = _esp_counters(node)
    # 10 echo requests and 10 replies crossed the node's SAs, each way encrypted
    assert after[1] - before[1] >= 20, (before, after)
    assert after[0] > before[0], (before, after)


def test_the_kernel_holds_the_sas_the_status_names(installed: Installed, seed: Seed) -> None:
    child = (_tunnel(installed.node) or {})["status"]["child"]
    xfrm = installed.node.run("ip xfrm state")
    for spi in (child["spiIn"], child["spiOut"]):
        assert f"spi 0x{int(spi, 16):08x}" in xfrm, (spi, xfrm)


def test_the_agent_records_the_loaded_secret_root_only(installed: Installed, seed: Seed) -> None:
    """The record of loaded secrets (docs/status.md, "Rotating a PSK or key") is on the
    node beside charon's socket, root's alone, and names the seed's connection."""
    tunnel = _tunnel(installed.node) or {}
    meta = tunnel["metadata"]
    path = f"{VICI_DIR}/agent/secrets.json"
    out = installed.node.run(f"stat -c '%a %U' {path}; cat {path}")
    mode, body = out.split("\n", 1)
    assert mode.strip() == "600 root", out
    assert list(json.loads(body)["conns"]) == [naming.conn_name(meta["namespace"], meta["name"])]


#: Every other example: each in a namespace of its own (two share a Secret's name), in
#: which no VpnTunnelPolicy grants anything (their addresses are not this node's and
#: their peers don't exist): they can't come up here. The operator refuses or can't place
#: them and writes that to their status (with whatever metadata it adds); the server-side
#: diff must still be empty. The seed, Ready, is test_e2e.py's.
OTHER_EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if p != SEED)


def _served_docs(node: labnode.LabNode, path: Path) -> tuple[str, list[str]]:
    """`path`'s objects of kinds this cluster serves (as YAML), and the kinds left out
    (cert-manager's Certificate: no cert-manager here)."""
    keep: list[dict[str, Any]] = []
    skipped: list[str] = []
    for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
        if node.kubectl("explain", doc["kind"], check=False).returncode == 0:
            keep.append(doc)
        else:
            skipped.append(doc["kind"])
    return yaml.safe_dump_all(keep), skipped


def _operator_wrote(node: labnode.LabNode, namespace: str, names: list[str]) -> bool:
    for name in names:
        res = node.kubectl("get", "vpnt", name, "-n", namespace, "-o", "json", check=False)
        if res.returncode != 0 or "Ready" not in _conditions(json.loads(res.stdout)):
            return False
    return True


@pytest.mark.parametrize("example", OTHER_EXAMPLES, ids=lambda p: p.stem)
def test_no_drift_in_the_other_examples(
    installed: Installed, seed: Seed, example: Path, tmp_path: Path
) -> None:
    node = installed.node
    text, skipped = _served_docs(node, example)
    assert set(skipped) <= {"Certificate"}, skipped
    manifest = tmp_path / example.name
    manifest.write_text(text)
    tunnels = [d["metadata"]["name"] for d in yaml.safe_load_all(text) if d["kind"] == "VpnTunnel"]
    assert tunnels, example
    namespace = f"drift-{example.stem}"
    node.kubectl("create", "namespace", namespace)
    try:
        node.kubectl(
            "apply", "--server-side", f"--field-manager={FIELD_MANAGER}",
            "-n", namespace, "-f", str(manifest),
        )  # fmt: skip
        wait_until(
            lambda: _operator_wrote(node, namespace, tunnels),
            timeout=TUNNEL_READY_TIMEOUT,
            interval=2.0,
            what=f"the operator's status on {example.name}",
        )
        res = node.kubectl(
            "diff", "--server-side", f"--field-manager={FIELD_MANAGER}",
            "-n", namespace, "-f", str(manifest), check=False,
        )  # fmt: skip
        assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr
    finally:
        # the operator lets its finalizer go: the namespace goes away whole
        node.kubectl("delete", "namespace", namespace, "--wait=true", timeout=300, check=False)
    assert node.kubectl("get", "namespace", namespace, check=False).returncode != 0


def _one_pod(installed: Installed, component: str) -> dict[str, Any] | None:
    pods = installed.pods(component)
    return pods[0] if len(pods) == 1 else None


def _wait_new_pod_and_tunnel(installed: Installed, component: str, old_pod: str) -> None:
    def replaced() -> bool:
        pod = _one_pod(installed, component)
        return pod is not None and pod["metadata"]["name"] != old_pod and _ready(pod)

    wait_until(replaced, timeout=PODS_READY_TIMEOUT, interval=1.0, what=f"new {component} Ready")
    wait_until(
        lambda: _conditions(_tunnel(installed.node)).get("Ready") == "True",
        timeout=TUNNEL_READY_TIMEOUT,
        interval=1.0,
        what="tunnel Ready again",
    )


def _restarts(pod: dict[str, Any]) -> int:
    return sum(int(c["restartCount"]) for c in pod["status"]["containerStatuses"])


# A ping through the tunnel for as long as an agent pod's replacement takes (at most
# 300 s), stopped by `_stop_ping`; its PID and output stay in the guest's /run.
_PING_RUN = "/run/routevpn-test-ping"
CONTINUOUS_PING = (
    f"ping -6 -n -i 0.2 -w 300 -I {farend.NODE_LAN} {farend.FAR_LAN} >{_PING_RUN}.out 2>&1 &\n"
    f"echo $! >{_PING_RUN}.pid\n"
    "wait $! || true\n"
    f"cat {_PING_RUN}.out\n"
)
_SEQ = re.compile(r"icmp_seq=(\d+)")


def _stop_ping(node: labnode.LabNode, handle: str) -> tuple[int, int]:
    """Stop the continuous ping (SIGINT by its PID); (replies, lost between the first
    and the last reply: the one in flight at the stop is not a loss)."""
    node.run(f'kill -INT "$(cat {_PING_RUN}.pid)"', timeout=60)
    seqs = sorted({int(m) for m in _SEQ.findall(node.result(handle, timeout=60))})
    return len(seqs), (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0


def test_helm_upgrade_rolls_the_agent_and_keeps_the_tunnel(
    installed: Installed, seed: Seed
) -> None:
    """A new agent pod template (the DaemonSet rolls its pod): charon's pod stays, the
    tunnel keeps its SPIs and a continuous ping through it loses no packet."""
    node = installed.node
    before = (_tunnel(node) or {})["status"]["child"]
    old = _one_pod(installed, "agent")
    charon = _one_pod(installed, "charon")
    assert old is not None and charon is not None
    ping = node.spawn(CONTINUOUS_PING)
    t0 = time.monotonic()
    installed.run_helm(
        "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(installed.values),
        "--set-string", "agent.podAnnotations.routevpn\\.io/test-roll=1",
    )  # fmt: skip
    _wait_new_pod_and_tunnel(installed, "agent", old["metadata"]["name"])
    node.figures["helm upgrade → new agent pod and tunnel Ready"] = time.monotonic() - t0
    time.sleep(5)  # pings through the new agent's first passes too
    replies, lost = _stop_ping(node, ping)
    print(f"helm upgrade: {replies} replies, {lost} lost")
    after = (_tunnel(node) or {})["status"]["child"]
    assert (after["spiIn"], after["spiOut"]) == (before["spiIn"], before["spiOut"]), (
        before,
        after,
    )
    assert replies > 0 and lost == 0, (replies, lost)
    # the same charon, never restarted, and the SAs in the kernel are the ones it had
    still = _one_pod(installed, "charon")
    assert still is not None
    assert still["metadata"]["uid"] == charon["metadata"]["uid"]
    assert _restarts(still) == _restarts(charon)
    xfrm = node.run("ip xfrm state")
    for spi in (before["spiIn"], before["spiOut"]):
        assert f"spi 0x{int(spi, 16):08x}" in xfrm, (spi, xfrm)


def _spis(node: labnode.LabNode) -> tuple[str, str] | None:
    child = ((_tunnel(node) or {}).get("status") or {}).get("child") or {}
    return (child["spiIn"], child["spiOut"]) if child.get("spiIn") else None


def _wait_new_charon_and_rekeyed(installed: Installed, old_pod: str, old: tuple[str, str]) -> None:
    """A new charon pod Ready, and the tunnel Ready on SAs it negotiated (new SPIs: a
    Ready left over from the old charon does not count)."""
    node = installed.node

    def replaced() -> bool:
        pod = _one_pod(installed, "charon")
        return pod is not None and pod["metadata"]["name"] != old_pod and _ready(pod)

    def rekeyed() -> bool:
        spis = _spis(node)
        ready = _conditions(_tunnel(node)).get("Ready") == "True"
        return ready and spis is not None and spis[0] != old[0] and spis[1] != old[1]

    wait_until(replaced, timeout=PODS_READY_TIMEOUT, interval=1.0, what="new charon Ready")
    wait_until(rekeyed, timeout=TUNNEL_READY_TIMEOUT, interval=1.0, what="tunnel re-keyed, Ready")


def test_deleting_the_charon_pod_is_repaired(installed: Installed, seed: Seed) -> None:
    """charon's pod deleted (its SAs go with it): the DaemonSet's new charon starts, the
    agent loads the tunnel into it, and traffic flows again."""
    node = installed.node
    old = _one_pod(installed, "charon")
    old_spis = _spis(node)
    assert old is not None and old_spis is not None
    t0 = time.monotonic()
    node.kubectl("delete", "pod", "-n", AGENT_NAMESPACE, old["metadata"]["name"], "--wait=false")
    _wait_new_charon_and_rekeyed(installed, old["metadata"]["name"], old_spis)
    node.figures["charon pod deleted → tunnel Ready on new SAs"] = time.monotonic() - t0
    out = node.run(farend.ping_script(farend.FAR_LAN, farend.NODE_LAN, far=False), timeout=60)
    assert " 0% packet loss" in out, out
    new_spis = _spis(node)
    assert new_spis is not None
    xfrm = node.run("ip xfrm state")
    for spi in new_spis:
        assert f"spi 0x{int(spi, 16):08x}" in xfrm, (spi, xfrm)
    agent = _one_pod(installed, "agent")
    assert agent is not None and _ready(agent)


#: The agent's /readyz as kubelet asks it (the node's address, the chart's port), body
#: and all; python3 is the host's, seen by the guest.
READYZ = f"""python3 - <<'EOF'
import urllib.error, urllib.request
try:
    url = "http://{labnode.NODE_IP}:9478/readyz"
    print(urllib.request.urlopen(url, timeout=10).read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
EOF"""


def test_the_agent_reports_a_missing_charon(installed: Installed, seed: Seed) -> None:
    """charon kept off the node for a while (its DaemonSet's nodeSelector matches no
    node): the agent stays live (no restart: restarting it would not bring charon back)
    but is not Ready, and its /readyz says why; charon back, so is the tunnel."""
    node = installed.node
    label = "routevpn.io/test-nowhere"
    old = _one_pod(installed, "charon")
    agent = _one_pod(installed, "agent")
    old_spis = _spis(node)
    assert old is not None and agent is not None and old_spis is not None
    (owner,) = old["metadata"]["ownerReferences"]
    assert owner["kind"] == "DaemonSet"
    ds = owner["name"]
    away = {"spec": {"template": {"spec": {"nodeSelector": {label: "true"}}}}}
    back = [
        {"op": "remove", "path": f"/spec/template/spec/nodeSelector/{label.replace('/', '~1')}"}
    ]
    node.kubectl("patch", "ds", ds, "-n", AGENT_NAMESPACE, "--type=merge", "-p", json.dumps(away))
    try:
        wait_until(lambda: not installed.pods("charon"), timeout=300, what="no charon")

        def agent_not_ready() -> dict[str, Any] | None:
            pod = _one_pod(installed, "agent")
            return pod if pod is not None and not _ready(pod) else None

        # a resync (30 s) finds charon gone; three failed probes (10 s apart) follow
        unready = wait_until(agent_not_ready, timeout=240, interval=2.0, what="agent not Ready")
        assert node.run(READYZ).strip() == "503 not ready: charon unreachable"
        assert unready["metadata"]["uid"] == agent["metadata"]["uid"]
        assert _restarts(unready) == _restarts(agent)
    finally:
        node.kubectl(
            "patch", "ds", ds, "-n", AGENT_NAMESPACE, "--type=json", "-p", json.dumps(back)
        )
    _wait_new_charon_and_rekeyed(installed, old["metadata"]["name"], old_spis)
    wait_until(lambda: _ready(_one_pod(installed, "agent") or {}), timeout=120, what="agent Ready")


NODE_STATE = """
echo "links: $(ip -o link show 2>/dev/null | grep -c -e routevpn -e ' vti1')"
echo "addresses: $(ip -o addr show | grep -c 2001:db8:100::)"
echo "routes: $(ip -6 route show proto 157 | wc -l)"
echo "default-into-vti1: $(ip -6 route show default dev vti1 2>/dev/null | wc -l)"
echo "xfrm-states: $(ip xfrm state | grep -c '^src')"
echo "xfrm-policies: $(ip xfrm policy | grep -c -e 'mark' -e '^src 2001:db8')"
"""


def test_deleting_the_tunnel_then_uninstalling_leaves_the_node_clean(
    installed: Installed, seed: Seed
) -> None:
    node = installed.node
    node.kubectl("delete", "-n", TUNNEL_NS, "-f", str(SEED), "--wait=true", timeout=300)
    node.run(farend.teardown_script())
    clean = (
        "".join(
            f"{what}: 0\n"
            for what in ("links", "addresses", "routes", "default-into-vti1", "xfrm-states")
        )
        + "xfrm-policies: 0\n"
    )
    wait_until(lambda: node.run(NODE_STATE) == clean, timeout=120, interval=2.0, what="node clean")
    # charon (still running) holds no routevpn connection
    conns = node.run(f"swanctl --list-conns --uri unix://{VICI_DIR}/charon.vici")
    assert "routevpn" not in conns, conns
    installed.run_helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "12m")
    wait_until(
        lambda: not installed.pods("agent") and not installed.pods("charon"),
        timeout=300,
        what="agent and charon pods gone",
    )
    assert node.run(NODE_STATE) == clean
