#!/usr/bin/env bash
# A real Kubernetes node's binaries, at pinned versions built from their Go modules and
# cached under $ROUTEVPN_CACHE like the control plane:
#   kubelet                      hack/k8s (the same module and release as the apiserver)
#   containerd, containerd-shim-runc-v2, ctr, runc, CNI bridge/host-local/loopback
#                                hack/node/go.mod
# The node itself runs inside the QEMU lab guest (tests/support/node.py starts it).
#
# Usage: hack/node.sh build        build what is missing (idempotent; fast when cached)
#        hack/node.sh bindir       print the binaries' directory (exit 3: not built)
#        hack/node.sh versions     print the pinned versions
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ROUTEVPN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/routevpn}"
K8S_MOD="$ROOT/hack/k8s"
NODE_MOD="$ROOT/hack/node"

log() { [[ "${ROUTEVPN_QUIET:-}" == 1 ]] || printf 'node: %s\n' "$*" >&2; }
die() {
    printf 'node: error: %s\n' "$*" >&2
    exit 1
}

mod_version() {
    awk -v m="$2" '
        $1 == "require" && $2 == m { print $3; exit }
        $1 == m && $2 ~ /^v/ { print $2; exit }' "$1"
}

K8S_VERSION="$(mod_version "$K8S_MOD/go.mod" k8s.io/kubernetes)"
CONTAINERD_VERSION="$(mod_version "$NODE_MOD/go.mod" github.com/containerd/containerd/v2)"
RUNC_VERSION="$(mod_version "$NODE_MOD/go.mod" github.com/opencontainers/runc)"
CNI_VERSION="$(mod_version "$NODE_MOD/go.mod" github.com/containernetworking/plugins)"
[[ -n "$K8S_VERSION" && -n "$CONTAINERD_VERSION" && -n "$RUNC_VERSION" && -n "$CNI_VERSION" ]] ||
    die "could not read the pinned versions from hack/k8s/go.mod and hack/node/go.mod"

BINS=(kubelet containerd containerd-shim-runc-v2 ctr runc cni/bridge cni/host-local cni/loopback)

digest() {
    {
        printf '%s\n' "$K8S_VERSION" "$CONTAINERD_VERSION" "$RUNC_VERSION" "$CNI_VERSION"
        "$ROOT/hack/local-cluster.sh" ldflags
        cat "$K8S_MOD/go.mod" "$K8S_MOD/go.sum" "$NODE_MOD/go.mod" "$NODE_MOD/go.sum"
    } | sha256sum | cut -c1-16
}

BIN="$CACHE/bin/node-k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION"

built() {
    [[ -f "$BIN/.digest" && "$(cat "$BIN/.digest")" == "$(digest)" ]] || return 1
    local b
    for b in "${BINS[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

cmd_build() {
    mkdir -p "$CACHE/bin"
    {
        flock 9
        build_locked
    } 9>"$CACHE/bin/.build.lock"
}

build_locked() {
    if built; then
        log "binaries cached in $BIN"
        return 0
    fi
    command -v go >/dev/null || die "go is not installed: it is needed once to build the node"
    command -v gcc >/dev/null || die "gcc is not installed (hack/apt-packages.txt): runc needs cgo"
    log "building kubelet $K8S_VERSION, containerd $CONTAINERD_VERSION, runc $RUNC_VERSION, CNI plugins $CNI_VERSION"
    local tmp="$BIN.tmp.$$" logf="$CACHE/bin/node-build.log" t0=$SECONDS
    rm -rf "$tmp"
    mkdir -p "$tmp/cni" "$CACHE/go/mod" "$CACHE/go/build"
    # As for the control plane: shared caches, go.sum as the pin, never another Go.
    local -a goenv=(
        GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-mod=readonly -buildvcs=false"
        GOTOOLCHAIN=local
    )
    local cd_pkg=github.com/containerd/containerd/v2
    local cni_pkg=github.com/containernetworking/plugins
    if ! (
        set -e
        cd "$K8S_MOD"
        env "${goenv[@]}" CGO_ENABLED=0 go build -p 2 -trimpath \
            -ldflags "$("$ROOT/hack/local-cluster.sh" ldflags)" -o "$tmp/" k8s.io/kubernetes/cmd/kubelet
        cd "$NODE_MOD"
        # containerd without the snapshotters that need cgo (btrfs, devmapper, zfs): the
        # node uses overlayfs.
        env "${goenv[@]}" CGO_ENABLED=0 go build -p 2 -trimpath -tags "no_btrfs no_devmapper no_zfs" \
            -ldflags "-s -w -X $cd_pkg/version.Version=$CONTAINERD_VERSION" -o "$tmp/" \
            "$cd_pkg/cmd/containerd" "$cd_pkg/cmd/containerd-shim-runc-v2" "$cd_pkg/cmd/ctr"
        # runc needs cgo (its nsenter is C) and libseccomp for seccomp profiles.
        env "${goenv[@]}" CGO_ENABLED=1 go build -p 2 -trimpath -tags seccomp \
            -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" -o "$tmp/runc" github.com/opencontainers/runc
        env "${goenv[@]}" CGO_ENABLED=0 go build -p 2 -trimpath \
            -ldflags "-s -w -X $cni_pkg/pkg/utils/buildversion.BuildVersion=$CNI_VERSION" -o "$tmp/cni/" \
            "$cni_pkg/plugins/main/bridge" "$cni_pkg/plugins/ipam/host-local" "$cni_pkg/plugins/main/loopback"
    ) >"$logf" 2>&1; then
        rm -rf "$tmp"
        tail -n 30 "$logf" >&2
        die "build failed; full log: $logf"
    fi
    digest >"$tmp/.digest"
    rm -rf "$BIN"
    mv "$tmp" "$BIN"
    log "built into $BIN in $((SECONDS - t0))s"
}

cmd_bindir() {
    echo "$BIN"
    built || exit 3
}

main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
    build) cmd_build ;;
    bindir) cmd_bindir ;;
    versions)
        printf 'kubelet %s\ncontainerd %s\nrunc %s\ncni-plugins %s\n' \
            "$K8S_VERSION" "$CONTAINERD_VERSION" "$RUNC_VERSION" "$CNI_VERSION"
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
        exit 2
        ;;
    esac
}

main "$@"
