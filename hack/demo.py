"""The demo: a VpnTunnel applied, up and carrying traffic, on real parts. Run hack/demo.sh.

On this machine (the host):
  * a real control plane (etcd + kube-apiserver + controller-manager, hack/local-cluster.sh)
    on loopback, the VpnTunnel CRD, and a Node `node-a` (there is no kubelet);
  * the operator (`routevpn operator`), as a process;
  * you, applying examples/seed-ipv6-vti.yaml with kubectl, watching `kubectl get vpnt`.
In the lab (a QEMU guest booting Debian's kernel, which has VTI and ESP):
  * site "left" = node-a: a network namespace with its own charon and `routevpn agent`;
  * site "right" = the far end, configured by hand (ip + swanctl.conf), as a firewall
    would be; the two joined by a veth, IPv6 outer addresses 2001:db8:0:1::1 and ::2::1.
The guest reaches the host's apiserver through QEMU user networking (192.0.2.100 in
the guest, nothing else leaves it). Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import farend, lab, labspec  # noqa: E402
from support import node as labnode  # noqa: E402
from support import swanctl as sw  # noqa: E402
from support.cluster import ControlPlane, Kubectl, bin_dir, free_port  # noqa: E402
from support.kube import api_client, apply_crd, create_node  # noqa: E402
from support.nsrelay import forward_into, http_get_in  # noqa: E402
from support.operator import Operator  # noqa: E402
from support.sites import LEFT, RIGHT, Site, two_sites  # noqa: E402

EXAMPLE = REPO / "examples" / "seed-ipv6-vti.yaml"
SEED_POLICY = REPO / "examples" / "tenancy" / "seed-policy.yaml"
NODE = "node-a"
SYSTEM_NS = "routevpn-system"
TUNNEL = "site-b"
AGENT_PORT = 19478
FAR_END_KEY = 42  # the far end's own VTI key: marks are local to each end
LOG = "demo.log"
DONE_PINGING = "==> pings done"


def say(text: str) -> None:
    """One line for the person watching."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def example_psk() -> str:
    """The PSK of the example's Secret: the far end is configured with the same key."""
    for doc in yaml.safe_load_all(EXAMPLE.read_text()):
        if doc and doc.get("kind") == "Secret":
            return str(doc["stringData"]["psk"])
    raise SystemExit(f"{EXAMPLE.name} holds no Secret")


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 1.0) -> None:
    """Poll `check` until it is true; exit with a message at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- the guest's part ---------------------------------------------------------------------


def far_end_by_hand(right: Site, psk: str) -> None:
    """The far end as a firewall admin would set it up: a VTI6 and a swanctl.conf."""
    right.vti("vti1", RIGHT.outer6, LEFT.outer6, FAR_END_KEY)
    right.address("vti1", "2001:db8:100::1/127")
    right.route(LEFT.net6, via="2001:db8:100::", dev="vti1")
    conn = sw.Conn(
        "to-node-a", RIGHT.outer6, LEFT.outer6, RIGHT.outer6, LEFT.outer6, psk,
        [sw.Child("to-node-a", esp_proposals="aes256gcm16-ecp384", mark=FAR_END_KEY)],
        proposals="aes256gcm16-prfsha384-ecp384",
    )  # fmt: skip
    sw.write_and_load(right.ns, right.uri, right.workdir / "swanctl.conf", [conn])


def tunnel_conditions(kubectl: Kubectl) -> dict[str, str]:
    res = kubectl("get", "vpnt", TUNNEL, "-n", "default", "-o", "json", check=False)
    if res.returncode != 0:
        return {}
    conds = (json.loads(res.stdout).get("status") or {}).get("conditions") or []
    return {c["type"]: c["status"] for c in conds}


def guest(scratch: Path) -> int:
    """Inside the lab: node-a (agent + charon) and the hand-configured far end."""
    log = (scratch / LOG).open("a", buffering=1)

    def note(text: str) -> None:
        log.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")

    bins = bin_dir()
    assert bins is not None
    kubeconfig = scratch / "guest.kubeconfig"
    kubectl = Kubectl(bins / "kubectl", kubeconfig)
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    api_host, api_port = server.removeprefix("https://").rsplit(":", 1)
    inner = free_port()
    agent_conf = yaml.safe_load(kubeconfig.read_text())
    agent_conf["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{inner}"
    work = Path(tempfile.mkdtemp(prefix="demo-"))
    agent_kc = work / "agent.kubeconfig"
    agent_kc.write_text(yaml.safe_dump(agent_conf))
    agent_kc.chmod(0o600)

    with two_sites(work / "sites") as (left, right):
        note("guest: sites up: node-a (left) and the far end (right), joined by a veth")
        far_end_by_hand(right, example_psk())
        note("guest: far end configured by hand: vti1 (vti6), 2001:db8:100::1/127, swanctl.conf")
        assert left.charon is not None
        agent_log = work / "agent.log"
        argv = [
            sys.executable, "-m", "routevpn", "agent", "--node", NODE,
            "--namespace", SYSTEM_NS, "--vici-socket", str(left.charon.vici_socket),
            "--http-port", str(AGENT_PORT), "--bind-address", "127.0.0.1",
            "--kubeconfig", str(agent_kc),
        ]  # fmt: skip
        with forward_into(left.ns, inner, (api_host, int(api_port))):
            with agent_log.open("ab") as out:
                agent = subprocess.Popen(left.ns.argv(*argv), stdout=out, stderr=out)
            try:
                wait_for(
                    "the agent to be ready",
                    lambda: http_get_in(left.ns, AGENT_PORT, "/readyz")[0] == 200,
                    timeout=180,
                )
                note(f"guest: routevpn agent for {NODE} ready (pid {agent.pid})")
                wait_for(
                    "the tunnel to be Ready",
                    lambda: tunnel_conditions(kubectl).get("Ready") == "True",
                    timeout=300,
                )
                note("guest: the tunnel is Ready; what the agent made on node-a:")
                for line in left.ns.ip("-d", "link", "show", "vti1").splitlines()[:3]:
                    note(f"    {line.strip()}")
                note("    " + left.ns.ip("-6", "route", "show", "default").strip())
                sas = sw.list_sas(left.ns, left.uri)
                for line in sas.splitlines()[:6]:
                    note(f"    {line.rstrip()}")
                note(f"guest: ping {RIGHT.host6} (behind the far end) from {LEFT.host6}:")
                for line in left.ping(RIGHT.host6, src=LEFT.host6, count=5).splitlines()[-3:]:
                    note(f"    {line}")
                note(f"guest: and back, ping {LEFT.host6} from the far end's {RIGHT.host6}:")
                for line in right.ping(LEFT.host6, src=RIGHT.host6, count=5).splitlines()[-3:]:
                    note(f"    {line}")
                xfrm = left.ns.ip("-s", "xfrm", "state")
                esp = [ln.strip() for ln in xfrm.splitlines() if "bytes" in ln and "packets" in ln]
                note(f"guest: ESP counters on node-a: {'; '.join(esp[:2])}")
                note(DONE_PINGING)
                wait_for(
                    "the tunnel to be deleted and vti1 removed",
                    lambda: "vti1" not in left.ns.ip("-o", "link", "show"),
                    timeout=300,
                )
                note("guest: tunnel deleted: vti1, its routes and the connection are gone")
            except (SystemExit, AssertionError) as e:
                note(f"guest: FAILED: {e}")
                note("guest: agent log tail:\n" + agent_log.read_text()[-3000:])
                return 1
            finally:
                agent.terminate()
                try:
                    agent.wait(20)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait(10)
    return 0


# --- the host's part ------------------------------------------------------------------------


class Watch:
    """Prints `kubectl get vpnt` whenever it changes, and the guest's log as it grows."""

    def __init__(self, kubectl: Kubectl, guest_log: Path) -> None:
        self.kubectl = kubectl
        self.guest_log = guest_log
        self.last_table = ""
        self.offset = 0

    def poll(self) -> str:
        res = self.kubectl("get", "vpnt", "-n", "default", check=False)
        table = res.stdout.strip()
        # Print when something other than the AGE column changed.
        key = "\n".join(line.rsplit(None, 1)[0] for line in table.splitlines() if line.split())
        if table and key != self.last_table:
            say("$ kubectl get vpnt")
            print("    " + table.replace("\n", "\n    "), flush=True)
            self.last_table = key
        text = ""
        if self.guest_log.exists():
            data = self.guest_log.read_text()
            text, self.offset = data[self.offset :], len(data)
            for line in text.splitlines():
                print(f"  (lab) {line}", flush=True)
        return text


def host(timeout: float) -> int:
    if bin_dir() is None:
        raise SystemExit("demo: the control plane is not built; run bash hack/setup.sh")
    state = Path(tempfile.mkdtemp(prefix="routevpn-demo-"))
    scratch = state / "scratch"
    scratch.mkdir()
    cp = ControlPlane.ephemeral(state / "cluster")
    operator: Operator | None = None
    say("starting a real control plane on loopback (etcd, kube-apiserver, controller-manager)")
    kubeconfig = cp.up()
    try:
        bins = bin_dir()
        assert bins is not None
        kubectl = Kubectl(bins / "kubectl", kubeconfig)
        crd = subprocess.run(
            [sys.executable, "-m", "routevpn", "crd", "all"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        apply_crd(kubectl, crd)
        kubectl("create", "namespace", SYSTEM_NS)
        api = api_client(kubeconfig)
        create_node(api, NODE, addresses=(LEFT.outer6,))
        say(f"control plane up; CRD applied; Node {NODE} registered")
        operator = Operator(kubeconfig, SYSTEM_NS, state / "operator.log", not_ready_grace=600)
        wait_for("the operator", operator.healthy, timeout=120)
        say(f"routevpn operator running (pid {operator.pid})")

        guest_kc = cp.kubeconfig(server=f"https://192.0.2.100:{cp.api_port}")
        (scratch / "guest.kubeconfig").write_text(guest_kc.read_text())
        say(f"$ kubectl apply -f examples/{EXAMPLE.name}")
        print("    " + kubectl("apply", "-n", "default", "-f", str(EXAMPLE)).stdout.strip())

        assert cp.api_port is not None
        result: list[lab.GuestResult] = []
        net = labspec.UserNet(forward_ports=(cp.api_port,))
        say("booting the lab (QEMU, Debian kernel with VTI and ESP) for node-a and the far end")
        runner = threading.Thread(
            target=lambda: result.append(
                lab.run_in_guest(
                    [sys.executable, str(Path(__file__).resolve()), "--guest"],
                    timeout=timeout,
                    net=net,
                    scratch=scratch,
                )
            ),
            daemon=True,
        )
        runner.start()
        watch = Watch(kubectl, scratch / LOG)
        deleted = False
        while runner.is_alive():
            text = watch.poll()
            if DONE_PINGING in text and not deleted:
                say(f"$ kubectl delete vpnt {TUNNEL}")
                kubectl("delete", "vpnt", TUNNEL, "-n", "default", "--wait=false")
                deleted = True
            time.sleep(1)
        watch.poll()
        if deleted:
            gone = kubectl("wait", "--for=delete", f"vpnt/{TUNNEL}", "-n", "default",
                           "--timeout=60s", check=False)  # fmt: skip
            say("the VpnTunnel object is gone (both finalizers released)" if gone.returncode == 0
                else f"the VpnTunnel object is still there: {gone.stderr.strip()}")  # fmt: skip
        if not result:
            raise SystemExit("demo: the lab did not run")
        res = result[0]
        say(f"lab finished: exit {res.returncode}, {res.accel}, {res.wall_seconds:.0f}s")
        if not res.ok:
            print(res.output[-4000:])
            if operator is not None:
                print("--- operator log ---\n" + operator.log_tail(40))
            return 1
        say("demo done: the tunnel came up, carried IPv6 both ways, and was removed cleanly")
        return 0
    finally:
        if operator is not None:
            operator.stop()
        cp.down(purge=True)
        say("control plane stopped; everything the demo started is gone")


# --- the same story through the chart: --helm ------------------------------------------


def helm_demo() -> int:
    """node-a is a real node (kubelet + containerd in the lab guest); routevpn is installed
    with `helm install` from the locally built images; the rest is the same story."""
    why = labnode.unavailable()
    helm_bin = labnode.helm_binary()
    if why is not None or helm_bin is None:
        raise SystemExit(f"demo: missing {why or 'helm'}; run bash hack/setup.sh")
    state = Path(tempfile.mkdtemp(prefix="routevpn-demo-helm-"))
    say("starting a control plane on loopback and booting node-a: kubelet + containerd in the")
    say("lab guest (QEMU, Debian's kernel), the images imported from hack/images.sh's archives")
    node = labnode.LabNode.start(state)
    values = state / "values.yaml"
    values.write_text(yaml.safe_dump(labnode.CHART_VALUES))

    def helm(*args: str) -> None:
        shown = " ".join(a if not a.startswith("/") else Path(a).name for a in args)
        say(f"$ helm {shown}")
        res = subprocess.run([str(helm_bin), "--kubeconfig", str(node.kubeconfig), *args],
                             capture_output=True, text=True, check=False, timeout=600)  # fmt: skip
        print("    " + (res.stdout.strip() or res.stderr.strip()).replace("\n", "\n    "))
        if res.returncode != 0:
            raise SystemExit(f"demo: helm {args[0]} failed")

    try:
        node.wait_ready()
        say(f"node {NODE} Ready after {node.boot_to_ready:.0f}s:")
        print(
            "    "
            + node.kubectl("get", "nodes", "-o", "wide").stdout.strip().replace("\n", "\n    ")
        )
        node.kubectl("create", "namespace", SYSTEM_NS)
        t0 = time.monotonic()
        helm("install", "routevpn", str(labnode.CHART), "--namespace", SYSTEM_NS,
             "-f", str(values), "--wait", "--timeout", "10m")  # fmt: skip
        say(f"chart installed, pods Ready after {time.monotonic() - t0:.0f}s:")
        print("    " + node.kubectl("get", "pods", "-A", "-o", "wide").stdout.strip()
              .replace("\n", "\n    "))  # fmt: skip
        node.run(farend.setup_script(example_psk()))
        say(
            "far end configured by hand in the guest: vti1 (vti6), 2001:db8:100::1/127, "
            "a plain swanctl.conf"
        )
        say("$ kubectl apply -f examples/tenancy/seed-policy.yaml   # the cluster admin's grant")
        print("    " + node.kubectl("apply", "-f", str(SEED_POLICY)).stdout.strip())
        say(f"$ kubectl apply -f examples/{EXAMPLE.name}")
        print("    " + node.kubectl("apply", "-n", "default", "-f", str(EXAMPLE)).stdout.strip())
        watch = Watch(node.kubectl, state / "no-guest-log")
        wait_for("the tunnel to be Ready",
                 lambda: bool(watch.poll() is not None
                              and tunnel_conditions(node.kubectl).get("Ready") == "True"),
                 timeout=300)  # fmt: skip
        watch.poll()
        say(f"tunnel Ready {time.monotonic() - t0:.0f}s after helm install")
        for dst, src, far in ((farend.FAR_LAN, farend.NODE_LAN, False),
                              (farend.NODE_LAN, farend.FAR_LAN, True)):  # fmt: skip
            say(f"ping {dst} from {src}" + (" (the far end)" if far else " (node-a)"))
            out = node.run(farend.ping_script(dst, src, far=far), timeout=60)
            print("    " + "\n    ".join(out.strip().splitlines()[-2:]))
        xfrm = node.run("ip -s xfrm state")
        esp = [ln.strip() for ln in xfrm.splitlines() if "bytes" in ln and "packets" in ln]
        say(f"ESP counters on node-a: {'; '.join(esp[:2])}")
        say(f"$ kubectl delete vpnt {TUNNEL}")
        node.kubectl("delete", "vpnt", TUNNEL, "-n", "default", "--timeout=120s")
        node.run(farend.teardown_script(), check=False)
        helm("uninstall", "routevpn", "--namespace", SYSTEM_NS, "--wait")
        left = node.run("ip -o link show | grep -c -e routevpn -e ' vti1' || true").strip()
        say(f"routevpn links left on node-a: {left}; xfrm states: "
            f"{node.run('ip xfrm state | grep -c ^src || true').strip()}")  # fmt: skip
        say("demo done: the chart ran on a real node, the tunnel carried IPv6 both ways, and "
            "everything was removed")  # fmt: skip
        return 0
    except (SystemExit, RuntimeError, TimeoutError) as e:
        print(f"demo: FAILED: {e}\n{node.diagnostics(20)}")
        return 1
    finally:
        node.stop()
        say("node and control plane stopped; everything the demo started is gone")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--helm", action="store_true", help="the same story through the chart, "
                        "on a real kubelet + containerd node in the lab")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=900, help="lab deadline, seconds")
    args = parser.parse_args()
    if args.guest:
        return guest(Path(os.environ[labspec.SCRATCH_ENV]))
    if args.helm:
        return helm_demo()
    return host(args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
