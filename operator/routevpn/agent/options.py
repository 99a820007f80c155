"""Command-line flags of `routevpn agent` (argparse only, cheap to import)."""

from __future__ import annotations

import argparse
import ipaddress
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
    _add_charon_arguments(parser)
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
    _add_bgp_arguments(parser)
    parser.add_argument(
        "--log-level",
        default=env.get("ROUTEVPN_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING (default: $ROUTEVPN_LOG_LEVEL or INFO)",
    )


def _add_charon_arguments(parser: argparse.ArgumentParser) -> None:
    """charon, and what the agent keeps beside it."""
    parser.add_argument(
        "--vici-socket",
        default="/run/routevpn/charon.vici",
        help="charon's VICI socket (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        help="a root-only directory of the node, kept as long as charon runs, where the "
        "agent records which secret each connection was loaded with (keyed digests only), "
        "so a Secret rotated while no agent ran still re-authenticates its tunnel "
        "(default: none, and such a rotation waits for the IKE SA's own end)",
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


def _asn(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 2**32 - 1 or value == 23456:  # 23456: AS_TRANS
        raise argparse.ArgumentTypeError(f"not a usable AS number: {text}")
    return value


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address or CIDR: {text!r}") from None


def _add_bgp_arguments(parser: argparse.ArgumentParser) -> None:
    """spec.bgp: the node's BIRD, its defaults and what no session may learn."""
    parser.add_argument(
        "--bird-socket",
        default=None,
        help="BIRD's control socket; unset: no BIRD on this node, BGP tunnels report "
        "DaemonUnreachable (the chart sets it with bgp.enabled)",
    )
    parser.add_argument(
        "--bird-config-dir",
        default="/run/routevpn/bird",
        help="directory of the bird.conf BIRD runs, written by the agent (default: %(default)s)",
    )
    parser.add_argument(
        "--bgp-local-asn",
        type=_asn,
        default=64512,
        help="this end's AS number for tunnels that leave spec.bgp.localASN out "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--bgp-kernel-metric",
        type=int,
        default=32,
        help="kernel metric of the routes BIRD installs; another routing daemon's routes "
        "with another metric are left alone (default: %(default)s)",
    )
    parser.add_argument(
        "--protected-cidr",
        type=_network,
        action="append",
        default=[],
        help="a cluster network (pod, service, node, API server) no BGP session may learn "
        "a route into; repeat for each",
    )
