#!/usr/bin/env bash
# The project's container images, built here without a Docker engine and without pulling
# from any registry, as OCI archives a container runtime imports:
#
#   debian     localhost/debian:bookworm-slim, made with mmdebstrap from Debian's packages:
#              the base both Dockerfiles take through their DEBIAN_IMAGE argument
#   routevpn   docker.io/library/routevpn:dev        from ./Dockerfile, as it is
#   charon     docker.io/library/routevpn-charon:dev from images/charon/Dockerfile, as it is
#   pause      localhost/routevpn/pause:3.10.2       the sandbox image, compiled from the
#              source the pinned Kubernetes module ships (build/pause), with its Dockerfile
#
# Each archive is cached under $ROUTEVPN_CACHE/images by a digest of its inputs, so a
# second `build` only checks. Names are those a pod spec's `routevpn:dev` resolves to.
#
# Usage: hack/images.sh build          build what is missing (idempotent)
#        hack/images.sh path NAME      print NAME's archive (exit 3: not built)
#        hack/images.sh ref NAME       print NAME's image reference
#        hack/images.sh names          print the image names, one a line
#        hack/images.sh buildah ARGS…  run buildah on this script's own storage
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ROUTEVPN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/routevpn}"
OUT="$CACHE/images"
# buildah's own storage, apart from any the machine has: nothing here touches it.
STORE="$OUT/storage"
RUNROOT="$OUT/run"
K8S_MOD="$ROOT/hack/k8s"

SUITE=bookworm
BASE_REF="localhost/debian:bookworm-slim"
PAUSE_VERSION="3.10.2" # build/pause/Makefile's TAG in the pinned Kubernetes release
declare -A REF=(
    [debian]="$BASE_REF"
    [routevpn]="docker.io/library/routevpn:dev"
    [charon]="docker.io/library/routevpn-charon:dev"
    [pause]="localhost/routevpn/pause:$PAUSE_VERSION"
)
NAMES=(debian routevpn charon pause)
WORK="" # scratch space of one `build`, removed on exit

log() { printf 'images: %s\n' "$*" >&2; }
die() {
    printf 'images: error: %s\n' "$*" >&2
    exit 1
}

bh() { buildah --root "$STORE" --runroot "$RUNROOT" --storage-driver overlay "$@"; }

k8s_version() { awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$K8S_MOD/go.mod"; }

# Files' paths and contents → one short digest (paths relative to $ROOT).
files_digest() {
    (cd "$ROOT" && find "$@" -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# What decides each archive. The base image's digest is its archive's content, so the
# images above it are rebuilt exactly when the base was.
digest_of() {
    case "$1" in
    debian) printf '%s\n' "$SUITE" "$(mmdebstrap --version)" "${SLIM_OPTS[@]}" | sha256sum | cut -c1-16 ;;
    routevpn)
        {
            archive_digest debian
            files_digest hack/images.sh Dockerfile .dockerignore pyproject.toml README.md operator
        } | sha256sum | cut -c1-16
        ;;
    charon)
        {
            archive_digest debian
            files_digest hack/images.sh images/charon
        } | sha256sum | cut -c1-16
        ;;
    pause) printf '%s\n' "$(k8s_version)" "$PAUSE_VERSION" "$(gcc --version | head -n1)" | sha256sum | cut -c1-16 ;;
    *) die "unknown image: $1" ;;
    esac
}

archive_digest() {
    local f
    f="$(archive "$1")"
    if [[ -f "$f" ]]; then sha256sum "$f" | cut -c1-16; else echo missing; fi
}
archive() { echo "$OUT/$1-$(digest_of "$1").oci.tar"; }

# Debian's slim images leave out documentation, man pages and translations; so does ours.
SLIM_OPTS=(
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
)

push() {
    local name="$1" out="$2"
    rm -f "$out.tmp"
    bh push --quiet "${REF[$name]}" "oci-archive:$out.tmp:${REF[$name]}" >/dev/null
    mv "$out.tmp" "$out"
}

build_debian() {
    local out="$1" tmp
    tmp="$(mktemp -d -p "$WORK")"
    log "debian: mmdebstrap --variant=minbase $SUITE"
    mmdebstrap --quiet --variant=minbase "${SLIM_OPTS[@]}" "$SUITE" "$tmp/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n' >"$tmp/Containerfile"
    bh bud --quiet --pull=never --isolation chroot -t "$BASE_REF" -f "$tmp/Containerfile" "$tmp" >/dev/null
    push debian "$out"
}

# The base must be in buildah's storage for FROM ${DEBIAN_IMAGE}; it comes from its
# archive, never from a registry.
ensure_base() {
    if ! bh inspect --type image "$BASE_REF" >/dev/null 2>&1; then
        local id
        id="$(bh pull --quiet "oci-archive:$(archive debian)")"
        bh tag "$id" "$BASE_REF"
    fi
}

# A Dockerfile of this repository, as it is, with the base made above. The machines this
# runs on reach PyPI through TLS that only the host's CA bundle trusts: pip inside the
# build gets that bundle and a user pip.conf naming it, in a read-only directory mounted
# over the base's own (empty) /root for the build only. A mount point must already exist
# in the image, or the build leaves an empty file in its place (a file mounted at
# /etc/pip.conf would). Nothing of it ends up in the image; a Docker user needs none of it.
build_dockerfile() {
    local name="$1" out="$2" context="$3" tmp
    ensure_base
    tmp="$(mktemp -d -p "$WORK")"
    local -a mounts=()
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        mkdir -p "$tmp/home/.config/pip"
        cp /etc/ssl/certs/ca-certificates.crt "$tmp/home/host-ca.crt"
        printf '[global]\ncert = /root/host-ca.crt\n' >"$tmp/home/.config/pip/pip.conf"
        mounts=(-v "$tmp/home:/root:ro")
    fi
    log "$name: buildah bud $context (DEBIAN_IMAGE=$BASE_REF)"
    bh bud --quiet --pull=never --network host --isolation chroot --layers=false \
        "${mounts[@]}" --build-arg "DEBIAN_IMAGE=$BASE_REF" \
        -t "${REF[$name]}" -f "$context/Dockerfile" "$context" >"$tmp/build.log" 2>&1 ||
        {
            tail -n 40 "$tmp/build.log" >&2
            die "$name: build failed"
        }
    push "$name" "$out"
}

build_pause() {
    local out="$1" tmp zip k8s
    k8s="$(k8s_version)"
    zip="$CACHE/go/mod/cache/download/k8s.io/kubernetes/@v/$k8s.zip"
    if [[ ! -f "$zip" ]]; then
        (cd "$K8S_MOD" && GOMODCACHE="$CACHE/go/mod" GOFLAGS=-mod=readonly GOTOOLCHAIN=local \
            go mod download k8s.io/kubernetes)
    fi
    tmp="$(mktemp -d -p "$WORK")"
    (cd "$tmp" && unzip -q "$zip" "k8s.io/kubernetes@$k8s/build/pause/*")
    local src="$tmp/k8s.io/kubernetes@$k8s/build/pause"
    mkdir -p "$src/bin"
    log "pause: gcc -static build/pause/linux/pause.c (Kubernetes $k8s)"
    # The flags of build/pause/Makefile.
    gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-$k8s" \
        -o "$src/bin/pause-linux-amd64" "$src/linux/pause.c"
    strip "$src/bin/pause-linux-amd64"
    bh bud --quiet --pull=never --isolation chroot --build-arg BASE=scratch --build-arg ARCH=amd64 \
        -t "${REF[pause]}" -f "$src/Dockerfile" "$src" >/dev/null
    push pause "$out"
}

build_one() {
    local name="$1" out
    out="$(archive "$name")"
    if [[ -f "$out" ]]; then
        log "$name: cached $(basename "$out")"
        return 0
    fi
    mkdir -p "$OUT"
    local t0=$SECONDS
    case "$name" in
    debian) build_debian "$out" ;;
    routevpn) build_dockerfile routevpn "$out" "$ROOT" ;;
    charon) build_dockerfile charon "$out" "$ROOT/images/charon" ;;
    pause) build_pause "$out" ;;
    esac
    # Older archives of this image are superseded, but the cache is shared by every
    # checkout of this machine (a worktree may still test the one before): keep the
    # three newest.
    find "$OUT" -maxdepth 1 -name "$name-*.oci.tar" -printf '%T@ %p\n' | sort -rn |
        tail -n +4 | cut -d' ' -f2- | xargs -r rm -f --
    log "$name: built $(basename "$out") in $((SECONDS - t0))s ($(du -h "$out" | cut -f1))"
}

cmd_build() {
    local tool
    for tool in buildah mmdebstrap gcc unzip; do
        command -v "$tool" >/dev/null || die "$tool is not installed (hack/apt-packages.txt)"
    done
    mkdir -p "$OUT"
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    # One build at a time per cache; the lock is held only while building.
    {
        flock 9
        local name
        for name in "${NAMES[@]}"; do build_one "$name"; done
    } 9>"$OUT/.build.lock"
}

main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
    build) cmd_build ;;
    path)
        [[ -n "${REF[${1:-}]:-}" ]] || die "unknown image: ${1:-}"
        archive "$1"
        [[ -f "$(archive "$1")" ]] || exit 3
        ;;
    ref)
        [[ -n "${REF[${1:-}]:-}" ]] || die "unknown image: ${1:-}"
        echo "${REF[$1]}"
        ;;
    names) printf '%s\n' "${NAMES[@]}" ;;
    buildah) bh "$@" ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
        exit 2
        ;;
    esac
}

main "$@"
