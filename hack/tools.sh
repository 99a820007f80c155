#!/usr/bin/env bash
# Pinned chart tools, built from their Go modules and cached under $ROUTEVPN_CACHE:
#   helm         helm.sh/helm/v3             (version: hack/tools/go.mod)
#   kubeconform  github.com/yannh/kubeconform (version: hack/tools/go.mod)
#   schemas      JSON schemas for kubeconform: the Kubernetes types from the swagger.json
#                of the same Kubernetes release hack/local-cluster.sh builds (hack/k8s/go.mod),
#                converted offline; kubeconform would otherwise download them.
#   promtool     github.com/prometheus/prometheus (version: PROMETHEUS_VERSION below): the
#   prometheus   alert rules' tests (promtool test rules) and the cluster tier's real
#                Prometheus, both from one `go build` of the one module download.
#
# Usage: hack/tools.sh build          build what is missing (idempotent; fast when cached)
#        hack/tools.sh path NAME      print where NAME (helm | kubeconform | schemas |
#                                     promtool | prometheus) is
#        hack/tools.sh versions       print the pinned versions
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ROUTEVPN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/routevpn}"
TOOLS_MOD="$ROOT/hack/tools"
K8S_MOD="$ROOT/hack/k8s"

log() { printf 'tools: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# The version a go.mod requires of a module: the one go.sum was made for, so the build is
# exactly what was reviewed.
mod_version() {
    local gomod="$1" module="$2"
    awk -v m="$module" '
        $1 == "require" && $2 == m { print $3; exit }
        $1 == m && $2 ~ /^v/ { print $2; exit }' "$gomod"
}

HELM_VERSION="$(mod_version "$TOOLS_MOD/go.mod" helm.sh/helm/v3)"
KUBECONFORM_VERSION="$(mod_version "$TOOLS_MOD/go.mod" github.com/yannh/kubeconform)"
K8S_VERSION="$(mod_version "$K8S_MOD/go.mod" k8s.io/kubernetes)"
# Prometheus is built in its own module, with its own go.mod and go.sum as released (a
# require in hack/tools/go.mod would let its hundreds of dependencies move helm's).
PROMETHEUS_MODULE=github.com/prometheus/prometheus
PROMETHEUS_VERSION=v0.316.0
# helm's default Capabilities (what `helm template`/`lint` assume with no cluster) follow
# the client-go it is built with (v0.X.y -> Kubernetes 1.X), as helm's own Makefile sets them.
CLIENT_GO_MINOR="$(mod_version "$TOOLS_MOD/go.mod" k8s.io/client-go | cut -d. -f2)"
[[ -n "$HELM_VERSION" && -n "$KUBECONFORM_VERSION" && -n "$K8S_VERSION" && -n "$CLIENT_GO_MINOR" ]] ||
    die "could not read the pinned versions from hack/tools/go.mod and hack/k8s/go.mod"

BIN="$CACHE/bin"
helm_bin="$BIN/helm-$HELM_VERSION-k8s1.$CLIENT_GO_MINOR"
kubeconform_bin="$BIN/kubeconform-$KUBECONFORM_VERSION"
schemas_dir="$CACHE/schemas/kubernetes-$K8S_VERSION"
prometheus_dir="$BIN/prometheus-$PROMETHEUS_VERSION"

# Two cores are shared with the kube-apiserver build: one package at a time.
export GOFLAGS="-p=1 -buildvcs=false ${GOFLAGS:-}"

build_go_tool() {
    local out="$1" pkg="$2" ldflags="$3"
    [[ -x "$out" ]] && return 0
    log "building $pkg -> $out (a few minutes on 2 cores)"
    mkdir -p "$BIN"
    (cd "$TOOLS_MOD" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
}

build_helm() {
    # helm reports this version (and compares charts' kubeVersion against the client-go
    # version it was built with); without it `helm version` says "v3.x+unreleased".
    build_go_tool "$helm_bin" helm.sh/helm/v3/cmd/helm \
        "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
         -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
         -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$CLIENT_GO_MINOR \
         -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
         -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$CLIENT_GO_MINOR"
}

build_kubeconform() {
    build_go_tool "$kubeconform_bin" github.com/yannh/kubeconform/cmd/kubeconform "-s -w"
}

build_prometheus() {
    [[ -x "$prometheus_dir/promtool" && -x "$prometheus_dir/prometheus" ]] && return 0
    local dir
    # The module as released (checksum-verified by the go command), built where it was
    # unpacked: its own go.mod/go.sum pin every dependency. GOWORK=off: the zip carries
    # the repository's go.work, whose other modules are not in it. remove_all_sd: only
    # static and file service discovery, which is all the tests configure (the cloud SDKs
    # would double the build). No web UI assets (builtinassets): the HTTP API is enough.
    dir="$(cd "$TOOLS_MOD" && go mod download -json "$PROMETHEUS_MODULE@$PROMETHEUS_VERSION" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    log "building promtool and prometheus $PROMETHEUS_VERSION -> $prometheus_dir (about 7 minutes on 2 cores)"
    rm -rf "$prometheus_dir.tmp"
    mkdir -p "$prometheus_dir.tmp"
    (cd "$dir" && GOWORK=off CGO_ENABLED=0 go build -trimpath -tags remove_all_sd \
        -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}" \
        -o "$prometheus_dir.tmp/" ./cmd/promtool ./cmd/prometheus)
    rm -rf "$prometheus_dir"
    mv "$prometheus_dir.tmp" "$prometheus_dir"
}

build_schemas() {
    [[ -f "$schemas_dir/.complete" ]] && return 0
    local dir swagger
    # The k8s.io/kubernetes module carries api/openapi-spec/swagger.json: the same
    # definitions the apiserver of that release serves at /openapi/v2.
    dir="$(cd "$K8S_MOD" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    swagger="$dir/api/openapi-spec/swagger.json"
    [[ -f "$swagger" ]] || die "no swagger.json in k8s.io/kubernetes@$K8S_VERSION ($swagger)"
    log "converting $swagger -> $schemas_dir"
    rm -rf "$schemas_dir.tmp"
    python3 "$TOOLS_MOD/openapi2jsonschema.py" k8s "$swagger" "$schemas_dir.tmp"
    touch "$schemas_dir.tmp/.complete"
    rm -rf "$schemas_dir"
    mv "$schemas_dir.tmp" "$schemas_dir"
}

cmd="${1:-build}"
case "$cmd" in
build)
    command -v go >/dev/null || die "go is not installed"
    build_helm
    build_kubeconform
    build_schemas
    build_prometheus
    ln -sfn "$(basename "$helm_bin")" "$BIN/helm"
    ln -sfn "$(basename "$kubeconform_bin")" "$BIN/kubeconform"
    log "helm $HELM_VERSION, kubeconform $KUBECONFORM_VERSION, schemas of Kubernetes $K8S_VERSION, prometheus $PROMETHEUS_VERSION in $CACHE"
    ;;
path)
    case "${2:-}" in
    helm) echo "$helm_bin" ;;
    kubeconform) echo "$kubeconform_bin" ;;
    schemas) echo "$schemas_dir" ;;
    promtool | prometheus) echo "$prometheus_dir/$2" ;;
    *) die "usage: $0 path helm|kubeconform|schemas|promtool|prometheus" ;;
    esac
    ;;
versions)
    printf 'helm %s\nkubeconform %s\nkubernetes %s\nprometheus %s\n' "$HELM_VERSION" "$KUBECONFORM_VERSION" \
        "$K8S_VERSION" "$PROMETHEUS_VERSION"
    ;;
*)
    die "usage: $0 build | path helm|kubeconform|schemas|promtool|prometheus | versions"
    ;;
esac
