"""A real Kubernetes node in the lab: kubelet + containerd in a QEMU guest.

``LabNode.start(state_dir)`` starts a control plane on the host (``hack/local-cluster.sh``,
free loopback ports) and boots ONE lab guest with more memory than the default, which runs
``hack/node.sh guest``: cgroup v2, containerd with the project's image archives imported,
CNI bridge networking on a TEST-NET range, and a kubelet that registers with the host's
API server through the lab's user-network forward (guest ``192.0.2.100:PORT`` → host
``127.0.0.1:PORT``). ``wait_ready()`` polls the Node object; ``stop()`` asks the guest to
stop its node, powers it off (killed by PID at a deadline) and stops the control plane.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import images, lab, labspec
from .cluster import ControlPlane, Kubectl, bin_dir, free_port
from .kube import wait_until

REPO = Path(__file__).resolve().parents[2]
NODE_SCRIPT = REPO / "hack" / "node.sh"
NODE_NAME = "node-a"  # the seed example's nodeName
# Addresses (TEST-NET only): the guest's own address on the user network, the range its
# pods get from the CNI bridge, and the API server's ClusterIP (local-cluster.sh's).
NODE_IP = labspec.UserNet().guest
POD_CIDR = "203.0.113.128/25"
SERVICE_IP = "198.51.100.1"
# kubelet, containerd, two operator pods, an agent and charon, and their images unpacked
# on tmpfs: the lab's default 1 GiB is far too little.
MEMORY_MB = int(os.environ.get("ROUTEVPN_NODE_MEMORY_MB", "4096"))
# The guest lives for the whole tier; this deadline only stops a hung one.
GUEST_DEADLINE = float(os.environ.get("ROUTEVPN_NODE_TIMEOUT", "2700"))
READY_TIMEOUT = 600.0
# The chart's values on this node: only where the images come from (the archives
# imported into containerd; nothing can be pulled here), and the agent in a namespace of
# its own as docs/install.md recommends.
CHART = REPO / "charts" / "routevpn"
CHART_VALUES: dict[str, Any] = {
    "image": {"repository": "routevpn", "tag": "dev", "pullPolicy": "Never"},
    "charon": {"image": {"repository": "routevpn-charon", "tag": "dev", "pullPolicy": "Never"}},
    "agent": {"namespace": "routevpn-agent"},
    # Emulated CPUs: the uninstall hook's Python start alone can take minutes here.
    "uninstallHook": {"deadlineSeconds": 600},
}


def helm_binary() -> Path | None:
    """The pinned helm (hack/tools.sh), or None when not built."""
    res = subprocess.run(
        ["bash", str(REPO / "hack" / "tools.sh"), "path", "helm"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    path = Path(res.stdout.strip())
    return path if res.returncode == 0 and path.exists() else None


def node_bin_dir() -> Path | None:
    """The node binaries' directory, or None when not built."""
    res = subprocess.run(
        ["bash", str(NODE_SCRIPT), "bindir"], capture_output=True, text=True, check=False
    )
    return Path(res.stdout.strip()) if res.returncode == 0 else None


def unavailable() -> str | None:
    """What is missing for a lab node here, or None."""
    if os.geteuid() != 0:
        return "root (the lab node)"
    if bin_dir() is None:
        return "the control plane binaries (hack/local-cluster.sh build)"
    if node_bin_dir() is None:
        return "the node binaries (hack/node.sh build)"
    why = images.unavailable()
    if why is not None:
        return why
    try:
        lab.check_parts(lab.kernel_version())
    except lab.LabUnavailableError as e:
        return str(e)
    return None


class GuestLockupError(RuntimeError):
    """The guest's kernel locked up (a fresh boot is the only way on)."""


@dataclass
class LabNode:
    """The control plane on the host and the node in the guest, for one test session."""

    state: Path
    control_plane: ControlPlane
    kubeconfig: Path
    kubectl: Kubectl
    guest: lab.RunningGuest | None = None
    scheduler: subprocess.Popen[bytes] | None = None
    boot_to_ready: float | None = None
    started: float = field(default_factory=time.monotonic)
    _runs: int = 0
    boots: int = 1  # set by the caller that retried after a guest lockup
    figures: dict[str, float] = field(default_factory=dict)  # for the tier's summary

    @classmethod
    def start(cls, state: Path) -> LabNode:
        """Start the control plane and boot the guest (returns before the node is Ready)."""
        cp = ControlPlane.ephemeral(state / "control-plane")
        kubeconfig = cp.up()
        binaries = bin_dir()
        assert binaries is not None
        node = cls(state, cp, kubeconfig, Kubectl(binaries / "kubectl", kubeconfig))
        try:
            node._start_scheduler()
            node._boot()
        except BaseException:
            node.stop()
            raise
        return node

    @property
    def scratch(self) -> Path:
        """The directory shared writable with the guest (logs, kubeconfig, stop file)."""
        return self.state / "guest"

    @property
    def logs(self) -> Path:
        """containerd's and the kubelet's logs, written by the guest."""
        return self.scratch / "node-logs"

    def _start_scheduler(self) -> None:
        """hack/local-cluster.sh runs no scheduler (no pod runs there); a node needs one.
        Started from the node's binaries, stopped by its PID in `stop()`."""
        bins = node_bin_dir()
        assert bins is not None
        kc = str(self.kubeconfig)
        with (self.state / "kube-scheduler.log").open("ab") as log:
            self.scheduler = subprocess.Popen(
                [
                    str(bins / "kube-scheduler"),
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--leader-elect=false",
                    "--v=1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def _boot(self) -> None:
        scratch = self.scratch
        scratch.mkdir(parents=True)
        assert self.control_plane.api_port is not None
        port = self.control_plane.api_port
        net = labspec.UserNet(forward_ports=(port,))
        guest_kubeconfig = self.control_plane.kubeconfig(server=f"https://{net.service}:{port}")
        (scratch / "kubelet.kubeconfig").write_text(guest_kubeconfig.read_text())
        archives = scratch / "images"
        archives.mkdir()
        for name in images.NAMES:
            path = images.archive(name)
            assert path is not None
            # A copy, not a link: the cache is shared, and a build of other inputs (another
            # worktree) supersedes, i.e. deletes, this archive while the guest imports it.
            shutil.copyfile(path, archives / f"{name}.oci.tar")
        g = labspec.GUEST_SCRATCH
        command = [
            "bash",
            str(NODE_SCRIPT),
            "guest",
            "--kubeconfig",
            f"{g}/kubelet.kubeconfig",
            "--api",
            f"{net.service}:{port}",
            "--node-name",
            NODE_NAME,
            "--node-ip",
            NODE_IP,
            "--pod-cidr",
            POD_CIDR,
            "--service-ip",
            SERVICE_IP,
            "--images",
            f"{g}/images",
            "--logs",
            f"{g}/node-logs",
            "--stop-file",
            f"{g}/stop",
        ]
        cache = os.environ.get("ROUTEVPN_CACHE") or str(lab.cache_dir().parent)
        self.started = time.monotonic()
        self.guest = lab.start_guest(
            command,
            scratch=scratch,
            net=net,
            memory_mb=MEMORY_MB,
            env={"ROUTEVPN_CACHE": cache},
        )

    def node(self) -> dict[str, Any] | None:
        """The Node object, or None while it is not registered."""
        res = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Poll until the Node is Ready (failing early, with the guest's logs, if the guest
        dies); records boot → Ready seconds."""

        def ready() -> dict[str, Any] | None:
            if self.guest is None or not self.guest.alive():
                raise RuntimeError(f"the node's guest stopped before Ready:\n{self.diagnostics()}")
            if self.locked_up():
                raise GuestLockupError(f"the node's guest kernel locked up:\n{self.diagnostics()}")
            node = self.node()
            conds = (node or {}).get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return node
            return None

        try:
            node = wait_until(ready, timeout=timeout, interval=1.0, what=f"node {NODE_NAME} Ready")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.diagnostics()}") from e
        self.boot_to_ready = time.monotonic() - self.started
        return node

    def spawn(self, script: str) -> str:
        """Start a shell script as root in the node's guest (its root network namespace is
        the node's host network); return a handle for `result`."""
        cmds = self.scratch / "commands"
        cmds.mkdir(exist_ok=True)
        self._runs += 1
        name = f"{self._runs:04d}"
        (cmds / f"{name}.part").write_text("set -e\n" + script)
        # renamed into place whole: the guest picks up only complete *.sh files
        (cmds / f"{name}.part").rename(cmds / f"{name}.sh")
        return name

    def result(self, name: str, *, timeout: float = 120.0, check: bool = True) -> str:
        """Wait for a started script; its output. With `check`, a non-zero exit raises."""
        cmds = self.scratch / "commands"
        rc_file = cmds / f"{name}.rc"

        def done() -> bool:
            if self.guest is None or not self.guest.alive():
                raise RuntimeError(f"the node's guest stopped:\n{self.diagnostics()}")
            return rc_file.exists()

        wait_until(done, timeout=timeout, interval=0.2, what=f"guest command {name}")
        out = (cmds / f"{name}.out").read_text(errors="replace")
        rc = int(rc_file.read_text().strip())
        if check and rc != 0:
            script = (cmds / f"{name}.sh").read_text()
            raise RuntimeError(
                f"guest command {name} exited {rc}:\n{script}\n--- output ---\n{out}"
            )
        return out

    def run(self, script: str, *, timeout: float = 120.0, check: bool = True) -> str:
        """`spawn` then `result`."""
        return self.result(self.spawn(script), timeout=timeout, check=check)

    def locked_up(self) -> bool:
        """True when the guest kernel reports a soft lockup (seen under TCG on a loaded
        host, with both vCPUs stuck in the kubelet at its start): that guest won't recover."""
        console = self.scratch / "console.log"
        return console.exists() and "soft lockup" in console.read_text(errors="replace")

    def diagnostics(self, lines: int = 40) -> str:
        """The tails of the guest's output, the node's logs and the console."""
        out = []
        for name in (
            "output",
            "node-logs/times",
            "node-logs/kubelet.log",
            "node-logs/containerd.log",
        ):
            path = self.scratch / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out += [f"----- {name} -----", *tail]
        console = self.scratch / "console.log"
        if console.exists():
            out += ["----- console -----", *console.read_text(errors="replace").splitlines()[-15:]]
        return "\n".join(out)

    def stop(self) -> lab.GuestResult | None:
        """Stop the node (the guest's script stops kubelet and containerd), power the guest
        off, stop the control plane. Safe to call twice."""
        result = None
        if self.guest is not None:
            with contextlib.suppress(OSError):
                (self.scratch / "stop").touch()
            result = self.guest.finish(120.0)
            self.guest = None
        if self.scheduler is not None:
            self.scheduler.terminate()
            try:
                self.scheduler.wait(20)
            except subprocess.TimeoutExpired:
                self.scheduler.kill()
                self.scheduler.wait(10)
            self.scheduler = None
        self.control_plane.down(purge=True)
        return result
