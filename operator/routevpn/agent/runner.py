"""The agent process: watches, charon's events, the resync timer, one worker, HTTP.

Everything that can make a tunnel need attention marks it dirty; one worker takes
all dirty tunnels at a time and runs a reconcile pass over them. So a burst of
events costs one pass, and passes never overlap (the node is changed by one writer).

- watch items (VpnTunnels for this node, delivered Secrets in our namespace);
- charon's events (IKE/CHILD up/down, rekeys, failure log lines, reconnects);
- the resync timer (every tunnel, every `resync_seconds`: repairs drift).
The first pass waits for the first full list of both watches, so the startup
garbage collection sees every tunnel that still wants its configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from routevpn.agent.decide import secret_owner
from routevpn.agent.kube import Informer, Kube, WatchItem, key_of, secret_informer, tunnel_informer
from routevpn.agent.metrics import Metrics
from routevpn.agent.reconciler import Key, Reconciler, Settings
from routevpn.api import naming
from routevpn.dataplane.driver import Driver
from routevpn.dataplane.vici_facts import IpsecEvent

log = logging.getLogger(__name__)

EventSource = Callable[[], AsyncIterator[IpsecEvent]]
RETRY_SECONDS = 2.0


class Agent:
    """Wires the watches, the event follower and the reconciler together."""

    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        driver: Driver,
        metrics: Metrics,
        events: EventSource | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.reconciler = Reconciler(settings, kube, driver, metrics)
        self.events = events
        self.dirty: set[Key] = set()
        self.wake = asyncio.Event()
        self.listed: set[str] = set()
        self.passes = 0
        self.last_pass = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._informers: list[Informer] = []

    # -- health ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """After the first full list of both watches and a first pass with charon up."""
        return (
            {"tunnels", "secrets"} <= self.listed
            and self.passes > 0
            and (self.reconciler.charon_ok)
        )

    @property
    def alive(self) -> bool:
        """The worker runs and has not been stuck for several resync periods."""
        stuck = time.monotonic() - self.last_pass > max(120.0, 4 * self.settings.resync_seconds)
        return bool(self._tasks) and not any(t.done() for t in self._tasks) and not stuck

    # -- marking work ---------------------------------------------------------------

    def mark(self, *keys: Key) -> None:
        """Make `keys` part of the next pass."""
        self.dirty.update(keys)
        self.wake.set()

    def _on_watch(self, item: WatchItem) -> None:
        state = self.reconciler.state
        if item.source == "tunnels":
            if item.kind == "list":
                fresh = {key_of(o): o for o in item.objects}
                gone = set(state.tunnels) - set(fresh)
                changed = {k for k, o in fresh.items() if _rv(state.tunnels.get(k)) != _rv(o)}
                state.tunnels = fresh
                self.listed.add("tunnels")
                self.mark(*gone, *changed)
                return
            for obj in item.objects:
                key = key_of(obj)
                if item.kind == "DELETED":
                    state.tunnels.pop(key, None)
                    self.mark(key)
                elif _rv(state.tunnels.get(key)) != _rv(obj):
                    # an echo of our own status write is already cached: no pass for it
                    state.tunnels[key] = obj
                    self.mark(key)
            return
        # delivered secrets, keyed by the tunnel they are for
        if item.kind == "list":
            fresh = {}
            for obj in item.objects:
                owner = secret_owner(obj)
                if owner is not None:
                    fresh[owner] = obj
            moved = {k for k in set(fresh) | set(state.secrets)
                     if _rv(fresh.get(k)) != _rv(state.secrets.get(k))}  # fmt: skip
            state.secrets = fresh
            self.listed.add("secrets")
            self.mark(*(k for k in moved if k in state.tunnels))
            return
        for obj in item.objects:
            owner = secret_owner(obj)
            if owner is None:
                continue
            if item.kind == "DELETED":
                state.secrets.pop(owner, None)
            else:
                state.secrets[owner] = obj
            if owner in state.tunnels:
                self.mark(owner)

    def _on_ipsec(self, event: IpsecEvent) -> None:
        if event.kind == "reconnected":
            log.info("charon reconnected: checking every tunnel")
            self.mark(*self.reconciler.state.tunnels)
            return
        found = self.reconciler.reasons.feed(event)
        conn = found[0] if found else event.conn
        if event.kind == "log" and found is None:
            return
        parsed = naming.parse_conn_name(conn)
        if parsed is not None and parsed in self.reconciler.state.tunnels:
            self.mark(parsed)

    # -- tasks ----------------------------------------------------------------------

    async def _watch_loop(self, queue: asyncio.Queue[WatchItem]) -> None:
        while True:
            self._on_watch(await queue.get())

    async def _events_loop(self) -> None:
        assert self.events is not None
        while True:
            try:
                async for event in self.events():
                    self._on_ipsec(event)
            except Exception as e:  # the follower reconnects itself; this is a last resort
                log.warning("charon event stream ended (%s); restarting it", type(e).__name__)
            await asyncio.sleep(RETRY_SECONDS)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            self.mark(*self.reconciler.state.tunnels)

    async def _worker(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not {"tunnels", "secrets"} <= self.listed:
                continue
            keys, self.dirty = self.dirty, set()
            if not self.reconciler.gc_done:
                keys |= set(self.reconciler.state.tunnels)
            started = time.monotonic()
            try:
                await self.reconciler.run_pass(keys)
                self.metrics.reconcile_total.labels("success").inc(len(keys) or 1)
            except Exception:
                log.exception("reconcile pass failed; retrying those tunnels")
                self.metrics.reconcile_total.labels("error").inc(len(keys) or 1)
                self.metrics.reconcile_errors_total.inc()
                asyncio.get_running_loop().call_later(RETRY_SECONDS, self.mark, *keys)
            elapsed = time.monotonic() - started
            for _ in keys or [None]:
                self.metrics.reconcile_duration.observe(elapsed / max(len(keys), 1))
            self.passes += 1
            self.last_pass = time.monotonic()

    async def start(self) -> None:
        """Start the watches and every task."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[WatchItem] = asyncio.Queue()
        s = self.settings
        self._informers = [
            tunnel_informer(self.kube, s.node, loop, queue),
            secret_informer(self.kube, s.namespace, s.node, loop, queue),
        ]
        for informer in self._informers:
            informer.start()
        coros: list[Any] = [self._watch_loop(queue), self._resync_loop(), self._worker()]
        if self.events is not None:
            coros.append(self._events_loop())
        self._tasks = [asyncio.create_task(c) for c in coros]

    async def stop(self) -> None:
        """Stop every task and ask the watch threads to end."""
        for informer in self._informers:
            informer.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _rv(obj: dict[str, Any] | None) -> str | None:
    return None if obj is None else str((obj.get("metadata") or {}).get("resourceVersion"))


def http_app(agent: Agent) -> web.Application:
    """/metrics, /healthz, /readyz."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(agent.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = agent.alive
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "stuck\n")

    async def readyz(_: web.Request) -> web.Response:
        if agent.ready:
            return web.Response(text="ok\n")
        missing = [w for w in ("tunnels", "secrets") if w not in agent.listed]
        why = f"waiting for the first list of {', '.join(missing)}" if missing else ""
        if not why:
            why = "charon unreachable" if not agent.reconciler.charon_ok else "first pass"
        return web.Response(status=503, text=f"not ready: {why}\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
