"""The Argo CD health check for VpnTunnel, run in a real Lua 5.1 like Argo CD's own.

Argo CD runs `health.lua` with the object as the global `obj` (gopher-lua, a Lua 5.1) and
reads `status` and `message` from the table it returns; its own test harness drives each
check from `health_test.yaml`. This does the same with lupa's Lua 5.1 runtime, comparing
status and message exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # a dev dependency: missing means a broken setup, not a skip
import pytest
import yaml

from routevpn.api.conditions import TRANSIENT_REASONS, Reason

ROOT = Path(__file__).resolve().parents[2]
CHECK_DIR = ROOT / "argocd" / "resource_customizations" / "routevpn.io" / "VpnTunnel"
HEALTH_LUA = CHECK_DIR / "health.lua"
ARGOCD_CM = ROOT / "examples" / "argocd" / "argocd-cm-health.yaml"


def _cases() -> list[dict[str, Any]]:
    doc = yaml.safe_load((CHECK_DIR / "health_test.yaml").read_text())
    tests: list[dict[str, Any]] = doc["tests"]
    return tests


def _to_lua(runtime: Any, value: Any) -> Any:
    """Python data → Lua values the way Argo CD hands an object to Lua (lists 1-based)."""
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def run_health(obj: dict[str, Any]) -> dict[str, Any]:
    """Run health.lua on `obj` in a fresh Lua 5.1 and return its table as a dict."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    assert runtime.eval("_VERSION") == "Lua 5.1"
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(HEALTH_LUA.read_text())
    return dict(result.items())


@pytest.mark.parametrize("case", _cases(), ids=lambda c: Path(c["inputPath"]).stem)
def test_health_matches_expectation(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())
    got = run_health(obj)
    assert got == {
        "status": case["healthStatus"]["status"],
        "message": case["healthStatus"]["message"],
    }


def test_every_testdata_file_is_used_and_every_status_covered() -> None:
    used = {case["inputPath"] for case in _cases()}
    on_disk = {f"testdata/{p.name}" for p in (CHECK_DIR / "testdata").glob("*.yaml")}
    assert used == on_disk
    statuses = {case["healthStatus"]["status"] for case in _cases()}
    assert statuses == {"Healthy", "Progressing", "Degraded"}


def _ready_false(reason: str) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": "m"}],
        },
    }


def test_transient_reasons_are_the_apis() -> None:
    """The Lua's list and routevpn.api.conditions.TRANSIENT_REASONS never drift apart."""
    lua_table = HEALTH_LUA.read_text().split("local transient = {", 1)[1].split("}", 1)[0]
    in_lua = set(re.findall(r"^\s*(\w+) = true,$", lua_table, re.MULTILINE))
    assert in_lua == {str(r) for r in TRANSIENT_REASONS}


@pytest.mark.parametrize("reason", sorted(str(r) for r in Reason))
def test_every_api_reason_maps_to_progressing_or_degraded(reason: str) -> None:
    want = "Progressing" if reason in TRANSIENT_REASONS else "Degraded"
    got = run_health(_ready_false(reason))
    assert got == {"status": want, "message": f"{reason}: m"}


def test_a_prefix_of_a_transient_reason_is_not_transient() -> None:
    assert run_health(_ready_false("PendingFailed"))["status"] == "Degraded"


def test_argocd_cm_example_carries_the_same_lua() -> None:
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    key = "resource.customizations.health.routevpn.io_VpnTunnel"
    assert cm["data"][key] == HEALTH_LUA.read_text()
