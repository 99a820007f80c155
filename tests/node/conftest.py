"""The ``node`` tier: the project's images, and a real node running them.

``test_images.py`` looks into the OCI archives ``hack/images.sh build`` made (host only).
The other tests share ONE lab node for the session (``lab_node``): a control plane on
the host and a QEMU guest running containerd and a kubelet that registered with it
(``support.node``), with ONE install of the chart (``installed``) and the seed example up
through it (``seed``, ``support.node_release``). Every test talks to it from the host with
the pinned kubectl/helm, as an operator of a real cluster would. ``test_e2e.py`` runs
against ``target``: that release, or the cluster ``ROUTEVPN_KUBECONFIG`` names (then no
lab node boots). Modules run in name order: test_e2e, test_images, test_node, and
test_node_chart last, whose last test uninstalls. Missing parts skip on a developer
machine and fail in CI (``missing()``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import node as labnode
from support import node_release, release
from support.tiers import missing

NODE_KEY = pytest.StashKey[labnode.LabNode]()


@pytest.fixture(scope="session")
def lab_node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[labnode.LabNode]:
    """The session's node, Ready; stopped (guest powered off, control plane down) at the end."""
    why = labnode.unavailable()
    if why is not None:
        missing(why)
    # A guest whose kernel locks up at the kubelet's start (seen once in several runs, TCG
    # on a loaded host) is replaced by one fresh boot; the summary says so.
    for attempt in (1, 2):
        state = Path(tmp_path_factory.mktemp("lab-node", numbered=True))
        node = labnode.LabNode.start(state)
        node.boots = attempt
        request.config.stash[NODE_KEY] = node
        try:
            node.wait_ready()
        except labnode.GuestLockupError:
            node.stop()
            if attempt == 2:
                raise
            continue
        except BaseException:
            node.stop()
            raise
        break
    _say_ready()
    try:
        yield node
    finally:
        node.stop()


#: A file to create once the node is Ready (hack/test.sh starts the host tiers then).
READY_FILE_ENV = "ROUTEVPN_NODE_READY_FILE"


def _say_ready() -> None:
    """The guest's kernel has been seen to lock up with both vCPUs in the kubelet at its
    start (iptables under TCG) when the host is busy: hack/test.sh keeps the host tiers
    back until this says the node is Ready."""
    path = os.environ.get(READY_FILE_ENV)
    if path:
        Path(path).touch()


@pytest.fixture(scope="session")
def installed(
    lab_node: labnode.LabNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[node_release.Installed]:
    """The chart installed on the lab node, every pod Ready (uninstalled at the end)."""
    yield from node_release.install(lab_node, tmp_path_factory.mktemp("chart-node"))


@pytest.fixture(scope="session")
def seed(installed: node_release.Installed) -> Iterator[node_release.Seed]:
    """The seed example Ready through the chart, against the far end set up by hand."""
    yield from node_release.bring_up_seed(installed)


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> release.Target:
    """What test_e2e.py checks: the cluster ROUTEVPN_KUBECONFIG names, else the lab
    node's release with the seed up (booted and installed on first use)."""
    external = release.external_target()
    if external is not None:
        return external
    request.getfixturevalue("seed")
    installed: node_release.Installed = request.getfixturevalue("installed")
    return installed.target


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """How long the node took from guest boot to Ready."""
    node = config.stash.get(NODE_KEY, None)
    if node is None:
        return
    terminalreporter.section("node")
    ready = f"{node.boot_to_ready:.0f}s" if node.boot_to_ready is not None else "never"
    terminalreporter.write_line(
        f"node: {node.boots} guest boot(s) ({labnode.MEMORY_MB} MiB), boot → node Ready {ready}; "
        f"logs were in {node.logs}"
    )
    for what, seconds in node.figures.items():
        terminalreporter.write_line(f"node: {what}: {seconds:.0f}s")
