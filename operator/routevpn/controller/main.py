"""`routevpn operator`: run the kopf operator (every replica watches; the Lease holder acts)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, cast

import kopf

from routevpn.controller import handlers, leader
from routevpn.controller.decide import OperatorSettings
from routevpn.controller.options import protected_from
from routevpn.kube.lease import Timings


def namespaces(text: str) -> frozenset[str] | None:
    """`--watch-namespaces` as a set; None (every namespace) when empty."""
    got = frozenset(n.strip() for n in text.split(",") if n.strip())
    return got or None


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
        settings=OperatorSettings(
            routevpn_namespace=args.namespace,
            orphan_wait_seconds=args.orphan_wait,
            not_ready_grace_seconds=args.not_ready_grace,
            namespaces=namespaces(args.watch_namespaces),
            without_policy=args.without_policy,
            protected=protected_from(args),
        ),
        identity=leader.identity(),
        lease_name=args.lease_name,
        lease_timings=timings,
        http_host=args.http_host,
        http_port=args.http_port,
        concurrency=args.concurrency,
        secret_reread_seconds=args.secret_reread,
    )
    # standalone: no kopf peering. Every replica watches and keeps its view current; the
    # Lease decides which one acts (routevpn.controller.leader). The identity is given:
    # kopf would otherwise ask getpass for the user name, and the image's uid (65532) has
    # no passwd entry (KeyError at start, found by running the chart's pods for real).
    kopf.run(
        clusterwide=True,
        standalone=True,
        stop_flag=rt.stop_flag,
        # kopf's Identity is a NewType of str, not exported from its public package.
        identity=cast(Any, rt.identity),
    )
    # Another replica took the Lease over: exit non-zero, to be started again from scratch.
    return 1 if rt.lease_lost else 0
