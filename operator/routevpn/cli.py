"""The `routevpn` command: `crd`, `metrics`, `operator`, `agent` and `release-all` (uninstall
hook)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from routevpn import __version__


def _crd(args: argparse.Namespace) -> int:
    from routevpn.api.crd import render_crd_yaml

    for which in ("tunnel", "policy") if args.which == "all" else (args.which,):
        sys.stdout.write(render_crd_yaml(which))
    return 0


def _metrics(_: argparse.Namespace) -> int:
    from routevpn.metricsdoc import render

    sys.stdout.write(render())
    return 0


def _operator(args: argparse.Namespace) -> int:
    from routevpn.controller.main import run

    return run(args)


def _agent(args: argparse.Namespace) -> int:
    from routevpn.agent.main import main as agent_main

    return agent_main(args)


def _release_all(args: argparse.Namespace) -> int:
    from routevpn.controller.release import main as release_main

    return release_main(args.namespace, args.kubeconfig)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each sub-command sets `func`."""
    parser = argparse.ArgumentParser(
        prog="routevpn",
        description="Route-based IPsec VPNs (strongSwan + VTI/XFRM) as Kubernetes objects.",
    )
    parser.add_argument("--version", action="version", version=f"routevpn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = sub.add_parser("crd", help="print a CustomResourceDefinition (YAML)")
    crd.add_argument(
        "which",
        nargs="?",
        choices=("tunnel", "policy", "all"),
        default="tunnel",
        help="tunnel: VpnTunnel (the default) · policy: VpnTunnelPolicy · all: both, which "
        "the operator needs",
    )
    crd.set_defaults(func=_crd)

    metrics = sub.add_parser(
        "metrics", help="print the reference of every metric both processes export (Markdown)"
    )
    metrics.set_defaults(func=_metrics)

    op = sub.add_parser("operator", help="run the operator")
    from routevpn.controller.options import add_arguments

    add_arguments(op)
    op.set_defaults(func=_operator)

    agent = sub.add_parser("agent", help="run the node agent")
    from routevpn.agent.options import add_arguments as add_agent_arguments

    add_agent_arguments(agent)
    agent.set_defaults(func=_agent)

    release = sub.add_parser(
        "release-all",
        help="drop routevpn's finalizers from every tunnel and remove the operator's objects "
        "(the chart runs this when it is uninstalled)",
    )
    release.add_argument("--namespace", required=True, help="routevpn's own namespace")
    release.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster)")
    release.set_defaults(func=_release_all)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `routevpn` console script."""
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
