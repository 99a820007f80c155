"""`/metrics` and `/healthz` on --http-port (aiohttp, in the operator's event loop)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from routevpn.controller.metrics import REGISTRY


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


async def _healthz(_: web.Request) -> web.Response:
    # Alive means the event loop answers; a standby replica (peering) is healthy too.
    return web.Response(text="ok\n")


async def start(host: str, port: int) -> web.AppRunner:
    """Serve until the returned runner is cleaned up."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
