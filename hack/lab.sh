#!/usr/bin/env bash
# The lab from the command line: a fresh QEMU guest with a real IPsec kernel.
#   hack/lab.sh run [--net] [--forward PORT] [--timeout S] -- CMD...   (in the repo, as root)
#   hack/lab.sh build      build (or find) the cached initramfs under $ROUTEVPN_CACHE/lab
#   hack/lab.sh accel      say whether KVM or TCG (software emulation) is used here
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || PY=python3
exec "$PY" "$ROOT/tests/support/lab.py" "$@"
