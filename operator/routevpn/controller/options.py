"""Command-line flags of `routevpn operator` (argparse, and nothing that loads kopf).

`routevpn agent` builds the whole command line too, so nothing here may import kopf: the
agent process must not load the operator's framework or register its handlers.
"""

from __future__ import annotations

import argparse
import ipaddress
import os

from routevpn.kube.lease import Timings

#: Flags naming networks no tunnel may route into or use inside: (flag, what it is).
PROTECTED_FLAGS = (
    ("pod_cidr", "the pod network"),
    ("service_cidr", "the service network"),
    ("node_cidr", "the node network"),
    ("api_server_address", "the API server's address"),
)


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address or CIDR: {text!r}") from None


def protected_from(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """(what, CIDR) for every protected network given on the command line."""
    return tuple(
        (what, cidr) for dest, what in PROTECTED_FLAGS for cidr in getattr(args, dest) or ()
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The operator's command-line options."""
    _scope(parser)
    _leadership(parser)
    _timing(parser)


def _scope(parser: argparse.ArgumentParser) -> None:
    """Where the operator works and serves."""
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
        "--watch-namespaces",
        default=os.environ.get("ROUTEVPN_WATCH_NAMESPACES", ""),
        help="comma-separated namespaces whose tunnels to serve and whose Secrets to read "
        "(default: every namespace)",
    )


def _leadership(parser: argparse.ArgumentParser) -> None:
    """How replicas agree on the one that acts."""
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


def _timing(parser: argparse.ArgumentParser) -> None:
    """Waits, periods and concurrency."""
    parser.add_argument(
        "--orphan-wait",
        type=float,
        default=60.0,
        help="seconds to wait for the agent of a node that is gone, or whose agent has not "
        "renewed its liveness Lease, before dropping its finalizer (a Warning Event says "
        "what may remain on the node)",
    )
    parser.add_argument(
        "--not-ready-grace",
        type=float,
        default=60.0,
        help="seconds a node may be NotReady before its tunnels move",
    )
    parser.add_argument(
        "--secret-reread",
        type=float,
        default=60.0,
        help="seconds between re-reads of the Secrets tunnels refer to: a rotated key "
        "reaches its tunnels within this (one GET per referenced Secret per period)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="tunnels reconciled at once (each mostly waits on the API server)",
    )
    parser.add_argument(
        "--without-policy",
        choices=("deny", "allow"),
        default="deny",
        help=(
            "a tunnel in a namespace no VpnTunnelPolicy selects is refused (deny, the default) "
            "or admitted within the protected networks (allow: single-tenant clusters)"
        ),
    )
    for dest, what in PROTECTED_FLAGS:
        parser.add_argument(
            "--" + dest.replace("_", "-"),
            dest=dest,
            action="append",
            type=_cidr,
            metavar="CIDR",
            help=f"{what}: never routed into a tunnel nor used inside one (repeatable)",
        )
