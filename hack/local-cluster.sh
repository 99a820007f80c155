#!/usr/bin/env bash
# A real Kubernetes control plane on loopback: etcd, kube-apiserver and
# kube-controller-manager (namespace deletion, ownerReference garbage collection), at
# pinned versions built from their Go modules (hack/k8s) and cached. No kubelet: nodes
# are API objects, agents run as processes.
#
#   hack/local-cluster.sh build              build (or find cached) etcd, kube-apiserver,
#                                            kube-controller-manager and kubectl
#   hack/local-cluster.sh up                 start the control plane (harmless when up)
#   hack/local-cluster.sh down [--purge]     stop exactly what `up` started (by PID);
#                                            --purge also removes data, certs and logs
#   hack/local-cluster.sh status             exit 0 when up and healthy
#   hack/local-cluster.sh env [--server URL] print shell exports (KUBECONFIG, ROUTEVPN_KUBECTL, PATH)
#   hack/local-cluster.sh kubeconfig [--server URL]   print a kubeconfig
#   hack/local-cluster.sh bindir             print the binaries' directory (exit 3: not built)
#   hack/local-cluster.sh ldflags            print the Go ldflags that stamp the release
#                                            (hack/node.sh builds the kubelet with them)
#
# --server replaces the URL clients use, e.g. https://192.0.2.2:16443 for an agent in
# the QEMU lab guest, which reaches this host's loopback port through a user-network
# forward; the serving certificate is valid for that address too (see gen_certs).
#
# Settings (environment):
#   ROUTEVPN_CACHE            cache root (default ~/.cache/routevpn): Go caches, binaries
#   ROUTEVPN_CLUSTER_DIR      state: data, certs, logs, PIDs, kubeconfig
#                             (default $ROUTEVPN_CACHE/cluster)
#   ROUTEVPN_APISERVER_PORT   apiserver port on 127.0.0.1 (default 16443)
#   ROUTEVPN_ETCD_PORT        etcd client port (default 12379); peer port is +1
#   ROUTEVPN_KCM_PORT         kube-controller-manager secure port (default 10357)
#   ROUTEVPN_QUIET=1          no progress lines on stderr
#   ROUTEVPN_APISERVER_WAIT   seconds the apiserver may take to turn ready (default 90;
#                             an emulated CPU shared with another guest needs more)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_MOD="$ROOT/hack/k8s"
ETCD_MOD="$ROOT/hack/k8s/etcd"

# Pinned versions: these must match hack/k8s/go.mod and hack/k8s/etcd/go.mod (build
# checks). Kubernetes 1.37 requires etcd 3.6+ and is built and tested with 3.7.
K8S_VERSION="v1.37.2"
K8S_BUILD_DATE="2026-10-27T12:01:04Z" # the release's publication time: reproducible builds
ETCD_VERSION="v3.7.3"

CACHE="${ROUTEVPN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/routevpn}"
STATE="${ROUTEVPN_CLUSTER_DIR:-$CACHE/cluster}"
API_PORT="${ROUTEVPN_APISERVER_PORT:-16443}"
ETCD_PORT="${ROUTEVPN_ETCD_PORT:-12379}"
ETCD_PEER_PORT="$((ETCD_PORT + 1))"
KCM_PORT="${ROUTEVPN_KCM_PORT:-10357}"
HOST="127.0.0.1"
# Service IPs are only API bookkeeping here (no kube-proxy, no pods), but they must be
# a range this project may use: a documentation range, never 10/8 or 172.16/12.
SERVICE_CIDR="198.51.100.0/24"
SERVICE_IP="198.51.100.1"
# Where the QEMU lab guest reaches this host's loopback ports: QEMU's host alias (192.0.2.2)
# and the guestfwd service address (192.0.2.100; QEMU refuses a forward on its own host
# alias, see tests/support/labspec.py). Both must be in the serving certificate.
LAB_HOST_IP="192.0.2.2"
LAB_SERVICE_IP="192.0.2.100"

BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

log() { [[ "${ROUTEVPN_QUIET:-}" == 1 ]] || printf 'local-cluster: %s\n' "$*" >&2; }
die() {
    printf 'local-cluster: error: %s\n' "$*" >&2
    exit 1
}

# --- build ---------------------------------------------------------------------------

# A digest of everything that decides the binaries, so a cached build is reused only
# when it was built from the same pins and flags.
build_digest() {
    {
        printf '%s\n' "$K8S_VERSION" "$ETCD_VERSION" "$K8S_BUILD_DATE" "$(ldflags_k8s)"
        cat "$K8S_MOD/go.mod" "$K8S_MOD/go.sum" "$ETCD_MOD/go.mod" "$ETCD_MOD/go.sum"
    } | sha256sum | cut -c1-16
}

ldflags_k8s() {
    local minor p out="-s -w"
    minor="${K8S_VERSION#v1.}"
    minor="${minor%%.*}"
    # The variables Kubernetes' own hack/lib/version.sh sets, so `kubectl version` and
    # /version report the real release instead of v0.0.0-master.
    for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        out+=" -X '$p.gitVersion=$K8S_VERSION' -X '$p.gitMajor=1' -X '$p.gitMinor=$minor'"
        out+=" -X '$p.gitTreeState=archive' -X '$p.buildDate=$K8S_BUILD_DATE'"
    done
    printf '%s' "$out"
}

cmd_build() {
    mkdir -p "$CACHE/bin"
    # One build at a time per cache (hack/setup.sh may run in several shells at once);
    # a second caller waits, then finds the first one's binaries. The lock's descriptor
    # is open only around the build: daemons that `up` starts afterwards must not inherit
    # it, or a later `build` (hack/test.sh with a cluster up) would wait forever.
    {
        flock 9
        build_locked
    } 9>"$CACHE/bin/.build.lock"
}

build_locked() {
    local digest
    digest="$(build_digest)"
    if [[ -f "$BIN/.digest" && "$(cat "$BIN/.digest")" == "$digest" ]]; then
        local ok=1 b
        for b in "${COMPONENTS[@]}" kubectl; do [[ -x "$BIN/$b" ]] || ok=0; done
        if ((ok)); then
            log "binaries cached in $BIN"
            return 0
        fi
    fi
    command -v go >/dev/null || die "go is not installed: it is needed once to build the control plane"
    grep -q "k8s.io/kubernetes $K8S_VERSION\$" "$K8S_MOD/go.mod" ||
        die "hack/k8s/go.mod does not require k8s.io/kubernetes $K8S_VERSION"
    grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$ETCD_MOD/go.mod" ||
        die "hack/k8s/etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION"

    log "building Kubernetes $K8S_VERSION and etcd $ETCD_VERSION (first time: 10-30 min on 2 cores)"
    local tmp="$BIN.tmp.$$" logf="$CACHE/bin/build.log"
    mkdir -p "$tmp" "$CACHE/go/mod" "$CACHE/go/build"
    # Caches live under the cache root so a rebuild after a go.mod change is incremental;
    # -mod=readonly makes a go.sum mismatch fail instead of silently updating the pins;
    # GOTOOLCHAIN=local: never download another Go; CGO off like release builds.
    local -a goenv=(
        GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS=-mod=readonly
        GOTOOLCHAIN=local CGO_ENABLED=0
    )
    if ! (
        cd "$K8S_MOD" &&
            env "${goenv[@]}" go build -p 2 -trimpath -ldflags "$(ldflags_k8s)" -o "$tmp/" \
                k8s.io/kubernetes/cmd/kube-apiserver \
                k8s.io/kubernetes/cmd/kube-controller-manager \
                k8s.io/kubernetes/cmd/kubectl &&
            cd "$ETCD_MOD" &&
            env "${goenv[@]}" go build -p 2 -trimpath -ldflags "-s -w" -o "$tmp/etcd" \
                go.etcd.io/etcd/server/v3
    ) >"$logf" 2>&1; then
        rm -rf "$tmp"
        tail -n 30 "$logf" >&2
        die "build failed; full log: $logf"
    fi
    printf '%s\n' "$digest" >"$tmp/.digest"
    rm -rf "$BIN"
    mv "$tmp" "$BIN"
    log "built into $BIN"
}

# --- certificates and kubeconfigs ----------------------------------------------------

# sign NAME SUBJECT [SAN]: a key and a certificate signed by our CA.
sign() {
    local name="$1" subj="$2" san="${3:-}" ext="$STATE/pki/$1.ext"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$STATE/pki/$name.key" 2>/dev/null
    openssl req -new -key "$STATE/pki/$name.key" -subj "$subj" -out "$STATE/pki/$name.csr"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [[ -n "$san" ]]; then
            echo "extendedKeyUsage=serverAuth"
            echo "subjectAltName=$san"
        else
            echo "extendedKeyUsage=clientAuth"
        fi
    } >"$ext"
    openssl x509 -req -in "$STATE/pki/$name.csr" -CA "$STATE/pki/ca.crt" \
        -CAkey "$STATE/pki/ca.key" -CAcreateserial -days 3650 -sha256 \
        -extfile "$ext" -out "$STATE/pki/$name.crt" 2>/dev/null
    rm -f "$STATE/pki/$name.csr" "$ext"
}

APISERVER_SANS="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:0:0:0:0:0:0:0:1,IP:$LAB_HOST_IP,IP:$LAB_SERVICE_IP,IP:$SERVICE_IP"

gen_certs() {
    if [[ -f "$STATE/pki/ca.crt" ]]; then
        # A state dir from an older version may lack a name clients now use (the lab
        # guest's forward address): re-sign the serving certificate with the same CA.
        if ! openssl x509 -in "$STATE/pki/apiserver.crt" -noout -ext subjectAltName 2>/dev/null |
            grep -q "IP Address:$LAB_SERVICE_IP"; then
            log "re-signing the serving certificate for the current names"
            sign apiserver "/CN=kube-apiserver" "$APISERVER_SANS"
        fi
        return 0
    fi
    command -v openssl >/dev/null || die "openssl is not installed"
    log "generating a CA and certificates in $STATE/pki"
    mkdir -p "$STATE/pki"
    chmod 700 "$STATE/pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=routevpn-local-ca" -keyout "$STATE/pki/ca.key" -out "$STATE/pki/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    # Valid for every name a client may use: loopback over IPv4/IPv6 and by name; the
    # in-cluster service names; and 192.0.2.2/192.0.2.100, where the QEMU lab guest reaches
    # this host's loopback port through its user-network forward (the demo's agent runs in
    # the guest and must verify this certificate like any other client).
    sign apiserver "/CN=kube-apiserver" "$APISERVER_SANS"
    # system:masters: the admin of a throwaway cluster; the controller-manager gets its
    # own identity so RBAC applies to it as in a real cluster.
    sign admin "/O=system:masters/CN=routevpn-admin"
    sign kube-controller-manager "/CN=system:kube-controller-manager"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
        -out "$STATE/pki/sa.key" 2>/dev/null
    openssl pkey -in "$STATE/pki/sa.key" -pubout -out "$STATE/pki/sa.pub" 2>/dev/null
}

# write_kubeconfig FILE USER SERVER
write_kubeconfig() {
    local file="$1" user="$2" server="$3"
    local ca crt key
    ca="$(base64 -w0 <"$STATE/pki/ca.crt")"
    crt="$(base64 -w0 <"$STATE/pki/$user.crt")"
    key="$(base64 -w0 <"$STATE/pki/$user.key")"
    umask 077
    cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: routevpn-local
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: $user
  user:
    client-certificate-data: $crt
    client-key-data: $key
contexts:
- name: routevpn-local
  context:
    cluster: routevpn-local
    user: $user
current-context: routevpn-local
EOF
    mv "$file.tmp" "$file"
}

# --- processes -----------------------------------------------------------------------

pid_of() { cat "$STATE/run/$1.pid" 2>/dev/null || true; }

# Alive and still the binary we started (a PID can be reused after a reboot).
is_ours() {
    local name="$1" pid exe
    pid="$(pid_of "$name")"
    [[ -n "$pid" ]] || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
    [[ "$exe" == "$BIN/$name" || "$exe" == "$BIN/$name (deleted)" ]]
}

# Ours, or still on its way there: just after `start`, on a loaded host, the PID can
# still be the forked shell or setsid, before either opened the log or exec'd the binary
# (read as "exited during start-up", that failed test sessions at load 15).
starting() {
    local name="$1" pid exe
    is_ours "$name" && return 0
    pid="$(pid_of "$name")"
    [[ -n "$pid" ]] || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
    [[ "${exe##*/}" == bash || "${exe##*/}" == setsid ]]
}

port_free() {
    # bash's /dev/tcp connects: success means something already listens there.
    ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

check_port() {
    local port="$1" what="$2"
    if ! port_free "$port"; then
        local who
        who="$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n1 || true)"
        die "port $HOST:$port ($what) is already in use${who:+: $who}; stop that process or set ${3}"
    fi
}

start() {
    local name="$1"
    shift
    mkdir -p "$STATE/run" "$STATE/log"
    # setsid: its own session, so a Ctrl-C in the caller's terminal does not reach it;
    # `down` stops it by the PID recorded here.
    setsid "$BIN/$name" "$@" </dev/null >>"$STATE/log/$name.log" 2>&1 &
    echo $! >"$STATE/run/$name.pid"
}

# wait_for NAME SECONDS CHECK...: poll CHECK until it passes, the process dies, or the
# deadline; on failure show the log tail.
wait_for() {
    local name="$1" secs="$2"
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ! starting "$name"; then
            tail -n 20 "$STATE/log/$name.log" >&2 || true
            die "$name exited during start-up; log: $STATE/log/$name.log"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$STATE/log/$name.log" >&2 || true
            die "$name not healthy after ${secs}s; log: $STATE/log/$name.log"
        fi
        sleep 0.2
    done
}

api_healthy() {
    curl -sf --max-time 2 --cacert "$STATE/pki/ca.crt" \
        --cert "$STATE/pki/admin.crt" --key "$STATE/pki/admin.key" \
        "https://$HOST:$API_PORT/readyz" | grep -qx ok
}

cmd_status() {
    local name ok=0
    for name in "${COMPONENTS[@]}"; do
        if is_ours "$name"; then
            log "$name running (pid $(pid_of "$name"))"
        else
            log "$name not running"
            ok=1
        fi
    done
    if ((ok == 0)) && ! api_healthy; then
        log "kube-apiserver not ready at https://$HOST:$API_PORT"
        ok=1
    fi
    return "$ok"
}

cmd_up() {
    cmd_build
    local running=0 name
    for name in "${COMPONENTS[@]}"; do is_ours "$name" && running=$((running + 1)); done
    if ((running == ${#COMPONENTS[@]})) && api_healthy; then
        log "already up: https://$HOST:$API_PORT"
        echo "$STATE/kubeconfig"
        return 0
    fi
    if ((running > 0)); then
        log "partly running from an earlier up: restarting"
        cmd_down
    fi

    mkdir -p "$STATE"
    # A data dir is tied to the release that wrote it: etcd data from another
    # Kubernetes or etcd version may not load, so refuse rather than half-start.
    local stamp="k8s=$K8S_VERSION etcd=$ETCD_VERSION"
    if [[ -d "$STATE/etcd" && "$(cat "$STATE/version" 2>/dev/null)" != "$stamp" ]]; then
        die "stale data dir $STATE/etcd from another version ($(cat "$STATE/version" 2>/dev/null || echo unknown)); run: $0 down --purge"
    fi
    check_port "$ETCD_PORT" "etcd client" ROUTEVPN_ETCD_PORT
    check_port "$ETCD_PEER_PORT" "etcd peer" ROUTEVPN_ETCD_PORT
    check_port "$API_PORT" kube-apiserver ROUTEVPN_APISERVER_PORT
    check_port "$KCM_PORT" kube-controller-manager ROUTEVPN_KCM_PORT
    gen_certs
    printf '%s\n' "$stamp" >"$STATE/version"

    local t0=$SECONDS
    # Plain HTTP on loopback: only this host's processes reach it, and the apiserver is
    # its only client. --unsafe-no-fsync: a throwaway cluster trades crash safety for
    # speed on a shared disk.
    start etcd --name=default --data-dir="$STATE/etcd" \
        --listen-client-urls="http://$HOST:$ETCD_PORT" \
        --advertise-client-urls="http://$HOST:$ETCD_PORT" \
        --listen-peer-urls="http://$HOST:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls="http://$HOST:$ETCD_PEER_PORT" \
        --initial-cluster="default=http://$HOST:$ETCD_PEER_PORT" \
        --unsafe-no-fsync --log-level=warn
    wait_for etcd 30 curl -sf --max-time 2 "http://$HOST:$ETCD_PORT/health"

    local pki="$STATE/pki"
    # --endpoint-reconciler-type=none: the `kubernetes` Service's endpoints would have to
    # name a non-loopback address of this host, and nothing here runs in a pod to use them.
    # --requestheader-*: the controller-manager's delegated authentication insists on a
    # front-proxy CA (it logs errors without one); no front-proxy-client certificate is
    # ever issued, so this trusts nobody new.
    start kube-apiserver \
        --bind-address="$HOST" --secure-port="$API_PORT" --advertise-address="$LAB_HOST_IP" \
        --etcd-servers="http://$HOST:$ETCD_PORT" \
        --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --api-audiences=https://kubernetes.default.svc.cluster.local \
        --requestheader-client-ca-file="$pki/ca.crt" \
        --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User \
        --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --endpoint-reconciler-type=none --profiling=false --v=1
    wait_for kube-apiserver "${ROUTEVPN_APISERVER_WAIT:-90}" api_healthy

    write_kubeconfig "$STATE/kubeconfig" admin "https://$HOST:$API_PORT"
    write_kubeconfig "$STATE/kcm.kubeconfig" kube-controller-manager "https://$HOST:$API_PORT"
    mkdir -p "$STATE/kcm-certs"
    # No kubelet renews heartbeats here, so the node-lifecycle controller would turn every
    # simulated Node Unknown after ~50 s. With grace periods longer than any run, a
    # Node's Ready condition stays as the tests set it, and the controller still does its
    # real job on it: not-ready/unreachable taints follow the condition.
    start kube-controller-manager \
        --kubeconfig="$STATE/kcm.kubeconfig" \
        --authentication-kubeconfig="$STATE/kcm.kubeconfig" \
        --authorization-kubeconfig="$STATE/kcm.kubeconfig" \
        --bind-address="$HOST" --secure-port="$KCM_PORT" --cert-dir="$STATE/kcm-certs" \
        --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
        --use-service-account-credentials --leader-elect=false \
        --node-monitor-grace-period=87600h --node-startup-grace-period=87600h \
        --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false --v=1
    wait_for kube-controller-manager 60 curl -sfk --max-time 2 "https://$HOST:$KCM_PORT/healthz"
    log "up in $((SECONDS - t0))s: https://$HOST:$API_PORT (Kubernetes $K8S_VERSION)"
    log "kubeconfig: $STATE/kubeconfig   kubectl: $BIN/kubectl   eval \"\$($0 env)\""
    echo "$STATE/kubeconfig"
}

stop_pid() {
    local name="$1" pid
    pid="$(pid_of "$name")"
    if is_ours "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) did not stop on TERM: killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped $name (pid $pid)"
    elif [[ -n "$pid" ]]; then
        log "$name: recorded pid $pid is not ours any more: left alone"
    fi
    rm -f "$STATE/run/$name.pid"
}

cmd_down() {
    local purge=0
    [[ "${1:-}" == --purge ]] && purge=1
    local i
    # Reverse start order: the apiserver's clients first, etcd last.
    for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_pid "${COMPONENTS[$i]}"; done
    if ((purge)) && [[ -d "$STATE" ]]; then
        rm -rf "$STATE"
        log "removed $STATE"
    fi
}

# --server URL → a kubeconfig for that URL (kept beside the default one).
kubeconfig_for() {
    local server="${1:-}"
    [[ -f "$STATE/kubeconfig" ]] || die "no cluster in $STATE: run $0 up"
    if [[ -z "$server" ]]; then
        echo "$STATE/kubeconfig"
        return
    fi
    [[ "$server" == https://* ]] || die "--server must be an https:// URL, got: $server"
    local file
    file="$STATE/kubeconfig-$(printf '%s' "$server" | sha256sum | cut -c1-12)"
    write_kubeconfig "$file" admin "$server"
    echo "$file"
}

# Sets SERVER from [--server URL | --server=URL].
SERVER=""
parse_server() {
    while (($#)); do
        case "$1" in
        --server)
            [[ -n "${2:-}" ]] || die "--server needs a URL"
            SERVER="$2"
            shift 2
            ;;
        --server=*)
            SERVER="${1#--server=}"
            shift
            ;;
        *) die "unknown argument: $1" ;;
        esac
    done
}

cmd_env() {
    parse_server "$@"
    local file
    file="$(kubeconfig_for "$SERVER")"
    printf 'export KUBECONFIG=%q\n' "$file"
    printf 'export ROUTEVPN_KUBECTL=%q\n' "$BIN/kubectl"
    # shellcheck disable=SC2016 # $PATH expands where the output is eval'd
    printf 'export PATH=%q:"$PATH"\n' "$BIN"
}

cmd_kubeconfig() {
    parse_server "$@"
    local file
    file="$(kubeconfig_for "$SERVER")"
    cat "$file"
}

# Where the binaries are (exit 3 when not built yet): for tools that drive them.
cmd_bindir() {
    echo "$BIN"
    [[ -f "$BIN/.digest" && "$(cat "$BIN/.digest")" == "$(build_digest)" ]] || exit 3
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; }

main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
    build) cmd_build ;;
    up) cmd_up ;;
    down) cmd_down "$@" ;;
    status) cmd_status ;;
    env) cmd_env "$@" ;;
    kubeconfig) cmd_kubeconfig "$@" ;;
    bindir) cmd_bindir ;;
    ldflags) ldflags_k8s ;;
    -h | --help | help) usage ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
