"""The reconcile queue: one tunnel at a time per key, several keys at once.

Decisions are taken synchronously on the event loop (no await between reading the view
and recording the claim), so allocation is race-free however many writes are in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from routevpn.api import naming
from routevpn.api.conditions import ConditionType
from routevpn.controller import bundle
from routevpn.controller.kubeio import ConflictError, KubeIO
from routevpn.controller.leader import Leader
from routevpn.controller.metrics import (
    RECONCILE_DURATION,
    RECONCILE_ERRORS,
    RECONCILE_TOTAL,
    TUNNELS,
)
from routevpn.controller.model import (
    TunnelKey,
    TunnelRecord,
    delivered_from_body,
    node_from_body,
    tunnel_from_body,
)
from routevpn.controller.reconcile import Decision, Settings, World, decide
from routevpn.controller.status import apply_body
from routevpn.controller.store import Store

log = logging.getLogger("routevpn.operator")

#: Delay before retrying a reconcile that failed (API error, 409): long enough not to spin.
RETRY_DELAY = 2.0


class NotLeadingError(Exception):
    """This replica stopped being the active one between the decision and a write."""


class Worker:
    """Reconciles tunnels named by `enqueue`, each key never twice at the same time."""

    def __init__(
        self, store: Store, io: KubeIO, settings: Settings, leader: Leader | None = None
    ) -> None:
        self.store = store
        self.io = io
        self.settings = settings
        #: None: always act (a single process with nobody to defer to).
        self.leader = leader
        self._queue: asyncio.Queue[TunnelKey] = asyncio.Queue()
        self._queued: set[TunnelKey] = set()
        self._busy: set[TunnelKey] = set()
        self._again: set[TunnelKey] = set()
        self._waiting_since: dict[TunnelKey, float] = {}

    def enqueue(self, key: TunnelKey, delay: float = 0.0) -> None:
        """Look at tunnel `key` (again) now or after `delay` seconds."""
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.enqueue, key)
            return
        if key in self._busy:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def idle(self) -> bool:
        """Nothing queued or running (tests and the benchmark poll the API, not this)."""
        return not self._queued and not self._busy

    async def run(self, concurrency: int) -> None:
        """Run `concurrency` reconcilers until cancelled."""
        await asyncio.gather(*(self._loop() for _ in range(concurrency)))

    async def resync(self) -> None:
        """Re-read every tunnel, node and delivered Secret, forget our own decisions, and
        look at every tunnel. kopf re-lists when its paused watches resume, but what was
        deleted meanwhile never comes as an event: a delivered Secret the other replica
        deleted would still count as delivered (a label without its Secret)."""
        items = await self.io.list_tunnels()
        nodes = await self.io.list_nodes()
        delivered = await self.io.list_delivered(self.settings.routevpn_namespace)
        self.store.resync(tunnel_from_body(body) for body in items)
        self.store.nodes = {rec.name: rec for rec in (node_from_body(b) for b in nodes)}
        self.store.delivered = {
            got.tunnel: got
            for got in (delivered_from_body(b) for b in delivered)
            if got.tunnel is not None
        }
        self._waiting_since.clear()
        for key in list(self.store.tunnels):
            self.enqueue(key)

    def _may_act(self) -> bool:
        return self.leader is None or self.leader.active

    def _guard(self) -> None:
        """Right before each write: only the active replica writes (its lease may have
        run out while an earlier write of the same batch was in flight)."""
        if not self._may_act():
            raise NotLeadingError

    async def _loop(self) -> None:
        while True:
            if self.leader is not None:
                await self.leader.wait()
            key = await self._queue.get()
            self._queued.discard(key)
            self._busy.add(key)
            t0 = time.monotonic()
            try:
                await self._process(key)
            except ConflictError:
                self.enqueue(key, RETRY_DELAY / 4)
            except NotLeadingError:
                # Not a failure: the view is re-read when this replica leads again, and
                # the key stays queued (the loop waits for the lead before taking it).
                self.store.applied(key, None)
                self.enqueue(key)
            except Exception:
                RECONCILE_ERRORS.inc()
                log.exception("%s: reconcile failed, retrying", naming.tunnel_ref(*key))
                self.store.applied(key, None)
                self.enqueue(key, RETRY_DELAY)
            finally:
                RECONCILE_TOTAL.inc()
                RECONCILE_DURATION.observe(time.monotonic() - t0)
                self._busy.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.enqueue(key)

    async def _user_secrets(self, rec: TunnelRecord) -> dict[str, bundle.UserSecret]:
        out: dict[str, bundle.UserSecret] = {}
        if rec.spec is None or rec.deleting:
            return out
        for name in bundle.referenced(rec.spec):
            ckey = (rec.namespace, name)
            if ckey not in self.store.user_secrets:
                got = await self.io.read_secret(rec.namespace, name)
                # An event may have filled it while we read: the event is newer than our
                # read, so it wins (overwriting it would keep a rotated key stale).
                self.store.user_secrets.setdefault(ckey, got)
            out[name] = self.store.user_secrets[ckey]
        return out

    async def _process(self, key: TunnelKey) -> None:
        rec = self.store.tunnels.get(key)
        if rec is None:
            return
        secrets = await self._user_secrets(rec)
        # From here to store.applied() nothing awaits: the decision and its claim are atomic.
        rec = self.store.tunnels.get(key)
        if rec is None:
            return
        if not self._may_act():
            # Standing by: keep it queued (the loop waits for the lead before taking it).
            self.enqueue(key)
            return
        now = time.monotonic()
        since = self._waiting_since.get(key)
        d = decide(
            rec,
            self.store.effective(key),
            World(
                nodes=self.store.nodes,
                holders_on=lambda node: self.store.holders_on(node, key),
                user_secrets=secrets,
                delivered=self.store.delivered.get(key),
                now=datetime.now(UTC),
                waiting_for=since,
                settings=self.settings,
            ),
            now - since if since is not None else 0.0,
        )
        if d.waiting:
            self._waiting_since.setdefault(key, now)
        else:
            self._waiting_since.pop(key, None)
        claims_before = self.store.holders_on_key(key)
        if d.status_changed and d.status is not None:
            self.store.applied(key, d.status)
        if d.released:
            self.store.release(key)
        if self.store.holders_on_key(key) != claims_before:
            for other in self.store.waiting_on_others():
                if other != key:
                    self.enqueue(other)
        await self._write(rec, d)
        if d.requeue_after is not None:
            self.enqueue(key, d.requeue_after)

    async def _write(self, rec: TunnelRecord, d: Decision) -> None:
        ns, name = rec.key
        body_ref = rec.body_ref()
        finalizers = list(rec.finalizers)
        rv = rec.resource_version
        if d.status_changed and d.status is not None:
            self._guard()
            got = await self.io.apply_status(ns, name, apply_body(ns, name, d.status))
            fresh = tunnel_from_body(got)
            self.store.put_tunnel(fresh)
            finalizers, rv = list(fresh.finalizers), fresh.resource_version
        if d.secret is not None:
            self._guard()
            await self.io.apply_secret(d.secret)
        patch: dict[str, Any] = {"metadata": {}}
        new_fin = list(finalizers)
        if d.add_operator_finalizer and naming.OPERATOR_FINALIZER not in new_fin:
            new_fin.append(naming.OPERATOR_FINALIZER)
        if d.remove_agent_finalizer:
            new_fin = [f for f in new_fin if f != naming.AGENT_FINALIZER]
        if d.remove_operator_finalizer:
            new_fin = [f for f in new_fin if f != naming.OPERATOR_FINALIZER]
        if new_fin != finalizers:
            # Guarded by resourceVersion: a list read before another writer's change fails
            # with 409 (and is looked at again) instead of dropping that writer's finalizer.
            patch["metadata"]["finalizers"] = new_fin
            patch["metadata"]["resourceVersion"] = rv
        if d.label_changed:
            patch["metadata"]["labels"] = {naming.NODE_LABEL: d.label}
        secret_ns, secret_name = self.settings.routevpn_namespace, naming.secret_name(ns, name)
        if d.delete_secret and d.remove_operator_finalizer:
            self._guard()
            await self.io.delete_secret(secret_ns, secret_name)
        if patch["metadata"]:
            self._guard()
            patched = await self.io.patch_metadata(ns, name, patch, "metadata")
            if patched is not None:
                self.store.put_tunnel(tunnel_from_body(patched))
            if d.label_changed:
                log.info("%s: label %s=%s", rec.ref, naming.NODE_LABEL, d.label or "(removed)")
        if d.delete_secret and not d.remove_operator_finalizer:
            self._guard()
            await self.io.delete_secret(secret_ns, secret_name)
        if d.remove_operator_finalizer:
            log.info("%s: released (allocation freed, delivered Secret deleted)", rec.ref)
        for etype, reason, message in d.events:
            log.info("%s: %s %s: %s", rec.ref, etype, reason, message)
            # An Event that can't be posted must not undo the decision: logged above.
            if not self._may_act():
                return  # the decision is written; only its Events are left out
            try:
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                await self.io.post_event(body_ref, etype, reason, message, stamp)
            except Exception as e:
                log.warning("%s: event %s not posted: %s", rec.ref, reason, type(e).__name__)

    def count_ready(self) -> None:
        """Refresh the routevpn_tunnels gauge from the view."""
        counts = {"True": 0, "False": 0, "Unknown": 0}
        for key in self.store.tunnels:
            ready = "Unknown"
            for c in self.store.effective(key).get("conditions") or []:
                if c.get("type") == ConditionType.READY:
                    ready = str(c.get("status", "Unknown"))
            counts[ready if ready in counts else "Unknown"] += 1
        for value, n in counts.items():
            TUNNELS.labels(value).set(n)
