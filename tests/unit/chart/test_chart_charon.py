"""charon in a DaemonSet of its own: what an upgrade of the agent can't touch.

Replacing a charon pod re-keys every tunnel of its node, so its pod template must not
change with the agent's values or with the chart's version, and by default nothing
replaces a running charon pod but its deletion (the node tier proves the result on a real
node: the same SPIs and no lost packet across a `helm upgrade`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chart import CHART, Manifest, find, helm, render


def _charon(values: dict[str, Any], tmp: Path, chart: Path = CHART) -> Manifest:
    vfile = tmp / "values.yaml"
    vfile.write_text(yaml.safe_dump(values))
    text = helm(
        "template", "rv", str(chart), "--namespace", "routevpn-system", "-f", str(vfile)
    ).stdout
    return find([d for d in yaml.safe_load_all(text) if d], "DaemonSet", "charon")


#: Values a user changes on the agent; none of them is charon's business.
AGENT_CHANGES: list[dict[str, Any]] = [
    {"image": {"tag": "0.2.0"}},
    {"agent": {"podAnnotations": {"routevpn.io/roll": "1"}}},
    {"agent": {"logLevel": "debug", "extraArgs": ["--resync=30"]}},
    {"agent": {"resources": {"limits": {"memory": "512Mi"}}}},
    {"agent": {"httpPort": 19478, "bindAddress": "192.0.2.7"}},
    {"agent": {"kernelModules": {"load": False}, "mountProcSysNet": False}},
    {"agent": {"terminationGracePeriodSeconds": 5, "maxUnavailable": 2}},
    {"operator": {"replicas": 3}},
]


@pytest.mark.parametrize("change", AGENT_CHANGES, ids=lambda c: yaml.safe_dump(c).strip())
def test_agent_values_leave_charons_pod_template_as_it_is(
    change: dict[str, Any], tmp_path: Path
) -> None:
    before = _charon({}, tmp_path)
    after = _charon(change, tmp_path)
    assert after["spec"] == before["spec"]


def test_a_new_chart_version_leaves_charons_pod_template_as_it_is(tmp_path: Path) -> None:
    """Chart and app versions label the objects, not charon's pods (the image tag is
    pinned here as a user pins it: a new default tag is a new charon, by design)."""
    pinned = {"charon": {"image": {"tag": "5.9.8-1"}}}
    chart = tmp_path / "routevpn"
    shutil.copytree(CHART, chart)
    meta = chart / "Chart.yaml"
    text = yaml.safe_load(meta.read_text())
    meta.write_text(yaml.safe_dump({**text, "version": "9.9.9", "appVersion": "9.9.9"}))
    before = _charon(pinned, tmp_path)
    after = _charon(pinned, tmp_path, chart)
    assert after["metadata"]["labels"] != before["metadata"]["labels"]
    assert after["spec"] == before["spec"]


def test_charons_own_changes_are_a_new_pod_template(tmp_path: Path) -> None:
    base = _charon({}, tmp_path)["spec"]["template"]
    conf = _charon({"charon": {"strongswanConf": "charon {\n}\n"}}, tmp_path)
    assert conf["spec"]["template"]["metadata"] != base["metadata"]  # the checksum
    image = _charon({"charon": {"image": {"tag": "5.9.8-2"}}}, tmp_path)
    assert image["spec"]["template"]["spec"] != base["spec"]


def test_charon_updates_on_delete_by_default(tmp_path: Path) -> None:
    assert _charon({}, tmp_path)["spec"]["updateStrategy"] == {"type": "OnDelete"}
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    ds = _charon({"charon": {"updateStrategy": rolling}}, tmp_path)
    assert ds["spec"]["updateStrategy"] == rolling


@pytest.mark.parametrize(
    "strategy",
    [
        {"type": "Recreate"},
        # two charons can't both hold the node's UDP 500: no surge
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
    ],
)
def test_bad_update_strategies_are_refused(strategy: dict[str, Any], tmp_path: Path) -> None:
    vfile = tmp_path / "values.yaml"
    vfile.write_text(yaml.safe_dump({"charon": {"updateStrategy": strategy}}))
    res = helm("template", "rv", str(CHART), "-f", str(vfile), check=False)
    assert res.returncode != 0, f"accepted: {strategy}"


def test_charon_runs_where_the_agent_runs(tmp_path: Path) -> None:
    placement = {
        "nodeSelector": {"routevpn.io/gateway": "true"},
        "tolerations": [{"key": "gw", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "system-node-critical",
    }
    docs = render({"agent": placement}, tmp_path)
    pods = [find(docs, "DaemonSet", c)["spec"]["template"]["spec"] for c in ("agent", "charon")]
    for key in placement:
        assert pods[0][key] == pods[1][key], key
    assert pods[1]["nodeSelector"]["routevpn.io/gateway"] == "true"
    assert pods[1]["tolerations"] == placement["tolerations"]
