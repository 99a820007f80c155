"""The operator's reconcile loop: a queue of tunnels, one at a time per key, several at once.

`decide` (pure) says what to write for one tunnel; this module sends it. Decisions are
taken synchronously on the event loop (no await between reading the view and recording
the claim), so allocation is race-free however many writes are in flight. A failed
reconcile is retried after a per-key exponential backoff, reset when the key succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from routevpn.api import naming
from routevpn.controller import bundle
from routevpn.controller.decide import Decision, OperatorSettings, World, decide
from routevpn.controller.metrics import (
    RECONCILE_DURATION,
    RECONCILE_ERRORS,
    RECONCILE_TOTAL,
)
from routevpn.controller.model import (
    TunnelKey,
    TunnelRecord,
    tunnel_from_body,
)
from routevpn.controller.store import Store
from routevpn.kube.backoff import KeyedBackoff
from routevpn.kube.client import ConflictError, KubeClient
from routevpn.kube.events import EventSink

log = logging.getLogger("routevpn.operator")


class Leadership(Protocol):
    """Whether this replica may decide and write now (`kube.lease`)."""

    @property
    def active(self) -> bool:
        """May this replica act now?"""
        ...

    async def wait(self) -> None:
        """Return once this replica may act."""
        ...


class NotLeadingError(Exception):
    """This replica stopped being the active one between the decision and a write."""


def user_secret(body: Mapping[str, Any] | None) -> bundle.UserSecret:
    """A user's Secret as read (type, data, opt-in label), or None when it does not exist."""
    if body is None:
        return None
    labels = (body.get("metadata") or {}).get("labels") or {}
    return bundle.Found(
        type=str(body.get("type") or bundle.OPAQUE_TYPE),
        data=dict(body.get("data") or {}),
        opted_in=labels.get(bundle.USAGE_LABEL) == bundle.USAGE_IKE,
    )


class OperatorReconciler:
    """Reconciles tunnels named by `enqueue`, each key never twice at the same time."""

    def __init__(
        self,
        store: Store,
        kube: KubeClient,
        events: EventSink,
        settings: OperatorSettings,
        leader: Leadership | None = None,
    ) -> None:
        self.store = store
        self.kube = kube
        self.events = events
        self.settings = settings
        #: None: always act (a single process with nobody to defer to).
        self.leader = leader
        self.backoff: KeyedBackoff[TunnelKey] = KeyedBackoff(base=0.05, cap=300.0)
        self._queue: asyncio.Queue[TunnelKey] = asyncio.Queue()
        self._queued: set[TunnelKey] = set()
        self._busy: set[TunnelKey] = set()
        self._again: set[TunnelKey] = set()
        self._waiting_since: dict[TunnelKey, float] = {}
        self._stale: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

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
        """Run `concurrency` workers until cancelled."""
        await asyncio.gather(*(self._loop() for _ in range(concurrency)))

    async def refresh_api_servers(self) -> None:
        """Read the API server's own addresses (never routed into a tunnel) into the view.

        Policies and namespace labels come through kopf's indexes; these come from the
        `kubernetes` Service and Endpoints in `default`, read now and then."""
        try:
            self.store.api_servers = tuple(await self.kube.api_server_addresses())
        except Exception as e:
            # Only a loss of protection beyond the flags' (--api-server-address): say so.
            log.warning("the API server's addresses could not be read: %s", type(e).__name__)

    @property
    def active(self) -> bool:
        """May this replica act now (always, without a leader)?"""
        return self._may_act()

    def delete_stale_secret(self, name: str) -> None:
        """Delete (in the background, if we lead) a delivered Secret under a name that
        is not its tunnel's current one: left by an older naming (`naming.secret_name`)."""
        if name in self._stale or not self._may_act():
            return  # the next resync (when we lead) lists it again
        self._stale.add(name)

        async def delete() -> None:
            try:
                self._guard()
                await self.kube.delete_secret(self.settings.routevpn_namespace, name)
                log.info("deleted delivered Secret %s (not its tunnel's current name)", name)
            except Exception as e:  # the next listing finds it again
                log.warning("stale delivered Secret %s not deleted: %s", name, type(e).__name__)
            finally:
                self._stale.discard(name)

        task = asyncio.get_running_loop().create_task(delete())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                self.backoff.succeeded(key)
            except NotLeadingError:
                # Not a failure: the key stays queued (the loop waits for the lead first).
                self.store.applied(key, None)
                self.enqueue(key)
            except ConflictError:
                # Our view was behind: the watch brings the newer object; look again soon.
                self.enqueue(key, self.backoff.failed(key))
            except Exception:
                RECONCILE_ERRORS.inc()
                delay = self.backoff.failed(key)
                log.exception(
                    "%s: reconcile failed, retrying in %.1fs", naming.tunnel_ref(*key), delay
                )
                self.store.applied(key, None)
                self.enqueue(key, delay)
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
                got = user_secret(await self.kube.read_secret(rec.namespace, name))
                # An event may have filled it while we read: the event is newer than our
                # read, so it wins (overwriting it would keep a rotated key stale).
                self.store.user_secrets.setdefault(ckey, got)
            out[name] = self.store.user_secrets[ckey]
        return out

    def _decide(self, key: TunnelKey, rec: TunnelRecord, secrets: Any) -> Decision:
        """The decision for `rec`, with its claims recorded in the store (no await)."""
        now = time.monotonic()
        since = self._waiting_since.get(key)
        world = World(
            nodes=self.store.nodes,
            holders_on=lambda node: self.store.holders_on(node, key),
            user_secrets=secrets,
            delivered=self.store.delivered.get(key),
            now=datetime.now(UTC),
            waiting_for=since,
            settings=self.settings,
            policy=self.store.policy_view(self.settings.protected, self.settings.without_policy),
            agents=self.store.agents.view(now),
        )
        d = decide(rec, self.store.effective(key), world, now - since if since else 0.0)
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
        return d

    async def _process(self, key: TunnelKey) -> None:
        rec = self.store.tunnels.get(key)
        if rec is None:
            return
        secrets = await self._user_secrets(rec)
        # From here to the claims recorded in _decide nothing awaits: decision and claim
        # are atomic.
        rec = self.store.tunnels.get(key)
        if rec is None:
            return
        if not self._may_act():
            self.enqueue(key)  # standing by: the loop waits for the lead before taking it
            return
        d = self._decide(key, rec, secrets)
        await self._write(rec, d)
        if d.requeue_after is not None:
            self.enqueue(key, d.requeue_after)

    # -- writing a decision ----------------------------------------------------------

    async def _write(self, rec: TunnelRecord, d: Decision) -> None:
        """Status, delivered Secret, metadata (finalizers, label), then Events."""
        rec = await self._write_status(rec, d)
        if d.secret is not None:
            self._guard()
            await self.kube.apply_secret(d.secret)
        secret_ns = self.settings.routevpn_namespace
        secret_name = naming.secret_name(rec.namespace, rec.name)
        # Released: the Secret goes before the last finalizer (nothing is left behind if
        # the operator stops between the two); otherwise after the label is gone.
        if d.delete_secret and d.remove_operator_finalizer:
            self._guard()
            await self.kube.delete_secret(secret_ns, secret_name)
        await self._write_metadata(rec, d)
        if d.delete_secret and not d.remove_operator_finalizer:
            self._guard()
            await self.kube.delete_secret(secret_ns, secret_name)
        if d.remove_operator_finalizer:
            log.info("%s: released (allocation freed, delivered Secret deleted)", rec.ref)
        await self._post_events(rec, d)

    async def _write_status(self, rec: TunnelRecord, d: Decision) -> TunnelRecord:
        if not d.status_changed or d.status is None:
            return rec
        self._guard()
        got = await self.kube.apply_tunnel_status(rec.namespace, rec.name, d.status)
        if got is None:
            return rec
        fresh = tunnel_from_body(got)
        self.store.put_tunnel(fresh)
        return fresh

    async def _write_metadata(self, rec: TunnelRecord, d: Decision) -> None:
        finalizers = _finalizers(rec.finalizers, d)
        labels = {naming.NODE_LABEL: d.label} if d.label_changed else None
        if finalizers is None and labels is None:
            return
        self._guard()
        patched = await self.kube.patch_tunnel_metadata(
            rec.metadata(), finalizers=finalizers, labels=labels
        )
        if patched is not None:
            self.store.put_tunnel(tunnel_from_body(patched))
        if d.label_changed:
            log.info("%s: label %s=%s", rec.ref, naming.NODE_LABEL, d.label or "(removed)")

    async def _post_events(self, rec: TunnelRecord, d: Decision) -> None:
        for etype, reason, message in d.events:
            log.info("%s: %s %s: %s", rec.ref, etype, reason, message)
            if not self._may_act():
                return  # the decision is written; only its Events are left out
            try:
                await self.events.post(rec.body_ref(), etype, reason, message)
            except Exception as e:
                # An Event that can't be posted must not undo the decision: logged above.
                log.warning("%s: event %s not posted: %s", rec.ref, reason, type(e).__name__)


def _finalizers(current: tuple[str, ...], d: Decision) -> list[str] | None:
    """The finalizer list the decision wants, or None when it is unchanged."""
    new = list(current)
    if d.add_operator_finalizer and naming.OPERATOR_FINALIZER not in new:
        new.append(naming.OPERATOR_FINALIZER)
    drop = set()
    if d.remove_agent_finalizer:
        drop.add(naming.AGENT_FINALIZER)
    if d.remove_operator_finalizer:
        drop.add(naming.OPERATOR_FINALIZER)
    new = [f for f in new if f not in drop]
    return None if new == list(current) else new
