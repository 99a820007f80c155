#!/usr/bin/env bash
# Regenerate every generated file from the code: the CRDs in crds/ and its copy in the chart.
# Tests fail when these drift (tests/unit/api/test_crd.py, tests/unit/chart/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m routevpn crd > crds/vpntunnels.routevpn.io.yaml
"$PY" -m routevpn crd policy > crds/vpntunnelpolicies.routevpn.io.yaml
cp crds/vpntunnels.routevpn.io.yaml charts/routevpn/crds/vpntunnels.routevpn.io.yaml
cp crds/vpntunnelpolicies.routevpn.io.yaml charts/routevpn/crds/vpntunnelpolicies.routevpn.io.yaml
echo "generate: crds/ and charts/routevpn/crds/ are up to date" >&2
