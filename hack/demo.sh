#!/usr/bin/env bash
# The demo, one command on a fresh Debian machine (as root): sets everything up, starts a
# real control plane and the operator on this machine, boots the lab (a QEMU guest with a
# kernel that has VTI and ESP) for the node running the agent and a hand-configured far
# end, applies examples/seed-ipv6-vti.yaml, shows `kubectl get vpnt` going Ready and a
# ping crossing the tunnel, deletes the tunnel, and cleans up after itself.
# `--helm`: the same story through the chart, on a real node (kubelet + containerd in the
# lab guest, the images built by hack/images.sh), installed and removed with helm.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash hack/setup.sh
exec .venv/bin/python hack/demo.py "$@"
