#!/usr/bin/env bash
# The lab from the command line: a fresh QEMU guest with a real IPsec kernel.
#   hack/lab.sh run [--net] [--forward PORT] [--timeout S] -- CMD...   (in the repo, as root)
#   hack/lab.sh build      build (or find) the cached initramfs under $ROUTEVPN_CACHE/lab
#   hack/lab.sh accel      say whether KVM or TCG (software emulation) is used here
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || PY=python3
# As a module, not a script: a script's own folder would go first on sys.path, and
# tests/support/operator.py would then shadow the standard library's `operator`.
cd "$ROOT"
PYTHONPATH="$ROOT/tests${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m support.lab "$@"
