#!/usr/bin/env bash
# The test command: set up (idempotent), then lint, type-check, check the layer
# contracts and run every test tier (unit, netns, cluster, lab, node). Extra arguments go
# to ONE pytest, e.g. `hack/test.sh -m unit`.
#
# Without arguments the tiers run in three pytest sessions, timed: the node tier (its
# own QEMU guest and control plane, generous waits) beside the host tiers (unit, netns,
# cluster), which start once the node is Ready (its guest's kernel has locked up at the
# kubelet's start on a busy host); then the lab tier alone, in one guest
# (ROUTEVPN_LAB_SPLIT=1: two guests at once, see below). ROUTEVPN_SERIAL_TIERS=1 runs
# them all in one session instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash hack/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate

echo "== ruff check" && ruff check .
echo "== ruff format --check" && ruff format --check .
echo "== mypy --strict" && mypy
echo "== import-linter" && lint-imports

# One pytest session; its exit status, where 5 (nothing collected) is a failure too.
run_pytest() {
    local rc=0
    pytest "$@" || rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "pytest collected no test for: $*: that is a failure here" >&2
        rc=1
    fi
    return "$rc"
}

if [[ $# -gt 0 || "${ROUTEVPN_SERIAL_TIERS:-}" == 1 ]]; then
    echo "== pytest"
    rc=0
    run_pytest "$@" || rc=$?
    exit "$rc"
fi

# One pytest session in the background, its output kept in a file for later (its PID: $!)
start_beside() {
    local log=$1
    shift
    run_pytest "$@" >"$log" 2>&1 &
}

# Wait for a session start_beside started, then print its output; its status.
finish_beside() {
    local pid=$1 log=$2 title=$3 rc=0
    wait "$pid" || rc=$?
    echo "== pytest: $title's output"
    cat "$log"
    return "$rc"
}

node_log="$(mktemp -t routevpn-node-tier.XXXXXX)"
node_ready="$node_log.ready"
lab_log="$(mktemp -t routevpn-lab-first.XXXXXX)"
trap 'rm -f "$node_log" "$node_ready" "$lab_log"' EXIT
echo "== pytest: the node tier (beside the host tiers; its output follows theirs)"
t0=$SECONDS
ROUTEVPN_NODE_READY_FILE="$node_ready" start_beside "$node_log" -m node
node_pid=$!
# until the node is Ready (or its session ended, or 20 minutes passed)
while [[ ! -e "$node_ready" ]] && kill -0 "$node_pid" 2>/dev/null && ((SECONDS - t0 < 1200)); do
    sleep 2
done
ready_s=$((SECONDS - t0))
echo "== pytest: unit, netns, cluster (${ready_s}s after the node tier started)"
host_rc=0
run_pytest -m "not lab and not node" || host_rc=$?
host_s=$((SECONDS - t0))
node_rc=0
finish_beside "$node_pid" "$node_log" "the node tier" || node_rc=$?
node_s=$((SECONDS - t0))

# The lab tier: one guest (two vCPUs), alone, by default. ROUTEVPN_LAB_SPLIT=1 runs it in
# two guests at once instead, each with about half of its modules and one vCPU (a guest
# keeps about one core busy; with two vCPUs each, four on two cores, a guest spins on a
# vCPU the host has descheduled). Measured: 1,160-1,244 s against about 1,800 s alone,
# but two of its timing-bound cases failed once there (a TCP stream that connected after
# the link went down; stray packets at the node during rekeys), so it is not the default.
# The first half is listed; the second is the rest, so a new lab module lands there.
LAB_FIRST=(
    tests/lab/test_rekeys_lab.py
    tests/lab/test_failover_lab.py
    tests/lab/test_ospf_lab.py
    tests/lab/test_bgp_lab.py
    tests/lab/test_agent_lab.py
    tests/lab/test_reference_scenario.py
    tests/lab/test_dataplane_kernel.py
    tests/lab/test_lab_smoke.py
    tests/lab/test_harness_host.py
)
t1=$SECONDS
lab_rc=0
lab1_rc=0
if [[ "${ROUTEVPN_LAB_SPLIT:-}" == 1 ]]; then
    lab_rest=()
    for f in "${LAB_FIRST[@]}"; do
        lab_rest+=("--ignore=$f")
    done
    export ROUTEVPN_LAB_CPUS="${ROUTEVPN_LAB_CPUS:-1}"
    echo "== pytest: lab, in two guests (the first half's output follows the second's)"
    start_beside "$lab_log" -m lab "${LAB_FIRST[@]}"
    lab_pid=$!
    run_pytest -m lab "${lab_rest[@]}" || lab_rc=$?
    finish_beside "$lab_pid" "$lab_log" "lab, the first half" || lab1_rc=$?
else
    echo "== pytest: lab"
    run_pytest -m lab || lab_rc=$?
fi
echo "== tiers (seconds from the node tier's start): node Ready ${ready_s}, unit+netns+cluster" \
    "done ${host_s} (rc $host_rc), node tier done ${node_s} (rc $node_rc); then lab" \
    "$((SECONDS - t1))s (rc $lab_rc${ROUTEVPN_LAB_SPLIT:+, first half rc $lab1_rc})"
if ((host_rc || node_rc || lab_rc || lab1_rc)); then
    exit 1
fi
