"""`routevpn operator`: run the kopf operator (one active replica: the Lease holder)."""

from __future__ import annotations

import argparse
import logging
import os

import kopf

from routevpn.controller import handlers
from routevpn.controller.reconcile import Settings
from routevpn.kube.lease import Timings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The operator's command-line options."""
    parser.add_argument(
        "--namespace",
        default=os.environ.get("ROUTEVPN_NAMESPACE", "routevpn"),
        help="routevpn's own namespace: delivered Secrets live here",
    )
    parser.add_argument("--http-port", type=int, default=8080, help="/metrics and /healthz")
    parser.add_argument(
        "--http-host",
        "--bind-address",  # the agent's name for it: one spelling works for both commands
        dest="http_host",
        default="0.0.0.0",  # noqa: S104 - probes and scraping reach the pod's address
        help="bind address of --http-port",
    )
    parser.add_argument(
        "--lease-name",
        default="routevpn-operator",
        help="the coordination.k8s.io Lease (in --namespace) whose holder is the active replica",
    )
    # client-go's three durations, with its defaults (routevpn.kube.lease explains them).
    parser.add_argument(
        "--lease-duration",
        type=int,
        default=Timings.lease_duration,
        help="seconds a standby waits for a silent leader before taking the Lease over",
    )
    parser.add_argument(
        "--lease-renew-deadline",
        type=float,
        default=Timings.renew_deadline,
        help="seconds the leader acts after its last renewal was sent (< --lease-duration)",
    )
    parser.add_argument(
        "--lease-retry-period",
        type=float,
        default=Timings.retry_period,
        help="seconds between attempts to take or renew the Lease",
    )
    parser.add_argument(
        "--orphan-wait",
        type=float,
        default=60.0,
        help="seconds to wait for the agent of a node that is gone before dropping its finalizer",
    )
    parser.add_argument(
        "--not-ready-grace",
        type=float,
        default=60.0,
        help="seconds a node may be NotReady before its tunnels move",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="tunnels reconciled at once (each mostly waits on the API server)",
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM."""
    level = os.environ.get("ROUTEVPN_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format="%(message)s")
    # kopf logs every handler call at INFO: 1000 tunnels would bury the operator's own lines.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        timings = Timings(args.lease_duration, args.lease_renew_deadline, args.lease_retry_period)
    except ValueError as e:
        logging.getLogger("routevpn.operator").error("%s", e)
        return 2
    rt = handlers.RUNTIME = handlers.Runtime(
        settings=Settings(
            routevpn_namespace=args.namespace,
            orphan_wait_seconds=args.orphan_wait,
            not_ready_grace_seconds=args.not_ready_grace,
        ),
        lease_name=args.lease_name,
        lease_timings=timings,
        http_host=args.http_host,
        http_port=args.http_port,
        concurrency=args.concurrency,
    )
    # standalone: no kopf peering. Every replica watches and keeps its view current; the
    # Lease decides which one acts (routevpn.controller.leader).
    kopf.run(clusterwide=True, standalone=True, stop_flag=rt.stop_flag)
    # Another replica took the Lease over: exit non-zero, to be started again from scratch.
    return 1 if rt.lease_lost else 0
