"""Command-line flags of `routevpn agent` (argparse only, cheap to import)."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the agent's flags; defaults come from the DaemonSet's environment where set."""
    env = os.environ
    parser.add_argument(
        "--node", default=env.get("NODE_NAME"), help="the Node this agent serves ($NODE_NAME)"
    )
    parser.add_argument(
        "--namespace",
        default=env.get("ROUTEVPN_NAMESPACE"),
        help="routevpn's namespace, where delivered Secrets live ($ROUTEVPN_NAMESPACE)",
    )
    parser.add_argument(
        "--vici-socket",
        default="/run/routevpn/charon.vici",
        help="charon's VICI socket (default: %(default)s)",
    )
    parser.add_argument(
        "--http-port", type=int, default=9478, help="/metrics, /healthz, /readyz port"
    )
    parser.add_argument(
        "--bind-address",
        default="0.0.0.0",  # noqa: S104 - probes and scraping reach the pod's host network
        help="address the HTTP server binds (default: %(default)s)",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster)")
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=30.0,
        help="re-check every tunnel this often, repairing drift (default: %(default)s)",
    )
    parser.add_argument(
        "--mss-clamp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="clamp TCP MSS of forwarded SYNs to each tunnel interface's MTU, in "
        "routevpn's own nftables table `inet routevpn` (default: on)",
    )
    _add_status_arguments(parser)
    parser.add_argument(
        "--log-level",
        default=env.get("ROUTEVPN_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING (default: $ROUTEVPN_LOG_LEVEL or INFO)",
    )


def _add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """What reaches status, and how fast."""
    parser.add_argument(
        "--counters-period",
        type=float,
        default=60.0,
        help="byte/packet counters reach status at most this often (default: %(default)s)",
    )
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=120.0,
        help="TrafficFlowing turns False after this long with (almost) nothing received "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--traffic-min-packets",
        type=int,
        default=30,
        help="TrafficFlowing turns True when this many packets arrive within "
        "--quiet-seconds / 2; the kernel's own background packets stay below it "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--event-interval",
        type=float,
        default=600.0,
        help="seconds between two TrafficFlowing Events of one tunnel (default: %(default)s)",
    )
    parser.add_argument(
        "--status-qps",
        type=float,
        default=20.0,
        help="status writes per second, sustained, when many tunnels change at once "
        "(routes never wait for this; default: %(default)s)",
    )
    parser.add_argument(
        "--status-burst",
        type=int,
        default=40,
        help="status writes at once before --status-qps applies (default: %(default)s)",
    )
