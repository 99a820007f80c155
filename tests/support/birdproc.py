"""A BIRD 2 daemon run by hand inside a network namespace: a far end's, or a user's own
on the node. Its config, control socket, PID file and log live in a working directory
of its own; it is started and stopped by PID only.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .netns import Netns

BIRD, BIRDC = Path("/usr/sbin/bird"), Path("/usr/sbin/birdc")


class Bird:
    """One `bird -f` in `ns` with its files under `workdir`."""

    def __init__(self, ns: Netns, workdir: Path) -> None:
        self.ns, self.workdir = ns, workdir
        self.conf = workdir / "bird.conf"
        self.ctl = workdir / "bird.ctl"
        self.log = workdir / "bird.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, config: str, timeout: float = 30.0) -> None:
        """Check `config` (`bird -p`), start the daemon, wait until its socket answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(config)
        check = subprocess.run(
            [str(BIRD), "-p", "-c", str(self.conf)], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise ValueError(f"bird -p: {check.stderr.strip()}\n{config}")
        argv = [str(BIRD), "-f", "-c", str(self.conf), "-s", str(self.ctl)]
        argv += ["-P", str(self.workdir / "bird.pid")]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.ns.argv(*argv), stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while self.birdc("show", "status", check=False).find("Daemon is up") < 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"bird in {self.ns.name} did not come up: {tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM by PID (BIRD takes its routes out of the kernel as it shuts down),
        SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def birdc(self, *cmd: str, check: bool = True) -> str:
        """`birdc -s <ctl> CMD…` (the socket is a file: no namespace needed)."""
        proc = subprocess.run(
            [str(BIRDC), "-s", str(self.ctl), *cmd], capture_output=True, text=True, timeout=30
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"birdc {' '.join(cmd)}: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def ospf_full(self) -> bool:
        """Is some OSPF neighbour in state Full?"""
        return "Full/" in self.birdc("show", "ospf", "neighbors", check=False)

    def established(self, protocol: str) -> bool:
        """Is BGP protocol `protocol` Established?"""
        out = self.birdc("show", "protocols", protocol, check=False)
        return re.search(rf"^{re.escape(protocol)}\s.*\sEstablished", out, re.M) is not None

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


@contextmanager
def running(ns: Netns, workdir: Path, config: str) -> Iterator[Bird]:
    """A started BIRD, always stopped on exit."""
    bird = Bird(ns, workdir)
    bird.start(config)
    try:
        yield bird
    finally:
        bird.stop()
