"""Drive the local control plane (``hack/local-cluster.sh``) from Python.

The shell script owns every detail of the control plane (versions, flags, certificates,
PIDs); this module only chooses where it lives (state dir, ports) and runs it, so a
developer's ``hack/local-cluster.sh up`` and the test fixture start the very same thing.

``ControlPlane(state_dir, api_port=…, etcd_port=…, kcm_port=…)``
    ``.up() -> Path`` (kubeconfig)  ``.down(purge=…)``  ``.healthy() -> bool``
    ``.kubeconfig(server=None) -> Path`` (a copy whose server URL is replaced)
``ControlPlane.developer()``   the one ``hack/local-cluster.sh up`` starts by default
``ControlPlane.ephemeral(state_dir)``  free ports, for a test session of its own
``bin_dir() -> Path | None``   the built binaries, or None when not built
``Kubectl(binary, kubeconfig)``   ``kubectl(*args, input=…, check=…)`` with OUR kubectl
``ClusterAccess``              what the ``cluster`` fixture gives (tests/cluster/conftest.py)
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "local-cluster.sh"

# A cold `up` (etcd, apiserver bootstrap, controller-manager) takes ~10-20 s on 2
# shared cores; the script has its own per-component deadlines inside this one.
UP_TIMEOUT = 240.0


def _run_script(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = UP_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def bin_dir() -> Path | None:
    """The directory of the built etcd/kube-apiserver/kubectl, or None if not built."""
    res = _run_script("bindir", timeout=60)
    return Path(res.stdout.strip()) if res.returncode == 0 else None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(pair: bool = False) -> int:
    """A free loopback TCP port (with ``pair``, one whose successor is free too).

    The kernel picks it, so it never collides with a developer's fixed ports; it is
    checked again by the script, which refuses a taken port with a clear message.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port < 65535 and (not pair or _port_free(port + 1)):
            return port
    raise RuntimeError("no free loopback port pair found")


class ControlPlaneError(RuntimeError):
    """``hack/local-cluster.sh`` failed; the message carries its output."""


@dataclass
class ControlPlane:
    """One control plane: its state directory and loopback ports."""

    state_dir: Path | None = None
    api_port: int | None = None
    etcd_port: int | None = None
    kcm_port: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def developer(cls) -> ControlPlane:
        """The script's defaults: what a developer's ``hack/local-cluster.sh up`` runs."""
        return cls()

    @classmethod
    def ephemeral(cls, state_dir: Path) -> ControlPlane:
        """A control plane of its own in ``state_dir`` on free ports."""
        return cls(
            state_dir=state_dir,
            api_port=free_port(),
            etcd_port=free_port(pair=True),
            kcm_port=free_port(),
        )

    def env(self) -> dict[str, str]:
        """The environment that points the script at this control plane."""
        env = dict(self.extra_env)
        for key, value in (
            ("ROUTEVPN_CLUSTER_DIR", self.state_dir),
            ("ROUTEVPN_APISERVER_PORT", self.api_port),
            ("ROUTEVPN_ETCD_PORT", self.etcd_port),
            ("ROUTEVPN_KCM_PORT", self.kcm_port),
        ):
            if value is not None:
                env[key] = str(value)
            else:
                # A developer's shell may have set it; the defaults must mean defaults.
                env[key] = os.environ.get(key, "")
                if not env[key]:
                    del env[key]
        return env

    def _script(self, *args: str, timeout: float = UP_TIMEOUT) -> str:
        res = _run_script(*args, env=self.env(), timeout=timeout)
        if res.returncode != 0:
            raise ControlPlaneError(
                f"hack/local-cluster.sh {' '.join(args)} failed ({res.returncode}):\n"
                f"{res.stderr.strip()}\n{res.stdout.strip()}"
            )
        return res.stdout

    def up(self) -> Path:
        """Start (or find running) and return the admin kubeconfig. A longer apiserver
        wait given to the script (ROUTEVPN_APISERVER_WAIT) lengthens this one too."""
        wait = float(self.extra_env.get("ROUTEVPN_APISERVER_WAIT", "0"))
        out = self._script("up", timeout=max(UP_TIMEOUT, wait + 120))
        return Path(out.strip().splitlines()[-1])

    def down(self, purge: bool = False) -> None:
        """Stop the processes this control plane's ``up`` started (by PID)."""
        self._script("down", *(["--purge"] if purge else []), timeout=120)

    def healthy(self) -> bool:
        """True when all components run and the apiserver answers /readyz."""
        return _run_script("status", env=self.env(), timeout=60).returncode == 0

    def kubeconfig(self, server: str | None = None) -> Path:
        """The admin kubeconfig; with ``server``, a copy using that URL instead."""
        args = ["--server", server] if server else []
        out = self._script("env", *args, timeout=60)
        for line in out.splitlines():
            if line.startswith("export KUBECONFIG="):
                return Path(line.split("=", 1)[1].strip("'\""))
        raise ControlPlaneError(f"no KUBECONFIG in `env` output:\n{out}")


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike its base class, the message shows kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}"


@dataclass(frozen=True)
class Kubectl:
    """Runs OUR kubectl (the pinned build) against one kubeconfig, never the PATH's."""

    binary: Path
    kubeconfig: Path

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl ARGS``; with ``check``, raise (showing stderr) on failure."""
        res = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise KubectlError(res.returncode, res.args, output=res.stdout, stderr=res.stderr)
        return res


@dataclass
class ClusterAccess:
    """How the ``cluster`` tier reaches its cluster, and where that came from."""

    kubeconfig: Path
    kubectl: Kubectl
    source: str  # "env" (ROUTEVPN_KUBECONFIG), "developer" (reused) or "session" (ours)
    start_seconds: float
    control_plane: ControlPlane | None = None
    crd_names: list[str] = field(default_factory=list)
    crd_error: str | None = None
