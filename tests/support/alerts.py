"""The chart's alerting rules as Prometheus loads them, and promtool's unit-test format.

`rules(tmp)` renders the chart with the PrometheusRule on and returns its `spec` (a
Prometheus rule file: `groups`). `expand` fills an annotation the way Prometheus'
templates do for what the rules use (`$labels.x`, `$value`, `$value | humanize` of
whole numbers), so a test can state the exact text an alert must carry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from support.chart import find, render

RELEASE = "rv"
OPERATOR_JOB = f"{RELEASE}-routevpn-operator-metrics"
AGENT_JOB = f"{RELEASE}-routevpn-agent-metrics"
RULE_VALUES: dict[str, Any] = {
    "metrics": {"prometheusRule": {"enabled": True, "runbookBaseUrl": "https://example.org/a"}}
}


def rules(tmp: Path) -> dict[str, Any]:
    """The rendered PrometheusRule's spec: a rule file Prometheus and promtool load."""
    spec: dict[str, Any] = find(render(RULE_VALUES, tmp, release=RELEASE), "PrometheusRule")["spec"]
    return spec


def all_rules(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Alerting rules by alert name."""
    return {r["alert"]: r for g in spec["groups"] for r in g["rules"] if "alert" in r}


def expand(template: str, labels: dict[str, str], value: float) -> str:
    """`template` as Prometheus expands it for an alert with `labels` and `value`."""
    number = f"{value:g}"
    out = re.sub(r"\{\{ \$value \| humanize \}\}", number, template)
    out = re.sub(r"\{\{ \$value \}\}", number, out)
    out = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m[1], "<no value>"), out)
    assert "{{" not in out, f"a template this helper does not know: {out}"
    return out
