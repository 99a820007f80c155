"""The lab harness itself, driven from the host: each test boots its own guest.

(``tests/lab/conftest.py`` leaves ``test_harness_*.py`` on the host.)
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import lab, labspec
from support.tiers import missing


@pytest.fixture(autouse=True)
def _lab_parts() -> None:
    if os.environ.get(labspec.IN_LAB_ENV) == "1":
        pytest.skip("drives QEMU from the host; not inside the guest")
    try:
        lab.check_parts(lab.kernel_version())
    except lab.LabUnavailableError as e:
        missing(str(e))


@pytest.fixture
def host_service() -> Iterator[int]:
    """A one-line TCP service on the host's loopback: answers `hello <what it got>`."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(120)
    port = srv.getsockname()[1]

    def serve() -> None:
        try:
            while True:
                conn, _ = srv.accept()
                with conn:
                    conn.sendall(b"hello " + conn.recv(100))
        except OSError:
            return  # closed at teardown, or nobody came before the timeout

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield port
    finally:
        srv.close()
        t.join(10)


def test_output_exit_status_and_forward_to_host_loopback(host_service: int) -> None:
    net = labspec.UserNet(forward_ports=(host_service,))
    cmd = (
        "echo to-stdout; echo to-stderr >&2; "
        f"echo guest | busybox nc {net.service} {host_service}; echo; "
        # every other destination is cut off (restrict=on), the host alias included
        f"busybox nc -w 3 {net.host} {host_service} </dev/null || echo host-alias-blocked; "
        "ip -4 -o addr show dev eth0; exit 7"
    )
    res = lab.run_in_guest(cmd, net=net, timeout=300)
    assert res.returncode == 7, res.console[-2000:]
    assert "to-stdout" in res.output and "to-stderr" in res.output
    assert "hello guest" in res.output
    assert "host-alias-blocked" in res.output
    assert f"inet {net.guest}/24" in res.output and "10.0.2." not in res.output
    assert res.accel in ("kvm", "tcg") and not res.timed_out
    assert res.boot_seconds is not None and res.command_seconds is not None
    print(f"lab: accel={res.accel} boot={res.boot_seconds:.1f}s wall={res.wall_seconds:.1f}s")


def test_hung_guest_is_killed_at_its_deadline(tmp_path: Path) -> None:
    res = lab.run_in_guest("sleep 900", timeout=25, scratch=tmp_path)
    assert res.timed_out and res.returncode is None
    assert not Path(f"/proc/{res.pid}").exists()  # killed and reaped, by its PID
    assert not (tmp_path / "rc").exists()
