#!/usr/bin/env bash
# The test command: set up (idempotent), then lint, type-check, check the layer
# contracts and run every test tier (unit, netns, cluster, lab). Extra arguments go to
# pytest, e.g. `hack/test.sh -m unit`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash hack/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate

echo "== ruff check" && ruff check .
echo "== ruff format --check" && ruff format --check .
echo "== mypy --strict" && mypy
echo "== import-linter" && lint-imports
echo "== pytest"
set +e
pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "pytest collected no test: that is a failure here" >&2
    exit 1
fi
exit "$rc"
