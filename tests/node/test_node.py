"""The lab node itself: a kubelet at the pinned release, on containerd 2.x, Ready."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support import images
from support import node as labnode

# The first test pays for the node's boot (emulated CPUs).
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parents[2]


def _pinned(what: str) -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "node.sh"), "versions"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split() for line in out.splitlines())[what]


def test_node_registers_and_is_ready(lab_node: labnode.LabNode) -> None:
    node = lab_node.node()
    assert node is not None
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == _pinned("kubelet")
    assert info["containerRuntimeVersion"] == f"containerd://{_pinned('containerd').lstrip('v')}"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == labnode.NODE_IP
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", ready
    # cgroup v2 and overlayfs: no pressure condition raised by a half-working runtime
    for c in node["status"]["conditions"]:
        if c["type"] != "Ready":
            assert c["status"] == "False", c


def test_node_has_the_imported_images(lab_node: labnode.LabNode) -> None:
    node = lab_node.node()
    assert node is not None
    names = {n for img in node["status"].get("images", []) for n in img.get("names", [])}
    for name in images.NAMES:
        assert images.ref(name) in names, (name, sorted(names))
