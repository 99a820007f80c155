#!/usr/bin/env bash
# Set up everything the tests and the demo need on a fresh Debian machine (as root).
# Idempotent: a second run only checks. Heavy artefacts (Go-built kube-apiserver, etcd,
# kubectl, helm, kubeconform; the node's kubelet, containerd, runc and CNI plugins; the
# container images as OCI archives; the lab's initramfs) are cached under $ROUTEVPN_CACHE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROUTEVPN_CACHE="${ROUTEVPN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/routevpn}"
cd "$ROOT"

log() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------
mapfile -t want < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' hack/apt-packages.txt | grep -v '^$')
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python ------------------------------------------------------------------------
PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
stamp=".venv/.routevpn-installed"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    log "installing routevpn and its development tools into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi

# --- Go-built tools and images (pinned, cached) -------------------------------------
for tool in hack/local-cluster.sh hack/tools.sh hack/node.sh hack/images.sh; do
    if [[ -x "$tool" ]]; then
        "$tool" build
    fi
done
log "ready"
