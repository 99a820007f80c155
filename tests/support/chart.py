"""Render the routevpn chart with the pinned helm and validate it with kubeconform.

Both tools come from ``hack/tools.sh build`` (Go-built, cached); the Kubernetes schemas
are converted offline from the pinned release's swagger.json, and the CRDs' schemas from
the chart's own crds/, so nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from support.tiers import missing

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "routevpn"
TOOLS_SH = ROOT / "hack" / "tools.sh"
CONVERTER = ROOT / "hack" / "tools" / "openapi2jsonschema.py"

Manifest = dict[str, Any]

#: Value sets every render test runs over: the defaults and the corners users will take.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "separate-agent-namespace": {
        "agent": {"namespace": "routevpn-agent"},
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
            "dashboard": {"enabled": True},
        },
    },
    "minimal": {
        "operator": {
            "replicas": 1,
            "podDisruptionBudget": {"enabled": False},
        },
        "agent": {
            "kernelModules": {"load": False},
            "mountProcSysNet": False,
            "specGuard": {"enabled": False},
            "nodeGuard": {"enabled": False},
        },
        "metrics": {"service": {"enabled": False}},
    },
    "customised": {
        "image": {"repository": "registry.example.org/routevpn", "digest": "sha256:" + "a" * 64},
        "charon": {"image": {"repository": "registry.example.org/charon", "tag": "5.9.8-1"}},
        "imagePullSecrets": [{"name": "registry-creds"}],
        "commonLabels": {"team": "network"},
        "operator": {
            "replicas": 3,
            "extraArgs": ["--concurrency=16"],
            "watchNamespaces": ["tenant-a", "tenant-b"],
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra"}],
            "priorityClassName": "system-cluster-critical",
            "podAnnotations": {"example.org/note": "x"},
        },
        "agent": {
            "nodeSelector": {"routevpn.io/gateway": "true"},
            "httpPort": 19478,
            "bindAddress": "192.0.2.7",
            "createNamespace": False,
            "namespace": "existing-agent-ns",
        },
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "tunnelDownFor": "10m",
                "operatorJob": "routevpn-operator",
                "runbookBaseUrl": "https://docs.example.org/routevpn/alerts",
            },
            "dashboard": {"enabled": True, "namespace": "grafana", "labels": {"dash": "yes"}},
        },
    },
}

#: kubeconform's schema-location templates for our two offline layouts.
K8S_TEMPLATE = "standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
CRD_TEMPLATE = "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"

#: Helm's limit on release names; with it every generated name must still fit in 63.
LONG_RELEASE = "r" * 53


def tool(name: str) -> Path:
    """Path of a pinned tool (helm, kubeconform, schemas), or skip/fail if not built."""
    res = subprocess.run(
        ["bash", str(TOOLS_SH), "path", name],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    path = Path(res.stdout.strip())
    if res.returncode != 0 or not path.exists():
        missing(f"{name}: run hack/tools.sh build")
    return path


def _write_values(values: Mapping[str, Any], dest: Path) -> Path:
    dest.write_text(yaml.safe_dump(dict(values)))
    return dest


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm."""
    res = subprocess.run(
        [str(tool("helm")), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stderr}")
    return res


def render_text(
    values: Mapping[str, Any],
    tmp: Path,
    *,
    release: str = "rv",
    namespace: str = "routevpn-system",
    include_crds: bool = False,
) -> str:
    """`helm template` output for `values`, as text."""
    vfile = _write_values(values, tmp / f"values-{release}.yaml")
    args = ["template", release, str(CHART), "--namespace", namespace, "-f", str(vfile)]
    if include_crds:
        args.append("--include-crds")
    return helm(*args).stdout


def render(values: Mapping[str, Any], tmp: Path, **kw: Any) -> list[Manifest]:
    """`helm template` output for `values`, as a list of objects."""
    return [d for d in yaml.safe_load_all(render_text(values, tmp, **kw)) if d]


def crd_schemas(out: Path) -> Path:
    """JSON schemas of every CRD in the chart's crds/ (kubeconform's CRD layout)."""
    files = sorted(str(p) for p in (CHART / "crds").glob("*.yaml"))
    subprocess.run(
        [sys.executable, str(CONVERTER), "crd", str(out), *files],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def kubeconform(manifests: str, crd_dir: Path) -> subprocess.CompletedProcess[str]:
    """kubeconform -strict over `manifests` with the offline schemas only."""
    schemas = tool("schemas")
    return subprocess.run(
        [
            str(tool("kubeconform")),
            "-strict",
            "-summary",
            "-output",
            "text",
            "-kubernetes-version",
            "1.37.2",
            "-schema-location",
            f"{schemas}/{K8S_TEMPLATE}",
            "-schema-location",
            f"{crd_dir}/{CRD_TEMPLATE}",
            # The Prometheus Operator's CRDs are not ours to ship; everything else must match.
            # (promtool checks the PrometheusRule's rules: tests/unit/chart/test_chart_alerts.py)
            "-skip",
            "monitoring.coreos.com/v1/ServiceMonitor,monitoring.coreos.com/v1/PrometheusRule",
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def find(docs: list[Manifest], kind: str, name_part: str = "") -> Manifest:
    """The one object of `kind` whose name contains `name_part`."""
    hits = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(hits) == 1, f"expected one {kind} named *{name_part}*, got {len(hits)}"
    return hits[0]


def containers(workload: Manifest) -> dict[str, Manifest]:
    """Containers and init containers of a Deployment/DaemonSet, by name."""
    spec = workload["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}
