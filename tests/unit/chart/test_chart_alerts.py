"""The chart's alerts, run by Prometheus' own `promtool test rules` on input series.

For every alert: series that must fire it (with the exact labels and annotations, each
naming the tunnel as namespace/name where there is one) and series beside them that
must not. promtool is built from the pinned Prometheus module (hack/tools.sh).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.alerts import AGENT_JOB, OPERATOR_JOB, all_rules, expand, rules
from support.chart import VALUE_SETS, render, tool

pytestmark = pytest.mark.unit

A = {"node": "node-a"}
#: promtool input series: [selector, values in its expanding notation].
Series = list[list[str]]


def tun(name: str, **labels: str) -> str:
    """A per-tunnel series selector of tunnel prod/<name> on node-a."""
    all_labels = {"namespace": "prod", "name": name, **A, **labels}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in all_labels.items()) + "}"


def states(metric: str, name: str, now: str, values: str, others: tuple[str, ...]) -> Series:
    """One tunnel's state gauge: 1 for `now` where `values` says 1 (promtool's expanding
    notation of 0s and 1s, e.g. "0 0 1x12"), and 1 for each other state where it says 0."""
    flipped = " ".join(re.sub(r"^([01])", lambda m: str(1 - int(m[1])), v) for v in values.split())
    out = [[f"{metric}{tun(name, state=now)}", values]]
    out += [[f"{metric}{tun(name, state=s)}", flipped] for s in others if s != now]
    return out


def ike(name: str, state: str, values: str) -> Series:
    return states("routevpn_tunnel_ike_state", name, state, values, ("CONNECTING",))


def child(name: str, state: str, values: str) -> Series:
    return states("routevpn_tunnel_child_state", name, state, values, ("DOWN",))


@dataclass
class Case:
    """One promtool test group: input series, and at `at` exactly `fires` (labels, value)."""

    alert: str
    series: Series
    at: str
    fires: list[tuple[dict[str, str], float]] = field(default_factory=list)
    #: Tunnels (names), instances or nodes in `series` that must not fire.
    spared: tuple[str, ...] = ()


def up_tunnel(name: str, n: int = 60) -> Series:
    return ike(name, "ESTABLISHED", f"1x{n}") + child(name, "INSTALLED", f"1x{n}")


CASES = [
    Case(
        "RouteVpnTunnelDown",
        ike("down", "ESTABLISHED", "0x15")
        + child("down", "INSTALLED", "0x15")
        + up_tunnel("up")
        + ike("childdown", "ESTABLISHED", "1x15")
        + child("childdown", "INSTALLED", "0x15")
        # a rekey is no outage: REKEYING SAs still carry traffic
        + ike("rekeying", "REKEYING", "1x15")
        + child("rekeying", "REKEYING", "1x15")
        # down for 3 minutes only: shorter than tunnelDownFor (5m)
        + ike("brief", "ESTABLISHED", "0 0 0 1x12")
        + child("brief", "INSTALLED", "0 0 0 1x12")
        # started on demand (trap): down while idle, by design
        + ike("ondemand", "ESTABLISHED", "0x15")
        + child("ondemand", "INSTALLED", "0x15")
        + [[f"routevpn_tunnel_on_demand{tun('ondemand')}", "1x15"]]
        + [[f"routevpn_tunnel_on_demand{tun('down')}", "0x15"]],
        "10m",
        [({"namespace": "prod", "name": n, **A}, 0) for n in ("down", "childdown")],
        ("up", "rekeying", "brief", "ondemand"),
    ),
    Case(
        "RouteVpnTunnelDown",
        ike("down", "ESTABLISHED", "0x15") + child("down", "INSTALLED", "0x15"),
        "4m",
    ),
    Case(
        "RouteVpnTunnelNoTrafficReceived",
        [
            *up_tunnel("quiet"),
            [f"routevpn_tunnel_child_sa_received_bytes{tun('quiet')}", "1000x60"],
            *up_tunnel("busy"),
            [f"routevpn_tunnel_child_sa_received_bytes{tun('busy')}", "0+1000x60"],
            # traffic, a rekey (the counter restarts at 0), then nothing: no traffic
            *up_tunnel("rekeyed"),
            [f"routevpn_tunnel_child_sa_received_bytes{tun('rekeyed')}", "1000+100x9 0x50"],
            # down and quiet: RouteVpnTunnelDown's business, not this alert's
            *ike("dead", "ESTABLISHED", "0x60"),
            *child("dead", "INSTALLED", "0x60"),
            [f"routevpn_tunnel_child_sa_received_bytes{tun('dead')}", "0x60"],
        ],
        "50m",
        [({"namespace": "prod", "name": n, **A}, 0) for n in ("quiet", "rekeyed")],
        ("busy", "dead"),
    ),
    Case(
        "RouteVpnTunnelFailedOver",
        [
            [f"routevpn_tunnel_routes{tun('primary', state='Demoted')}", "2x10"],
            [f"routevpn_tunnel_routes{tun('primary', state='Active')}", "0x10"],
            [f"routevpn_tunnel_routes{tun('backup', state='Demoted')}", "0x10"],
            [f"routevpn_tunnel_routes{tun('backup', state='Active')}", "2x10"],
        ],
        "5m",
        [({"namespace": "prod", "name": "primary", **A}, 2)],
        ("backup",),
    ),
    Case(
        "RouteVpnTunnelNegotiationFailures",
        [
            [f"routevpn_tunnel_ike_failures_total{tun('failing')}", "0+1x30"],
            [f"routevpn_tunnel_ike_failures_total{tun('once')}", "0 0 1x30"],
        ],
        "20m",
        [({"namespace": "prod", "name": "failing", **A}, 15)],
        ("once",),
    ),
    Case(
        "RouteVpnTunnelRekeyingTooOften",
        [
            [f"routevpn_tunnel_rekeys_total{tun('storm', sa='child')}", "0+1x90"],
            [f"routevpn_tunnel_rekeys_total{tun('storm', sa='ike')}", "0x90"],
            [f"routevpn_tunnel_rekeys_total{tun('normal', sa='child')}", "0x30 1x60"],
        ],
        "80m",
        [({"namespace": "prod", "name": "storm", **A}, 60)],
        ("normal",),
    ),
    Case(
        "RouteVpnOperatorNotReporting",
        [[f'up{{job="{OPERATOR_JOB}", instance="192.0.2.20:8080"}}', "0x20"]],
        "10m",
        [({}, 1)],
    ),
    Case(  # one replica of two answers: enough
        "RouteVpnOperatorNotReporting",
        [
            [f'up{{job="{OPERATOR_JOB}", instance="192.0.2.20:8080"}}', "0x20"],
            [f'up{{job="{OPERATOR_JOB}", instance="192.0.2.21:8080"}}', "1x20"],
        ],
        "10m",
        spared=("192.0.2.20:8080", "192.0.2.21:8080"),
    ),
    Case(
        "RouteVpnOperatorNoLeader",
        [
            [f'routevpn_operator_leader{{job="{OPERATOR_JOB}", instance="a"}}', "0x20"],
            [f'routevpn_operator_leader{{job="{OPERATOR_JOB}", instance="b"}}', "0x20"],
        ],
        "10m",
        [({}, 0)],
    ),
    Case(
        "RouteVpnOperatorNoLeader",
        [
            [f'routevpn_operator_leader{{job="{OPERATOR_JOB}", instance="a"}}', "0x20"],
            [f'routevpn_operator_leader{{job="{OPERATOR_JOB}", instance="b"}}', "1x20"],
        ],
        "10m",
        spared=('instance="a"',),
    ),
    Case(
        "RouteVpnAgentNotReporting",
        [
            [f'up{{job="{AGENT_JOB}", instance="192.0.2.10:9478"}}', "0x20"],
            [f'up{{job="{AGENT_JOB}", instance="192.0.2.11:9478"}}', "1x20"],
            # another job's target being down is not routevpn's alert
            ['up{job="something-else", instance="192.0.2.12:9100"}', "0x20"],
        ],
        "10m",
        [({"job": AGENT_JOB, "instance": "192.0.2.10:9478"}, 0)],
        ("192.0.2.11:9478", "192.0.2.12:9100"),
    ),
    Case(
        "RouteVpnNodeAgentMissing",
        [
            # node-a: tunnels placed, agent gone
            ['routevpn_node_agent_live{job="op", node="node-a"}', "0x20"],
            ['routevpn_tunnels{job="op", node="node-a", ready="True"}', "2x20"],
            # node-b: agent gone, but no tunnel there
            ['routevpn_node_agent_live{job="op", node="node-b"}', "0x20"],
            ['routevpn_tunnels{job="op", node="node-b", ready="True"}', "0x20"],
            # node-c: tunnels and a live agent
            ['routevpn_node_agent_live{job="op", node="node-c"}', "1x20"],
            ['routevpn_tunnels{job="op", node="node-c", ready="False"}', "3x20"],
            # unplaced tunnels belong to no node
            ['routevpn_tunnels{job="op", node="", ready="Unknown"}', "4x20"],
        ],
        "10m",
        [({"node": "node-a"}, 0)],
        ("node-b", "node-c"),
    ),
    Case(
        "RouteVpnOperatorReconcileErrors",
        [
            [
                f'routevpn_operator_reconcile_errors_total{{job="{OPERATOR_JOB}", instance="a"}}',
                "0+1x30",
            ],
            [
                f'routevpn_operator_reconcile_errors_total{{job="{OPERATOR_JOB}", instance="b"}}',
                "0 1 2x30",
            ],
        ],
        "20m",
        [({"job": OPERATOR_JOB, "instance": "a"}, 15)],
        ('instance="b"',),
    ),
    Case(
        "RouteVpnAgentReconcileErrors",
        [
            [
                f'routevpn_agent_reconcile_errors_total{{job="{AGENT_JOB}", instance="n1"}}',
                "0+1x30",
            ],
            [f'routevpn_agent_reconcile_errors_total{{job="{AGENT_JOB}", instance="n2"}}', "0x30"],
        ],
        "20m",
        [({"job": AGENT_JOB, "instance": "n1"}, 15)],
        ("n2",),
    ),
]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return rules(tmp_path_factory.mktemp("alerts"))


def _expected(rule: dict[str, Any], labels: dict[str, str], value: float) -> dict[str, Any]:
    ann = {k: expand(v, labels, value) for k, v in rule["annotations"].items()}
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": ann}


def _group(case: Case, rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": f"{case.alert} at {case.at}",
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in case.series],
        "alert_rule_test": [
            {
                "eval_time": case.at,
                "alertname": case.alert,
                "exp_alerts": [_expected(rule, labels, value) for labels, value in case.fires],
            }
        ],
    }


def promtool_test(
    spec: dict[str, Any], cases: list[Case], tmp: Path
) -> subprocess.CompletedProcess[str]:
    by_name = all_rules(spec)
    (tmp / "rules.yaml").write_text(yaml.safe_dump(spec))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
             "tests": [_group(c, by_name[c.alert]) for c in cases]}  # fmt: skip
    (tmp / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return subprocess.run(
        [str(tool("promtool")), "test", "rules", "tests.yaml"],
        cwd=tmp, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_promtool_checks_the_rule_file(spec: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    res = subprocess.run(
        [str(tool("promtool")), "check", "rules", "rules.yaml"],
        cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not(spec: dict[str, Any]) -> None:
    assert set(all_rules(spec)) == {c.alert for c in CASES if c.fires}
    assert set(all_rules(spec)) == {c.alert for c in CASES if c.spared}
    for case in CASES:
        for spared in case.spared:  # in the input, and not among what must fire
            assert any(spared in s for s, _ in case.series), (case.alert, spared)
            assert all(spared not in labels.values() for labels, _ in case.fires)


def test_every_tunnel_alert_names_the_tunnel(spec: dict[str, Any]) -> None:
    for name, rule in all_rules(spec).items():
        assert rule["annotations"]["runbook_url"].endswith("#" + name.lower())
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        if name.startswith("RouteVpnTunnel"):
            assert "{{ $labels.namespace }}/{{ $labels.name }}" in rule["annotations"]["summary"]
        assert "Check first" in rule["annotations"]["description"], name
        assert "{{" not in text or "$labels" in text or "$value" in text


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.alert}@{c.at}")
def test_promtool_test_rules(spec: dict[str, Any], case: Case, tmp_path: Path) -> None:
    res = promtool_test(spec, [case], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_can_fail(spec: dict[str, Any], tmp_path: Path) -> None:
    """A case expecting the wrong tunnel fails: the harness compares what fired."""
    wrong = Case(CASES[0].alert, CASES[0].series, CASES[0].at,
                 [({"namespace": "prod", "name": "up", **A}, 0)])  # fmt: skip
    res = promtool_test(spec, [wrong], tmp_path)
    assert res.returncode != 0
    assert "prod" in res.stdout + res.stderr


def test_service_monitors_keep_the_tunnels_namespace_label(tmp_path: Path) -> None:
    """The rules and the dashboard read a tunnel's `namespace` label: a ServiceMonitor
    without honorLabels would overwrite it with the scraped pod's namespace."""
    docs = render(VALUE_SETS["separate-agent-namespace"], tmp_path)
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 2
    for monitor in monitors:
        assert all(e["honorLabels"] is True for e in monitor["spec"]["endpoints"])
