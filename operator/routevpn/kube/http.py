"""`/metrics`, `/healthz` and `/readyz` of both processes (aiohttp, in their event loop)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: A probe: (healthy, what to say). The text goes into the probe's reply for people.
Probe = Callable[[], tuple[bool, str]]


def _always() -> tuple[bool, str]:
    return True, "ok"


def app(
    registry: CollectorRegistry, healthz: Probe = _always, readyz: Probe = _always
) -> web.Application:
    """The application: Prometheus text from `registry`, and two probes (503 when false)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    def probe(check: Probe) -> Callable[[web.Request], object]:
        async def handler(_: web.Request) -> web.Response:
            ok, text = check()
            return web.Response(status=200 if ok else 503, text=f"{text}\n")

        return handler

    application = web.Application()
    application.router.add_get("/metrics", metrics)
    application.router.add_get("/healthz", probe(healthz))  # type: ignore[arg-type]
    application.router.add_get("/readyz", probe(readyz))  # type: ignore[arg-type]
    return application


async def serve(application: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `application` on host:port until the returned runner is cleaned up."""
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
