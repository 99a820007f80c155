"""The fault plane the API-fault lab tests break their control plane through
(`support.faultplane`), driven on the host against a real process standing in for etcd.

(``tests/lab/conftest.py`` leaves ``test_harness_*.py`` on the host.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import labspec
from support.cluster import ControlPlane
from support.faultplane import FaultServer, RemoteFaults


def _state(pid: int) -> str:
    """The process's state letter (R, S, T...), from /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, want: str) -> None:
    deadline = time.monotonic() + 10
    while _state(pid) != want:
        assert time.monotonic() < deadline, f"PID {pid} is {_state(pid)}, not {want}"
        time.sleep(0.05)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[RemoteFaults, Path]]:
    """A control plane's state directory whose "etcd" is a sleep, served as the lab does."""
    if os.environ.get(labspec.IN_LAB_ENV) == "1":
        pytest.skip("the fault plane's host side; not inside the guest")
    (tmp_path / "run").mkdir()
    (tmp_path / "log").mkdir()
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    pidfile = tmp_path / "run" / "etcd.pid"
    pidfile.write_text(f"{proc.pid}\n")
    try:
        with FaultServer(ControlPlane(state_dir=tmp_path)) as server:
            yield RemoteFaults(f"http://127.0.0.1:{server.port}", timeout=30), pidfile
    finally:
        proc.kill()
        proc.wait()
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)  # the restarted one


def test_freeze_kill_and_restart_by_the_recorded_pid(plane: tuple[RemoteFaults, Path]) -> None:
    faults, pidfile = plane
    pid = int(pidfile.read_text())
    faults.signal("etcd", "STOP")
    _wait_state(pid, "T")
    faults.signal("etcd", "CONT")
    _wait_state(pid, "S")
    faults.kill("etcd")
    assert (
        not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()
    ), "still running after the kill"
    faults.restart("etcd")
    new = int(pidfile.read_text())
    assert new != pid
    assert Path(f"/proc/{new}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"300"]
    assert "--- etcd.log" in faults.logs()
    # a restart needs a kill before it: the command line is kept only then
    with pytest.raises(RuntimeError, match="409"):
        faults.restart("etcd")


def test_nothing_but_the_control_plane_can_be_touched(plane: tuple[RemoteFaults, Path]) -> None:
    faults, pidfile = plane
    pid = int(pidfile.read_text())
    for bad in ("sshd", "..", "run"):
        with pytest.raises(RuntimeError, match="409"):
            faults.kill(bad)
    with pytest.raises(RuntimeError, match="404"):
        faults.signal("etcd", "KILL")  # only STOP and CONT
    assert _state(pid) in "SR", "the process was touched"
