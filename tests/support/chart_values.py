"""Read the `# -- ` documentation comments of values.yaml (the helm-docs convention).

Each documented key is a unit: its comment describes it and everything under it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):(?P<rest>.*)$")


@dataclass(frozen=True)
class Value:
    """One key of values.yaml: its dotted path, its doc comment (or ""), leaf or not."""

    path: str
    doc: str
    leaf: bool


def parse(values_file: Path) -> list[Value]:
    """Every key in `values_file`, in order, with the `# -- ` comment right above it."""
    lines = values_file.read_text().splitlines()
    stack: list[tuple[int, str]] = []
    out: list[Value] = []
    doc: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("# -- "):
            doc = [stripped[5:]]
            continue
        if stripped.startswith("#") and doc:
            doc.append(stripped.lstrip("# "))
            continue
        m = _KEY.match(line)
        if not m:
            if not stripped.startswith("#"):
                doc = []
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([p for _, p in stack] + [m["key"]])
        leaf = bool(m["rest"].strip())
        if not leaf:
            nxt = next(
                (n for n in lines[i + 1 :] if n.strip() and not n.strip().startswith("#")), ""
            )
            leaf = nxt.strip().startswith("- ") or len(nxt) - len(nxt.lstrip()) <= indent
        out.append(Value(path, " ".join(doc), leaf))
        doc = []
        stack.append((indent, m["key"]))
    return out


def default(values: dict[str, Any], path: str) -> Any:
    """The value at dotted `path` of the loaded values."""
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def table(values_file: Path) -> str:
    """The README's markdown table of every documented value."""
    loaded = yaml.safe_load(values_file.read_text())
    rows = ["| Key | Default | Description |", "| --- | --- | --- |"]
    for v in parse(values_file):
        if v.doc:
            shown = json.dumps(default(loaded, v.path)).replace("|", "\\|")
            rows.append(f"| `{v.path}` | `{shown}` | {v.doc} |")
    return "\n".join(rows) + "\n"
