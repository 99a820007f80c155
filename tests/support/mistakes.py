"""The shared table of VpnTunnel spec mistakes (tests/data/invalid-vpntunnels.yaml).

Each case starts from the table's valid `base` spec and applies `set`: dotted paths
(`interface.name`), a value of None deleting the field. The models (tests/unit/api) and
the real API server (tests/cluster) must both refuse every case, naming the same field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

TABLE_FILE = Path(__file__).resolve().parents[1] / "data" / "invalid-vpntunnels.yaml"


def load_table() -> dict[str, Any]:
    """`{"base": spec, "cases": [{name, set, field, message?, server?}, ...]}`."""
    table: dict[str, Any] = yaml.safe_load(TABLE_FILE.read_text())
    return table


def apply_set(spec: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of `spec` with the case's dotted-path changes applied (None deletes)."""
    out = copy.deepcopy(spec)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out
