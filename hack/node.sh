#!/usr/bin/env bash
# A real Kubernetes node's binaries, at pinned versions built from their Go modules and
# cached under $ROUTEVPN_CACHE like the control plane:
#   kubelet, kube-scheduler      hack/k8s (the same module and release as the apiserver;
#                                the control plane of hack/local-cluster.sh has no scheduler,
#                                as no pod runs there: a node's tests start this one)
#   containerd, containerd-shim-runc-v2, ctr, runc, CNI bridge/host-local/loopback
#                                hack/node/go.mod
# The node itself runs inside the QEMU lab guest (tests/support/node.py boots one), never
# on the host: `guest` mounts, configures and starts things in the machine it runs in.
#
# Usage: hack/node.sh build        build what is missing (idempotent; fast when cached)
#        hack/node.sh bindir       print the binaries' directory (exit 3: not built)
#        hack/node.sh versions     print the pinned versions
#        hack/node.sh guest OPTIONS   (inside the lab guest only) run containerd and the
#                                  kubelet, import the image archives, until --stop-file
#                                  appears; then stop both. Options:
#            --kubeconfig FILE     the kubelet's credentials (server: the forwarded API)
#            --api HOST:PORT       where that API server is reached from the guest
#            --node-name NAME  --node-ip IP  --pod-cidr CIDR  --service-ip IP
#            --images DIR          every *.oci.tar in DIR is imported into containerd
#            --logs DIR            containerd's and the kubelet's logs, start-up times
#            --stop-file FILE      stop when this file exists
#          Scripts dropped into LOGS/../commands/ as NAME.sh run once each (NAME.out, NAME.rc).
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

BINS=(kubelet kube-scheduler containerd containerd-shim-runc-v2 ctr runc cni/bridge cni/host-local cni/loopback)

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
            -ldflags "$("$ROOT/hack/local-cluster.sh" ldflags)" -o "$tmp/" \
            k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler
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

# --- the node, inside the lab guest ------------------------------------------------

cmd_guest() {
    [[ "${ROUTEVPN_IN_LAB:-}" == 1 ]] || die "guest: only inside the lab guest (ROUTEVPN_IN_LAB=1)"
    local kubeconfig="" api="" name="" ip="" pod_cidr="" service_ip="" images="" logs="" stop=""
    while (($#)); do
        case "$1" in
        --kubeconfig) kubeconfig="$2" ;;
        --api) api="$2" ;;
        --node-name) name="$2" ;;
        --node-ip) ip="$2" ;;
        --pod-cidr) pod_cidr="$2" ;;
        --service-ip) service_ip="$2" ;;
        --images) images="$2" ;;
        --logs) logs="$2" ;;
        --stop-file) stop="$2" ;;
        *) die "guest: unknown option $1" ;;
        esac
        shift 2
    done
    [[ -n "$kubeconfig" && -n "$api" && -n "$name" && -n "$ip" && -n "$pod_cidr" &&
        -n "$service_ip" && -n "$images" && -n "$logs" && -n "$stop" ]] || die "guest: missing option"
    built || die "guest: binaries not built (hack/node.sh build)"
    local etc=/etc/routevpn-node sock=/run/containerd/containerd.sock
    export PATH="$BIN:$PATH"
    mkdir -p "$logs"
    stamp() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >>"$logs/times"; }
    stamp node-script

    # cgroup v2 with every controller delegated to the kubelet's hierarchy.
    mount -t cgroup2 none /sys/fs/cgroup
    local c ctrls
    read -ra ctrls </sys/fs/cgroup/cgroup.controllers
    for c in "${ctrls[@]}"; do
        echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || true
    done
    # The guest's root is an overlay on tmpfs: containerd's overlayfs snapshots and the
    # kubelet's volumes need a plain filesystem under them.
    local d
    for d in /var/lib/containerd /var/lib/kubelet /var/log/pods /var/log/containers /run/containerd "$etc"; do
        mkdir -p "$d"
        mount -t tmpfs tmpfs "$d"
    done
    modprobe -a overlay br_netfilter bridge veth nf_nat nf_conntrack iptable_nat xt_MASQUERADE \
        xt_conntrack xt_comment nft_chain_nat nft_compat 2>/dev/null || true
    sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
    # A default route (QEMU's host alias; its restrict=on lets nothing out): without any
    # route to the ClusterIP, hostNetwork pods fail before the OUTPUT DNAT below is seen.
    ip route replace default via "${api%.*}.2" dev eth0
    # No kube-proxy here: the one Service pods need, the API server's ClusterIP, is sent
    # to the forwarded API server by hand (hostNetwork pods: OUTPUT; bridged pods:
    # PREROUTING).
    local chain
    for chain in OUTPUT PREROUTING; do
        iptables -t nat -A "$chain" -d "$service_ip/32" -p tcp --dport 443 -j DNAT --to-destination "$api"
    done

    cat >"$etc/containerd.toml" <<TOML
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "$sock"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "localhost/routevpn/pause:3.10.2"
[plugins."io.containerd.cri.v1.runtime"]
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "$BIN/runc"
      SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$BIN/cni"]
    conf_dir = "$etc/cni"
TOML
    mkdir -p "$etc/cni"
    cat >"$etc/cni/10-routevpn-node.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "routevpn-node", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
    cat >"$etc/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$sock
failSwapOn: false
readOnlyPort: 0
podCIDR: "$pod_cidr"
resolvConf: ""
# The images can't be pulled again here: never collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
YAML
    containerd --config "$etc/containerd.toml" >"$logs/containerd.log" 2>&1 &
    local containerd_pid=$!
    local deadline=$((SECONDS + 120))
    until ctr --address "$sock" version >/dev/null 2>&1; do
        kill -0 "$containerd_pid" 2>/dev/null || die "containerd exited: $(tail -n 20 "$logs/containerd.log")"
        ((SECONDS < deadline)) || die "containerd not answering after 120s"
        sleep 0.5
    done
    stamp containerd-ready
    local a
    for a in "$images"/*.oci.tar; do
        ctr --address "$sock" -n k8s.io images import "$a" >>"$logs/import.log" 2>&1 ||
            die "import $a failed: $(tail -n 5 "$logs/import.log")"
    done
    ctr --address "$sock" -n k8s.io images ls -q >"$logs/images.txt"
    stamp images-imported
    kubelet --config "$etc/kubelet.yaml" --kubeconfig "$kubeconfig" \
        --hostname-override "$name" --node-ip "$ip" --cert-dir /var/lib/kubelet/pki \
        --v=1 >"$logs/kubelet.log" 2>&1 &
    local kubelet_pid=$!
    stamp kubelet-started
    # Commands from the host (tests set up a far end, ping, read xfrm state): each
    # NAME.sh dropped into the commands directory runs once, in the background, leaving
    # NAME.out and, when done, NAME.rc.
    local cmds="$logs/../commands" f
    mkdir -p "$cmds"
    while [[ ! -e "$stop" ]]; do
        kill -0 "$kubelet_pid" 2>/dev/null || die "kubelet exited: $(tail -n 20 "$logs/kubelet.log")"
        kill -0 "$containerd_pid" 2>/dev/null || die "containerd exited: $(tail -n 20 "$logs/containerd.log")"
        for f in "$cmds"/*.sh; do
            [[ -e "$f" && ! -e "${f%.sh}.started" ]] || continue
            : >"${f%.sh}.started"
            (
                bash "$f" >"${f%.sh}.out" 2>&1
                echo $? >"${f%.sh}.rc.tmp"
                mv "${f%.sh}.rc.tmp" "${f%.sh}.rc"
            ) </dev/null &
        done
        sleep 0.5
    done
    kill -TERM "$kubelet_pid" 2>/dev/null || true
    wait "$kubelet_pid" || true
    kill -TERM "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" || true
    stamp stopped
}

main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
    build) cmd_build ;;
    bindir) cmd_bindir ;;
    guest) cmd_guest "$@" ;;
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
