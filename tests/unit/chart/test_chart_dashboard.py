"""The Grafana dashboard ConfigMap: off by default, the sidecar's label, the JSON as shipped.

Each panel's query runs against a real Prometheus scraping the real operator and agent
in tests/cluster/test_prometheus_scrape.py; here: its shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from support.chart import CHART, VALUE_SETS, find, render

pytestmark = pytest.mark.unit

DASHBOARD = json.loads((CHART / "files" / "dashboard.json").read_text())


def test_off_by_default(tmp_path: Path) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render({}, tmp_path)}
    assert not any("dashboard" in name for _, name in kinds)
    assert not any(kind == "PrometheusRule" for kind, _ in kinds)


def test_configmap_carries_the_sidecar_label_and_the_json(tmp_path: Path) -> None:
    docs = render(VALUE_SETS["separate-agent-namespace"], tmp_path, namespace="monitoring-x")
    cm = find(docs, "ConfigMap", "dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring-x"
    assert json.loads(cm["data"]["routevpn.json"]) == DASHBOARD


def test_namespace_and_labels_are_values(tmp_path: Path) -> None:
    cm = find(render(VALUE_SETS["customised"], tmp_path), "ConfigMap", "dashboard")
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["dash"] == "yes"


def test_panels_cover_what_the_issue_asks() -> None:
    exprs = " ".join(t["expr"] for p in DASHBOARD["panels"] for t in p["targets"])
    for metric in (
        "routevpn_tunnel_ike_state", "routevpn_tunnel_child_state", "routevpn_tunnels",
        "routevpn_tunnel_child_sa_received_bytes", "routevpn_tunnel_child_sa_sent_packets",
        "routevpn_tunnel_rekeys_total", "routevpn_tunnel_failovers_total",
        "routevpn_operator_reconcile_duration_seconds_bucket",
        "routevpn_agent_reconcile_errors_total",
    ):  # fmt: skip
        assert metric in exprs, metric
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_every_target_uses_the_datasource_variable_and_known_variables() -> None:
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= variables, target["expr"]
