"""A real BIRD 2 daemon inside a given network namespace, for netns and lab tests.

Each BIRD gets its own configuration file, control socket, PID file and log (its stdio)
in a working directory, runs in the foreground (``bird -f``) so the PID the test holds is
the daemon's own, and is stopped by that PID. Nothing of it is shared with the host's
BIRD (if any): not the socket, not the PID file, not the network namespace.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .daemon import wait_for_socket
from .netns import Netns

BIRD = Path("/usr/sbin/bird")


class Bird:
    """One BIRD in `ns` with its files under `workdir` (config: `conf`, socket: `socket`)."""

    def __init__(self, ns: Netns, workdir: Path, config: str, *, name: str = "bird") -> None:
        self.ns = ns
        self.workdir = workdir
        self.conf = workdir / f"{name}.conf"
        self.socket = workdir / f"{name}.ctl"
        self.pid_file = workdir / f"{name}.pid"
        self.log_file = workdir / f"{name}.log"
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The daemon's PID while running."""
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 20.0) -> None:
        """Write the configuration (unless the file exists), start BIRD, wait for its socket."""
        if self.proc is not None:
            raise RuntimeError("bird already running")
        if not BIRD.exists():
            raise FileNotFoundError(BIRD)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # a restarted BIRD reads what the file holds by then (as the chart's container
        # does with the agent's last configuration)
        if not self.conf.exists():
            self.conf.write_text(self.config)
        self.socket.unlink(missing_ok=True)
        argv = self.ns.argv(
            str(BIRD), "-f", "-s", str(self.socket), "-c", str(self.conf), "-P", str(self.pid_file)
        )
        with self.log_file.open("ab") as out:
            # `ip netns exec` execs bird: this PID is the daemon's own
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            self.wait_for_socket(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_for_socket(self, timeout: float) -> None:
        """Poll until the control socket greets, or raise (with the log) on exit/timeout."""
        wait_for_socket(
            self.proc, self.socket, f"bird in {self.ns.name}", self.log_tail, timeout, b"0001 "
        )

    def birdc(self, command: str) -> str:
        """One command through `birdc` (for test assertions and failure messages)."""
        proc = subprocess.run(
            ["birdc", "-s", str(self.socket), command], capture_output=True, text=True, timeout=20
        )
        return proc.stdout + proc.stderr

    def reconfigure(self, config: str) -> str:
        """Replace the configuration file and have BIRD load it; BIRD's answer."""
        self.config = config
        self.conf.write_text(config)
        return self.birdc(f'configure "{self.conf}"')

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon by its PID: SIGTERM, then SIGKILL after `timeout` s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of BIRD's log, for failure messages."""
        if not self.log_file.exists():
            return "(no log)"
        text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.log_file.name}\n" + "\n".join(text)


@contextmanager
def running(ns: Netns, workdir: Path, config: str, *, name: str = "bird") -> Iterator[Bird]:
    """A started BIRD in `ns` that is stopped on exit, whatever happened."""
    daemon = Bird(ns, workdir, config, name=name)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
