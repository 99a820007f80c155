"""The agent process: watches, charon's events, the resync timer, one worker, HTTP.

Everything that can make a tunnel need attention marks it dirty; one worker takes
all dirty tunnels at a time and runs a reconcile pass over them. So a burst of
events costs one pass, and passes never overlap (the node is changed by one writer).

- watch items (VpnTunnels for this node, delivered Secrets in our namespace);
- charon's events (IKE/CHILD up/down, rekeys, failure log lines, reconnects);
- the resync timer (every tunnel, every `resync_seconds`: repairs drift).
Beside them, the liveness Lease is renewed (`agent.liveness`), apart from any pass.
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

from routevpn.agent.liveness import LivenessLease
from routevpn.agent.metrics import Metrics
from routevpn.agent.reconciler import AgentReconciler
from routevpn.agent.settings import AgentSettings
from routevpn.agent.work import Key
from routevpn.api import naming
from routevpn.dataplane.driver import Driver
from routevpn.dataplane.vici_facts import IpsecEvent
from routevpn.kube import http
from routevpn.kube.backoff import Backoff, KeyedBackoff
from routevpn.kube.client import KubeClient, Obj, key_of
from routevpn.kube.events import EventSink
from routevpn.kube.watch import Watcher, WatchItem

log = logging.getLogger(__name__)

EventSource = Callable[[], AsyncIterator[IpsecEvent]]


class Agent:
    """Wires the watches, the event follower and the reconciler together."""

    def __init__(
        self,
        settings: AgentSettings,
        kube: KubeClient,
        events: EventSink,
        driver: Driver,
        metrics: Metrics,
        ipsec_events: EventSource | None = None,
        liveness: LivenessLease | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.reconciler = AgentReconciler(settings, kube, events, driver, metrics)
        # a health probe's verdict changed: a pass at once, as for charon's events
        self.reconciler.probes.on_change = self.mark
        self.ipsec_events = ipsec_events
        self.liveness = liveness
        #: Per-tunnel retry delays after a failed pass (reset when the tunnel's pass works).
        self.backoff: KeyedBackoff[Key] = KeyedBackoff(base=0.5, cap=120.0)
        self.dirty: set[Key] = set()
        self.wake = asyncio.Event()
        self.listed: set[str] = set()
        self.passes = 0
        self.last_pass = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: list[Watcher] = []

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
        if item.source == "tunnels":
            self._on_tunnels(item)
        else:
            self._on_secrets(item)

    def _on_tunnels(self, item: WatchItem) -> None:
        state = self.reconciler.state
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

    def _on_secrets(self, item: WatchItem) -> None:
        """Delivered Secrets, keyed by the tunnel they are for."""
        state = self.reconciler.state
        owned = [(_owner(obj), obj) for obj in item.objects]
        if item.kind == "list":
            fresh = {owner: obj for owner, obj in owned if owner is not None}
            moved = {k for k in set(fresh) | set(state.secrets)
                     if _rv(fresh.get(k)) != _rv(state.secrets.get(k))}  # fmt: skip
            state.secrets = fresh
            self.listed.add("secrets")
            self.mark(*(k for k in moved if k in state.tunnels))
            return
        for owner, obj in owned:
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
            self._count(event, parsed, failed=found is not None)
            self.mark(parsed)

    def _count(self, event: IpsecEvent, key: tuple[str, str], failed: bool) -> None:
        """Rekeys and negotiation failures of a tunnel of this node, for /metrics."""
        if failed:
            self.metrics.ike_failed(*key)
        elif event.kind in ("ike-rekey", "child-rekey"):
            self.metrics.rekeyed(*key, event.kind.removesuffix("-rekey"))

    # -- tasks ----------------------------------------------------------------------

    async def _watch_loop(self, queue: asyncio.Queue[WatchItem]) -> None:
        while True:
            self._on_watch(await queue.get())

    async def _events_loop(self) -> None:
        assert self.ipsec_events is not None
        backoff = Backoff(base=1.0, cap=30.0)
        while True:
            try:
                async for event in self.ipsec_events():
                    self._on_ipsec(event)
                    backoff.reset()
            except Exception as e:  # the follower reconnects itself; this is a last resort
                log.warning("charon event stream ended (%s); restarting it", type(e).__name__)
            await asyncio.sleep(backoff.next_delay())

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
                for key in keys:
                    self.backoff.succeeded(key)
            except Exception:
                self.metrics.reconcile_total.labels("error").inc(len(keys) or 1)
                self.metrics.reconcile_errors_total.inc()
                self._retry_later(keys)
            elapsed = time.monotonic() - started
            for _ in keys or [None]:
                self.metrics.reconcile_duration.observe(elapsed / max(len(keys), 1))
            self._write_deferred_later()
            self.passes += 1
            self.last_pass = time.monotonic()

    def _write_deferred_later(self) -> None:
        """Tunnels whose status write was over budget: again once the budget allows."""
        deferred, self.reconciler.deferred = self.reconciler.deferred, set()
        if deferred:
            delay = self.reconciler.budget.wait()
            asyncio.get_running_loop().call_later(delay, self.mark, *deferred)

    def _retry_later(self, keys: set[Key]) -> None:
        """A failed pass: each of its tunnels again after its own growing delay."""
        loop = asyncio.get_running_loop()
        delays = {key: self.backoff.failed(key) for key in keys}
        log.exception(
            "reconcile pass failed; retrying its %d tunnel(s) in %.1fs or more",
            len(keys), min(delays.values(), default=0.0),
        )  # fmt: skip
        for key, delay in delays.items():
            loop.call_later(delay, self.mark, key)

    async def start(self) -> None:
        """Start the watches and every task."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[WatchItem] = asyncio.Queue()
        s = self.settings
        # Both with a server-side label selector: only this node's tunnels and Secrets.
        selector = f"{naming.NODE_LABEL}={s.node}"
        self._watchers = [
            Watcher(self.kube.tunnels(selector), loop, queue),
            Watcher(self.kube.secrets(s.namespace, selector), loop, queue),
        ]
        for watcher in self._watchers:
            watcher.start()
        coros: list[Any] = [self._watch_loop(queue), self._resync_loop(), self._worker()]
        if self.ipsec_events is not None:
            coros.append(self._events_loop())
        if self.liveness is not None:
            coros.append(self.liveness.run())
        self._tasks = [asyncio.create_task(c) for c in coros]

    async def stop(self) -> None:
        """Stop every task and ask the watch threads to end."""
        for watcher in self._watchers:
            watcher.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.reconciler.probes.close()


def _owner(secret: Obj) -> Key | None:
    return naming.current_delivered(secret.get("metadata") or {})


def _rv(obj: dict[str, Any] | None) -> str | None:
    return None if obj is None else str((obj.get("metadata") or {}).get("resourceVersion"))


def http_app(agent: Agent) -> web.Application:
    """/metrics, /healthz (the worker runs), /readyz (listed, charon up, first pass)."""

    def healthz() -> tuple[bool, str]:
        return (True, "ok") if agent.alive else (False, "stuck")

    def readyz() -> tuple[bool, str]:
        if agent.ready:
            return True, "ok"
        missing = [w for w in ("tunnels", "secrets") if w not in agent.listed]
        why = f"waiting for the first list of {', '.join(missing)}" if missing else ""
        if not why:
            why = "charon unreachable" if not agent.reconciler.charon_ok else "first pass"
        return False, f"not ready: {why}"

    return http.app(agent.metrics.registry, healthz, readyz)
