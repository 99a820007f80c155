#!/usr/bin/env bash
# routevpn on kind: a real cluster (control plane + two gateway workers) on a Docker host.
#
# Usage: kind/cluster.sh [--dry-run] STEP...
#   up        all of: create build load install peer example
#   create    the docker networks and the kind cluster (kind/cluster.yaml)
#   build     the images: routevpn:dev (Dockerfile), routevpn-charon:dev (images/charon)
#   load      load both images into the kind nodes
#   install   helm install the chart (kind/values.yaml); operator namespace `restricted`
#   peer      the far-end IPsec peer: a charon container at 198.51.100.100 with a PSK
#   example   kind/policy.yaml (the admin's grant), the PSK Secret and kind/example-tunnel.yaml
#             (applied server-side, as Argo CD would); wait until it is Ready
#   e2e       the end-to-end module the node tier runs on the lab node (tests/node/test_e2e.py)
#             and the cluster test suite, against this cluster (ROUTEVPN_KUBECONFIG)
#   down      delete the cluster, the peer and the networks
#
# --dry-run prints every command instead of running it (nothing needs Docker then).
# Needs: docker (a running engine), kind, kubectl, helm (hack/tools.sh builds one).
# Environment: ROUTEVPN_CACHE (state: kubeconfig, peer config), KIND_CLUSTER_NAME.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ROUTEVPN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/routevpn}"
CLUSTER="${KIND_CLUSTER_NAME:-routevpn}"
STATE="$CACHE/kind/$CLUSTER"
KUBECONFIG_FILE="$STATE/kubeconfig"

# Documentation ranges only (RFC 5737): never 10/8, 172.16/12 or 192.168/16.
NODE_NET=routevpn-kind
NODE_SUBNET=198.51.100.0/24
NODE_GATEWAY=198.51.100.1
LAN_NET=routevpn-kind-lan
LAN_SUBNET=192.0.2.128/25
LAN_GATEWAY=192.0.2.254
PEER=routevpn-kind-peer
PEER_ADDR=198.51.100.100
PEER_LAN_ADDR=192.0.2.129

APP_IMAGE=routevpn:dev
CHARON_IMAGE=routevpn-charon:dev
RELEASE=routevpn
NAMESPACE=routevpn-system
DRY_RUN=0

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'kind/cluster.sh: %s\n' "$*" >&2; exit 1; }

# Run a command, or with --dry-run print it (shell-quoted) and carry on.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

need() {
    local tool
    for tool in "$@"; do
        if ((DRY_RUN)); then
            printf '+ # needs %s\n' "$tool"
        elif ! command -v "$tool" >/dev/null; then
            die "$tool is not installed (see docs/install.md)"
        fi
    done
}

helm_bin() {
    if command -v helm >/dev/null; then
        command -v helm
    else
        "$ROOT/hack/tools.sh" path helm
    fi
}

kube() { run kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

docker_network() {
    local name="$1" subnet="$2" gateway="$3"
    if ((DRY_RUN)) || ! docker network inspect "$name" >/dev/null 2>&1; then
        run docker network create --driver bridge --subnet "$subnet" --gateway "$gateway" "$name"
    fi
}

step_create() {
    need docker kind
    log "networks $NODE_NET ($NODE_SUBNET) and $LAN_NET ($LAN_SUBNET)"
    docker_network "$NODE_NET" "$NODE_SUBNET" "$NODE_GATEWAY"
    docker_network "$LAN_NET" "$LAN_SUBNET" "$LAN_GATEWAY"
    log "kind cluster $CLUSTER"
    run mkdir -p "$STATE"
    # kind puts its nodes on this network instead of creating its own "kind" network
    # (whose addresses Docker would pick from 172.16/12).
    run env KIND_EXPERIMENTAL_DOCKER_NETWORK="$NODE_NET" \
        kind create cluster --name "$CLUSTER" --config "$ROOT/kind/cluster.yaml" \
        --kubeconfig "$KUBECONFIG_FILE" --wait 120s
}

step_build() {
    need docker
    log "images $APP_IMAGE and $CHARON_IMAGE"
    run docker build -t "$APP_IMAGE" "$ROOT"
    run docker build -t "$CHARON_IMAGE" "$ROOT/images/charon"
}

step_load() {
    need kind
    log "loading images into $CLUSTER"
    run kind load docker-image --name "$CLUSTER" "$APP_IMAGE" "$CHARON_IMAGE"
}

step_install() {
    need kubectl
    local helm
    helm="$(helm_bin)"
    log "helm install $RELEASE into $NAMESPACE (restricted) + routevpn-agent (privileged)"
    # create-or-keep: a second `install` must not fail on an existing namespace.
    if ((DRY_RUN)); then
        printf '+ kubectl create namespace %q --dry-run=client -o yaml | kubectl apply -f -\n' \
            "$NAMESPACE"
    else
        kubectl --kubeconfig "$KUBECONFIG_FILE" create namespace "$NAMESPACE" \
            --dry-run=client -o yaml | kubectl --kubeconfig "$KUBECONFIG_FILE" apply -f -
    fi
    kube label namespace "$NAMESPACE" --overwrite pod-security.kubernetes.io/enforce=restricted
    run "$helm" --kubeconfig "$KUBECONFIG_FILE" upgrade --install "$RELEASE" "$ROOT/charts/routevpn" \
        --namespace "$NAMESPACE" -f "$ROOT/kind/values.yaml" --wait --timeout 5m
}

step_peer() {
    need docker
    log "far-end peer $PEER at $PEER_ADDR (LAN $PEER_LAN_ADDR)"
    local psk conf="$STATE/peer/swanctl.conf"
    run mkdir -p "$STATE/peer"
    if ((DRY_RUN)); then
        psk='<generated>'
    elif [[ -s "$STATE/peer/psk" ]]; then
        psk="$(cat "$STATE/peer/psk")"
    else
        psk="$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 40)"
        (umask 077 && printf '%s' "$psk" >"$STATE/peer/psk")
    fi
    if ((DRY_RUN)); then
        printf '+ sed s/@PSK@/<psk>/ %q > %q\n' "$ROOT/kind/peer/swanctl.conf.in" "$conf"
    else
        (umask 077 && sed "s/@PSK@/$psk/" "$ROOT/kind/peer/swanctl.conf.in" >"$conf")
    fi
    run docker rm -f "$PEER"
    # charon in the background, then its connection loaded over VICI once the socket exists.
    run docker run -d --name "$PEER" --network "$NODE_NET" --ip "$PEER_ADDR" \
        --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_BIND_SERVICE --tmpfs /run \
        -v "$conf:/etc/swanctl/swanctl.conf:ro" --entrypoint /bin/sh "$CHARON_IMAGE" -c \
        'mkdir -p /run/routevpn && /usr/lib/ipsec/charon & pid=$!;
         for _ in $(seq 100); do [ -S /run/routevpn/charon.vici ] && break; sleep 0.1; done;
         swanctl --load-all --uri unix:///run/routevpn/charon.vici && wait $pid'
    run docker network connect --ip "$PEER_LAN_ADDR" "$LAN_NET" "$PEER"
}

step_example() {
    need kubectl
    log "PSK Secret and the example tunnel"
    local psk='<psk>'
    if ((!DRY_RUN)); then
        psk="$(cat "$STATE/peer/psk")"
    fi
    if ((DRY_RUN)); then
        printf '+ kubectl -n default create secret generic kind-peer-psk --from-literal=psk=%s' "$psk"
        printf ' --dry-run=client -o yaml | kubectl label --local -f - routevpn.io/usage=ike -o yaml'
        printf ' | kubectl apply -f -\n'
    else
        kubectl --kubeconfig "$KUBECONFIG_FILE" -n default create secret generic kind-peer-psk \
            --from-literal=psk="$psk" --dry-run=client -o yaml |
            kubectl label --local -f - routevpn.io/usage=ike -o yaml |
            kubectl --kubeconfig "$KUBECONFIG_FILE" apply -f -
    fi
    kube apply --server-side -f "$ROOT/kind/policy.yaml"
    kube apply --server-side --field-manager=argocd-controller -f "$ROOT/kind/example-tunnel.yaml"
    kube -n default wait --for=condition=Ready vpntunnel/kind-peer --timeout=300s
    kube -n default get vpntunnel kind-peer -o wide
}

step_e2e() {
    log "end-to-end module and cluster suite against $CLUSTER"
    # The same module the node tier runs against the lab node; here it is told where the
    # release and the example tunnel are (these are also its defaults).
    run env ROUTEVPN_KUBECONFIG="$KUBECONFIG_FILE" \
        ROUTEVPN_KUBECTL="$(command -v kubectl || echo kubectl)" \
        ROUTEVPN_E2E_RELEASE="$RELEASE" ROUTEVPN_E2E_NAMESPACE="$NAMESPACE" \
        ROUTEVPN_E2E_AGENT_NAMESPACE=routevpn-agent ROUTEVPN_E2E_TUNNEL=default/kind-peer \
        ROUTEVPN_E2E_MANIFEST="$ROOT/kind/example-tunnel.yaml" \
        "$ROOT/.venv/bin/pytest" "$ROOT/tests/node/test_e2e.py" -m node
    run env ROUTEVPN_KUBECONFIG="$KUBECONFIG_FILE" \
        ROUTEVPN_KUBECTL="$(command -v kubectl || echo kubectl)" \
        "$ROOT/.venv/bin/pytest" "$ROOT/tests/cluster" -m cluster
}

step_down() {
    need docker kind
    log "deleting $CLUSTER, $PEER and the networks"
    run kind delete cluster --name "$CLUSTER"
    run docker rm -f "$PEER"
    run docker network rm "$LAN_NET" "$NODE_NET"
}

main() {
    local steps=()
    while (($#)); do
        case "$1" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
            return 0
            ;;
        up) steps+=(create build load install peer example) ;;
        create | build | load | install | peer | example | e2e | down) steps+=("$1") ;;
        *) die "unknown step: $1 (try --help)" ;;
        esac
        shift
    done
    ((${#steps[@]})) || die "no step given (try --help)"
    local step
    for step in "${steps[@]}"; do
        "step_$step"
    done
    if ((!DRY_RUN)) && [[ " ${steps[*]} " == *" example "* ]]; then
        log "done. Run the suite: kind/cluster.sh e2e   (kubeconfig: $KUBECONFIG_FILE)"
    fi
}

main "$@"
