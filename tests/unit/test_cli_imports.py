"""`routevpn agent` loads nothing of the operator's framework (kopf), checked in a fresh
interpreter: the agent process must not import kopf nor register the operator's handlers."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

_PROBE = """
import sys
from routevpn.cli import build_parser
args = build_parser().parse_args(["agent", "--node", "n", "--namespace", "routevpn"])
import routevpn.agent.main
loaded = sorted(m for m in sys.modules if m == "kopf" or m.startswith(("kopf.",
    "routevpn.controller.handlers", "routevpn.controller.main")))
print(",".join(loaded))
"""


def test_the_agent_command_imports_no_kopf() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_the_operator_command_does_load_kopf() -> None:
    """The probe can fail: the operator's entry point does bring kopf in."""
    probe = _PROBE.replace('"agent", "--node", "n", "--namespace", "routevpn"', '"operator"')
    probe = probe.replace("routevpn.agent.main", "routevpn.controller.main")
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert "kopf" in out.split(",")
