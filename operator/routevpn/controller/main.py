"""`routevpn operator`: run the kopf operator (one active replica through peering)."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
from typing import Any, cast

import kopf

from routevpn.controller import handlers
from routevpn.controller.decide import OperatorSettings
from routevpn.controller.options import protected_from


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
    # Peering pauses every replica of equal priority: draw one, distinct with near certainty.
    priority = secrets.randbelow(2**31 - 1) + 1
    # Our own identity (kopf's layout) so the worker can find this replica in the peering.
    identity = f"{socket.gethostname()}/{secrets.token_hex(4)}"
    handlers.RUNTIME = handlers.Runtime(
        settings=OperatorSettings(
            routevpn_namespace=args.namespace,
            orphan_wait_seconds=args.orphan_wait,
            not_ready_grace_seconds=args.not_ready_grace,
            namespaces=namespaces(args.watch_namespaces),
            without_policy=args.without_policy,
            protected=protected_from(args),
        ),
        peering=args.peering,
        priority=priority,
        identity=identity,
        http_host=args.http_host,
        http_port=args.http_port,
        concurrency=args.concurrency,
        secret_reread_seconds=args.secret_reread,
    )
    kopf.run(
        clusterwide=True,
        peering_name=args.peering,
        priority=priority,
        standalone=False,
        # kopf's Identity is a NewType of str, not exported from its public package.
        identity=cast(Any, identity),
    )
    return 0
