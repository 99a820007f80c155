#!/usr/bin/env bash
# Regenerate every generated file from the code: the CRDs in crds/ and its copy in the chart,
# and the metrics reference docs/metrics.md. Tests fail when these drift
# (tests/unit/api/test_crd.py, tests/unit/chart/, tests/unit/test_metrics_doc.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m routevpn crd > crds/vpntunnels.routevpn.io.yaml
"$PY" -m routevpn crd policy > crds/vpntunnelpolicies.routevpn.io.yaml
cp crds/vpntunnels.routevpn.io.yaml charts/routevpn/crds/vpntunnels.routevpn.io.yaml
cp crds/vpntunnelpolicies.routevpn.io.yaml charts/routevpn/crds/vpntunnelpolicies.routevpn.io.yaml
"$PY" -m routevpn metrics > docs/metrics.md
echo "generate: crds/, charts/routevpn/crds/ and docs/metrics.md are up to date" >&2
