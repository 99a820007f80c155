"""What the test daemons (charon, BIRD) share: waiting for a daemon's UNIX socket."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def wait_for_socket(
    proc: subprocess.Popen[bytes] | None,
    path: Path,
    what: str,
    log_tail: Callable[[], str],
    timeout: float,
    greeting: bytes | None = None,
) -> None:
    """Poll until `path` accepts a connection (and, with `greeting`, the daemon's first
    bytes start with it); RuntimeError with the log if the process exits, TimeoutError
    at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {log_tail()}")
        if path.exists():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.settimeout(2)
                    s.connect(str(path))
                    if greeting is None or s.recv(64).startswith(greeting):
                        return
                except OSError:
                    pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: socket {path.name} not up after {timeout}s: {log_tail()}")
        time.sleep(0.05)
