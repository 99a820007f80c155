"""The lab guest itself: a real IPsec-capable kernel, the modules, a writable scratch."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from support import labspec
from support.netns import netns


def test_runs_inside_the_guest_kernel_with_ipsec_modules() -> None:
    assert os.environ.get(labspec.IN_LAB_ENV) == "1"
    assert platform.release() == "6.1.0-56-amd64"
    loaded = {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
    assert {"ip_vti", "ip6_vti", "xfrm_interface", "esp4", "esp6", "xfrm_user"} <= loaded


def test_scratch_is_writable_and_repository_read_only(tmp_path: Path) -> None:
    scratch = Path(os.environ[labspec.SCRATCH_ENV])
    probe = scratch / "probe.txt"
    probe.write_text("ok")
    assert probe.read_text() == "ok"
    assert str(tmp_path).startswith("/tmp/")
    # the guest's root is an overlay over the host's, shared read-only
    mounts = Path("/proc/mounts").read_text()
    assert " / overlay " in mounts
    assert f"{labspec.HOST_TAG} /" not in mounts  # the 9p share itself is not exposed


def test_vti_and_xfrm_interfaces_can_be_created() -> None:
    # both are "Unknown device type" on the host kernel: this is why the lab exists
    with netns("smoke") as ns:
        ns.ip(
            "link",
            "add",
            "vti9",
            "type",
            "vti",
            "local",
            "192.0.2.1",
            "remote",
            "192.0.2.2",
            "key",
            "9",
        )
        ns.ip("link", "add", "xfrm9", "type", "xfrm", "if_id", "9")
        links = ns.ip("-d", "link", "show")
        assert "vti9@NONE" in links and "xfrm9@" in links
        assert "if_id 0x9" in links
