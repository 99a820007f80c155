"""`routevpn agent`: build the real parts (API client, netlink, VICI) and run until signalled."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from routevpn.agent.liveness import LivenessLease
from routevpn.agent.metrics import Metrics
from routevpn.agent.runner import Agent, http_app
from routevpn.agent.settings import AgentSettings
from routevpn.agent.traffic import TrafficPolicy
from routevpn.dataplane.ipsec import IpsecAdapter
from routevpn.dataplane.netlink import NetlinkAdapter
from routevpn.dataplane.real import RealDriver
from routevpn.dataplane.secret_record import SecretRecord
from routevpn.kube import http
from routevpn.kube.client import KubeClient, connect
from routevpn.kube.events import EventPoster

log = logging.getLogger("routevpn.agent")
#: Field manager of the agent's status applies, and the component of its Events.
FIELD_MANAGER = "routevpn-agent"


@dataclass(frozen=True, slots=True)
class Options:
    """Everything the command line says."""

    settings: AgentSettings
    vici_socket: str
    http_port: int
    bind_address: str = "0.0.0.0"  # noqa: S104 - a DaemonSet probe port, by design
    kubeconfig: str | None = None
    state_dir: Path | None = None


def proc_sys() -> Path:
    """/proc/sys, or the host's when the chart mounts it elsewhere (ROUTEVPN_PROC_SYS_NET)."""
    net = os.environ.get("ROUTEVPN_PROC_SYS_NET")
    return Path(net).parent if net else Path("/proc/sys")


async def serve(opts: Options) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    metrics = Metrics(opts.settings.node)
    kube = KubeClient(
        connect(opts.kubeconfig),
        FIELD_MANAGER,
        on_write=lambda kind: metrics.api_writes_total.labels(kind).inc(),
    )
    events = EventPoster(kube.create_event, FIELD_MANAGER, opts.settings.node)
    record = SecretRecord(opts.state_dir) if opts.state_dir is not None else None
    ipsec = IpsecAdapter(opts.vici_socket, record=record)
    async with NetlinkAdapter(proc_sys()) as netlink:
        driver = RealDriver(netlink, ipsec)
        s = opts.settings
        liveness = LivenessLease(kube, s.node, s.namespace)
        agent = Agent(opts.settings, kube, events, driver, metrics, ipsec.follow, liveness)
        runner = await http.serve(http_app(agent), opts.bind_address, opts.http_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "agent for node %s (namespace %s, VICI %s) serving on %s:%d",
            s.node,
            s.namespace,
            opts.vici_socket,
            opts.bind_address,
            opts.http_port,
        )
        await agent.start()
        try:
            await stop.wait()
        finally:
            # Leave the node as it is: stopping the agent must not disturb any tunnel. The
            # liveness Lease is left to run out: an agent restarting soon keeps its tunnels.
            log.info("agent stopping; tunnels stay up")
            await agent.stop()
            await runner.cleanup()
            ipsec.close()
            kube.close()


def options(args: argparse.Namespace) -> Options:
    """`Options` from parsed arguments (see `routevpn.agent.options.add_arguments`)."""
    if not args.node or not args.namespace:
        raise SystemExit("routevpn agent: --node and --namespace are required")
    settings = AgentSettings(
        node=args.node,
        namespace=args.namespace,
        resync_seconds=args.resync_seconds,
        counters_period=args.counters_period,
        traffic=TrafficPolicy(quiet=args.quiet_seconds, on_packets=args.traffic_min_packets),
        event_interval=args.event_interval,
        status_qps=args.status_qps,
        status_burst=args.status_burst,
        bird_socket=args.bird_socket,
        bird_config_dir=args.bird_config_dir,
        bgp_local_asn=args.bgp_local_asn,
        bgp_kernel_metric=args.bgp_kernel_metric,
        protected=tuple(args.protected_cidr),
        mss_clamp=args.mss_clamp,
    )
    return Options(
        settings=settings,
        vici_socket=args.vici_socket,
        http_port=args.http_port,
        bind_address=args.bind_address,
        kubeconfig=args.kubeconfig,
        state_dir=Path(args.state_dir) if args.state_dir else None,
    )


def main(args: argparse.Namespace) -> int:
    """`routevpn agent`: run with the parsed command line."""
    return run(options(args), args.log_level)


def run(opts: Options, log_level: str = "INFO") -> int:
    """Configure logging and run the agent; the process exit status."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Libraries' debug output is per packet/request: far too much next to ours.
    for noisy in ("pyroute2", "urllib3", "kubernetes", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(serve(opts))
    return 0
