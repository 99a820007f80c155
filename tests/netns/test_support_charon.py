"""The test-support pieces themselves, on this host: namespaces, veth, charon, IKE.

The host kernel has XFRM netlink but no ESP, so an IKE SA comes up and the CHILD SA
install fails; that boundary is exactly what is checked here (the lab does the rest).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support import swanctl as sw
from support.charon import CHARON, Charon, running
from support.netns import check_test_address, have_root, netns, run, veth
from support.tiers import missing


@pytest.fixture(autouse=True)
def _needs_root_and_charon() -> None:
    if not have_root():
        missing("root (network namespaces)")
    if not CHARON.exists():
        missing(f"charon at {CHARON}")


def test_netns_and_veth_are_removed_even_when_the_body_fails() -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), netns("t") as a, netns("t") as b:
        names += [a.name, b.name]
        with veth(a, "va", b, "vb"):
            a.add_address("va", "192.0.2.1/24")
            b.add_address("vb", "192.0.2.2/24")
            a.run("ping", "-c", "1", "-W", "5", "192.0.2.2")
            assert "vb" in b.ip("-o", "link", "show")
            raise RuntimeError("boom")
    listed = run(["ip", "netns", "list"])
    assert not any(n in listed for n in names)


def test_check_test_address_refuses_private_and_public_space() -> None:
    check_test_address("2001:db8:100::/127")
    check_test_address("169.254.10.1/30")
    for bad in ("10.0.2.15/24", "192.168.1.1", "172.16.0.1/12", "8.8.8.8", "2001:4860::1"):
        with pytest.raises(ValueError):
            check_test_address(bad)


def _conn(local: str, remote: str, lid: str, rid: str) -> sw.Conn:
    return sw.Conn(
        "site", local, remote, lid, rid, "test-psk-0123456789", [sw.Child("net", mark=42)]
    )


def test_two_charons_bring_up_ike_and_restart(tmp_path: Path) -> None:
    with netns("ike") as a, netns("ike") as b, veth(a, "va", b, "vb"):
        a.add_address("va", "2001:db8:0:1::1/64")
        b.add_address("vb", "2001:db8:0:1::2/64")
        with running(a, tmp_path / "a") as ca, running(b, tmp_path / "b") as cb:
            assert ca.pid != cb.pid  # two daemons despite the fixed /var/run/charon.pid
            sw.write_and_load(
                a,
                ca.uri,
                tmp_path / "a.conf",
                [_conn("2001:db8:0:1::1", "2001:db8:0:1::2", "a.test", "b.test")],
            )
            sw.write_and_load(
                b,
                cb.uri,
                tmp_path / "b.conf",
                [_conn("2001:db8:0:1::2", "2001:db8:0:1::1", "b.test", "a.test")],
            )
            with pytest.raises(RuntimeError, match="CHILD_SA 'net' failed"):
                sw.initiate(a, ca.uri, "net", ike="site", timeout=15)
            listing = sw.wait_for(a, ca.uri, ike="site", timeout=10)
            assert "'b.test' @ 2001:db8:0:1::2" in listing
            assert "test-psk" not in ca.log_file.read_text()

            old = cb.pid
            cb.restart()
            assert cb.pid != old
            assert sw.ike_states(sw.list_sas(b, cb.uri)) == {}  # a restart loses all SAs
        assert not Path(f"/proc/{old}").exists()


def test_stop_kills_by_pid_and_is_idempotent(tmp_path: Path) -> None:
    with netns("stop") as a:
        daemon = Charon(a, tmp_path)
        daemon.start()
        pid = daemon.pid
        assert pid is not None and Path(f"/proc/{pid}").exists()
        daemon.stop()
        daemon.stop()
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
