"""`routevpn agent`: build the real parts (API client, netlink, VICI) and run until signalled."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from kubernetes import client, config

from routevpn.agent.kube import Kube
from routevpn.agent.metrics import Metrics
from routevpn.agent.reconciler import Settings
from routevpn.agent.runner import Agent, http_app
from routevpn.dataplane.driver import RealDriver
from routevpn.dataplane.ipsec import IpsecAdapter
from routevpn.dataplane.netlink import NetlinkAdapter

log = logging.getLogger("routevpn.agent")


@dataclass(frozen=True, slots=True)
class Options:
    """Everything the command line says."""

    settings: Settings
    vici_socket: str
    http_port: int
    bind_address: str = "0.0.0.0"  # noqa: S104 - a DaemonSet probe port, by design
    kubeconfig: str | None = None


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client from `kubeconfig`, else the pod's service account, else ~/.kube/config."""
    if kubeconfig:
        api: client.ApiClient = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        return api
    conf = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    return client.ApiClient(conf)


def proc_sys() -> Path:
    """/proc/sys, or the host's when the chart mounts it elsewhere (ROUTEVPN_PROC_SYS_NET)."""
    net = os.environ.get("ROUTEVPN_PROC_SYS_NET")
    return Path(net).parent if net else Path("/proc/sys")


async def serve(opts: Options) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    metrics = Metrics()
    api = api_client(opts.kubeconfig)
    kube = Kube(api, on_write=lambda kind: metrics.api_writes_total.labels(kind).inc())
    ipsec = IpsecAdapter(opts.vici_socket)
    async with NetlinkAdapter(proc_sys()) as netlink:
        agent = Agent(opts.settings, kube, RealDriver(netlink, ipsec), metrics, ipsec.follow)
        runner = web.AppRunner(http_app(agent), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, opts.bind_address, opts.http_port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        s = opts.settings
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
            # Leave the node as it is: stopping the agent must not disturb any tunnel.
            log.info("agent stopping; tunnels stay up")
            await agent.stop()
            await runner.cleanup()
            ipsec.close()
            api.close()  # type: ignore[no-untyped-call]


def options(args: argparse.Namespace) -> Options:
    """`Options` from parsed arguments (see `routevpn.agent.options.add_arguments`)."""
    if not args.node or not args.namespace:
        raise SystemExit("routevpn agent: --node and --namespace are required")
    settings = Settings(
        node=args.node,
        namespace=args.namespace,
        resync_seconds=args.resync_seconds,
        counters_period=args.counters_period,
        quiet_seconds=args.quiet_seconds,
    )
    return Options(
        settings=settings,
        vici_socket=args.vici_socket,
        http_port=args.http_port,
        bind_address=args.bind_address,
        kubeconfig=args.kubeconfig,
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
