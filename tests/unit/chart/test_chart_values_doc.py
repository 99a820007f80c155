"""Every chart value is documented in values.yaml, in README.md and in the schema."""

from __future__ import annotations

import json
from typing import Any

from support import chart_values as values_doc
from support.chart import CHART

VALUES = CHART / "values.yaml"


def test_every_value_is_documented_by_itself_or_its_parent() -> None:
    parsed = values_doc.parse(VALUES)
    documented = {v.path for v in parsed if v.doc}
    for v in parsed:
        if not v.leaf:
            continue
        parts = v.path.split(".")
        ancestors = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        assert ancestors & documented, f"values.yaml: {v.path} has no `# --` comment"


def test_readme_table_is_generated_from_values_yaml() -> None:
    readme = (CHART / "README.md").read_text()
    assert readme.endswith(values_doc.table(VALUES)), (
        "charts/routevpn/README.md's values table is stale: regenerate it from values.yaml"
    )


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        out.add(path)
        out |= _schema_paths(sub, path + ".")
    return out


def test_schema_knows_every_documented_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    known = _schema_paths(schema)
    for v in values_doc.parse(VALUES):
        if v.doc:
            assert v.path in known, f"values.schema.json lacks {v.path}"
