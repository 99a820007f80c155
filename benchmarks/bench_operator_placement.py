"""Placement and allocation of many tunnels by the real operator against a real apiserver.

    .venv/bin/python benchmarks/bench_operator_placement.py [--tunnels 1000] [--nodes 6]

Starts `routevpn operator` as a subprocess (tests/support/operator.py), simulated Nodes
(a mix of nodeName and nodeSelector tunnels), one PSK Secret per tunnel, then creates the
tunnels as fast as the client can and reports:

* seconds from the last create until every tunnel is placed and allocated
  (status.node, status.interface and the routevpn.io/node label, agreeing);
* the operator's peak RSS (VmHWM) in MiB;
* API writes per tunnel (routevpn_operator_api_writes_total), by kind;
* writes during a quiet period afterwards (nothing changed: should be 0);

beside a baseline from the same run and the same client: creating the objects alone,
and one plain list of them. Targets: <= 30 s to place, < 200 MiB.

The control plane: ROUTEVPN_KUBECONFIG if set, else a developer's running
`hack/local-cluster.sh up`, else one of its own (stopped by PID at the end). Everything
it creates (namespaces, Nodes, the operator and its Lease) is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test-support package (tests/ is no package)

from kubernetes import client  # noqa: E402

from support.cluster import ControlPlane, Kubectl, bin_dir  # noqa: E402
from support.kube import (  # noqa: E402
    api_client,
    apply_crd,
    create_namespace,
    create_node,
    delete_namespace,
    delete_node,
    wait_until,
)
from support.operator import (  # noqa: E402
    Operator,
    create_tunnel,
    is_placed,
    list_tunnels,
    tunnel_body,
)

TARGET_SECONDS = 30.0
TARGET_MIB = 200.0


@contextmanager
def control_plane(workdir: Path) -> Iterator[tuple[Path, Kubectl]]:
    """The kubeconfig and kubectl of the cluster to measure against (see the docstring)."""
    bins = bin_dir()
    external = os.environ.get("ROUTEVPN_KUBECONFIG")
    if external:
        chosen = os.environ.get("ROUTEVPN_KUBECTL")
        binary = Path(chosen) if chosen else (bins / "kubectl" if bins else None)
        if binary is None:
            sys.exit("kubectl: run hack/local-cluster.sh build, or set ROUTEVPN_KUBECTL")
        yield Path(external), Kubectl(binary, Path(external))
        return
    if bins is None:
        sys.exit("etcd/kube-apiserver not built: run hack/local-cluster.sh build")
    dev = ControlPlane.developer()
    if dev.healthy():
        kc = dev.kubeconfig()
        yield kc, Kubectl(bins / "kubectl", kc)
        return
    cp = ControlPlane.ephemeral(workdir / "control-plane")
    try:
        kc = cp.up()
        yield kc, Kubectl(bins / "kubectl", kc)
    finally:
        cp.down(purge=True)


def _crd_yaml() -> str:
    res = subprocess.run(
        [sys.executable, "-m", "routevpn", "crd", "all"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return res.stdout


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def _bodies(n: int, nodes: list[str], zone: str) -> list[dict[str, Any]]:
    """Every fourth tunnel names its node; the rest select by labels (all or half)."""
    out = []
    for i in range(n):
        name = f"t{i:05d}"
        if i % 4 == 0:
            body = tunnel_body(name, nodeName=nodes[i % len(nodes)])
        elif i % 4 == 1:
            body = tunnel_body(name, {"zone": zone, "half": str(i % 2)})
        else:
            body = tunnel_body(name, {"zone": zone})
        body["spec"]["auth"]["psk"]["secretRef"]["name"] = f"psk-{name}"
        # Each tunnel goes to a peer of its own: an IKE identity pair has one owner per
        # node, so 1000 tunnels to one peer address would all but a few be refused.
        body["spec"]["remote"]["id"] = f"{name}.peers.example"
        out.append(body)
    return out


def _settled(op: Operator, steady_polls: int = 3) -> float:
    """Poll the write counter until it stops moving (trailing Events); its value."""
    last, same = -1.0, 0
    while same < steady_polls:
        now = op.metric("routevpn_operator_api_writes_total")
        same = same + 1 if now == last else 0
        last = now
        time.sleep(1.0)  # a polling period, not a wait for an outcome
    return last


def _writes_by_kind(op: Operator) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in op.metrics().splitlines():
        if line.startswith("routevpn_operator_api_writes_total{"):
            series, _, value = line.rpartition(" ")
            kind = series.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(value)
    return out


def run(n: int, n_nodes: int, quiet: float, workers: int, log_level: str = "warning") -> int:
    """Run the benchmark; 0 when both targets are met."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-op-")))
        kubeconfig, kubectl = stack.enter_context(control_plane(workdir))
        apply_crd(kubectl, _crd_yaml())
        api = api_client(kubeconfig)
        stack.callback(api.close)
        # The client annotates bodies as its model classes; plain dicts are what it sends.
        core: Any = client.CoreV1Api(api)

        ns = create_namespace(api, "bench-tunnels")
        stack.callback(delete_namespace, api, ns)
        rns = create_namespace(api, "bench-routevpn")
        stack.callback(delete_namespace, api, rns)
        nodes = [f"{ns}-n{i}" for i in range(n_nodes)]
        for i, node in enumerate(nodes):
            stack.callback(delete_node, api, node)
            create_node(
                api, node, {"zone": ns, "half": str(i % 2)}, addresses=[f"192.0.2.{10 + i}"]
            )
        op = Operator(kubeconfig, rns, workdir / "operator.log", log_level=log_level)
        stack.callback(op.stop)
        wait_until(op.healthy, timeout=60, what="operator /healthz")
        wait_until(op.active, timeout=60, what="operator active")

        bodies = _bodies(n, nodes, ns)
        pool = stack.enter_context(ThreadPoolExecutor(workers))

        def secret(body: dict[str, Any]) -> None:
            ref = body["spec"]["auth"]["psk"]["secretRef"]["name"]
            meta = {"name": ref, "labels": {"routevpn.io/usage": "ike"}}  # the IKE opt-in
            core.create_namespaced_secret(ns, {"metadata": meta, "data": {"psk": "c2s="}})

        t_secrets, _ = _timed(lambda: list(pool.map(secret, bodies)))
        t_create, _ = _timed(lambda: list(pool.map(lambda b: create_tunnel(api, ns, b), bodies)))
        last_create = time.monotonic()
        t_list, items = _timed(lambda: list_tunnels(api, ns))
        assert len(items) == n, len(items)

        def all_placed() -> list[dict[str, Any]] | None:
            got = list_tunnels(api, ns)
            return got if sum(1 for o in got if is_placed(o)) == n else None

        placed_items = wait_until(all_placed, timeout=600, interval=0.5, what="all placed")
        t_place = time.monotonic() - last_create
        writes_placed = op.metric("routevpn_operator_api_writes_total")
        rss_placed = op.peak_rss_mib()

        writes_settled = _settled(op)
        by_kind = _writes_by_kind(op)
        quiet_end = time.monotonic() + quiet
        while time.monotonic() < quiet_end:
            time.sleep(min(5.0, max(0.0, quiet_end - time.monotonic())))  # the quiet window
        writes_quiet = op.metric("routevpn_operator_api_writes_total") - writes_settled
        by_kind_end = _writes_by_kind(op)
        quiet_kinds = {k: v - by_kind.get(k, 0) for k, v in by_kind_end.items()}
        rss = op.peak_rss_mib()
        errors = op.metric("routevpn_operator_reconcile_errors_total")

        per_node = Counter(o["status"]["node"] for o in placed_items)
        keys = Counter(
            (o["status"]["node"], o["status"]["interface"].get("key")) for o in placed_items
        )
        dupes = sum(1 for c in keys.values() if c > 1)

        print(
            f"operator placement benchmark: {n} tunnels, {n_nodes} nodes, {workers} client threads"
        )
        print("baseline (same client, same run):")
        print(f"  create {n} PSK Secrets            {t_secrets:7.2f} s")
        print(f"  create {n} VpnTunnels             {t_create:7.2f} s")
        print(f"  list {n} VpnTunnels               {t_list:7.2f} s")
        print("operator:")
        ok_t = "ok" if t_place <= TARGET_SECONDS else "MISSED"
        ok_m = "ok" if rss < TARGET_MIB else "MISSED"
        print(
            f"  last create -> all placed+allocated {t_place:7.2f} s   "
            f"(target <= {TARGET_SECONDS:g} s: {ok_t})"
        )
        print(
            f"  peak RSS (VmHWM)                 {rss:7.1f} MiB (target < {TARGET_MIB:g}: {ok_m})"
        )
        print(f"    at all-placed                  {rss_placed:7.1f} MiB")
        print(f"  API writes per tunnel at placed  {writes_placed / n:7.2f}")
        print(
            f"  API writes per tunnel, settled   {writes_settled / n:7.2f}  "
            + " ".join(f"{k}={v / n:.2f}" for k, v in sorted(by_kind.items()))
        )
        print(f"  writes in a quiet {quiet:g} s          {writes_quiet:7.0f}   (expected 0)")
        if writes_quiet:
            print(f"    by kind: {quiet_kinds}")
        print(f"  reconcile errors                 {errors:7.0f}")
        print(f"  tunnels per node                 {dict(sorted(per_node.items()))}")
        print(f"  duplicate keys on a node         {dupes:7d}")
        met = t_place <= TARGET_SECONDS and rss < TARGET_MIB and writes_quiet == 0 and not dupes
        if not met or errors:
            print("--- operator log (tail):", file=sys.stderr)
            print(op.log_tail(60), file=sys.stderr)
        return 0 if met else 1
    return 1  # pragma: no cover - ExitStack swallows nothing


def main() -> int:
    """Parse the command line and run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tunnels", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=6, help="simulated Nodes (4-8 in the issue)")
    p.add_argument("--quiet", type=float, default=60.0, help="seconds of the quiet window")
    p.add_argument("--workers", type=int, default=16, help="client threads creating objects")
    p.add_argument("--log-level", default="warning", help="the operator's log level")
    args = p.parse_args()
    return run(args.tunnels, args.nodes, args.quiet, args.workers, args.log_level)


if __name__ == "__main__":
    raise SystemExit(main())
