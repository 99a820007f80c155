"""One reconcile pass over some tunnels: observe → plan → diff/apply → report.

Level-based: each pass reads what the node has (one `driver.observe()` before applying,
shared by every tunnel of the pass through `driver.batch()`, and one after), asks the
driver to make the node match each plan (it changes only what differs and says what it
changed), and reports conditions and SA facts through server-side apply, only when they
differ from what the server already holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from routevpn.agent import conditions as cond
from routevpn.agent import failover as fo
from routevpn.agent import selectors as sel
from routevpn.agent import status as st
from routevpn.agent.bgp_step import BgpStep
from routevpn.agent.budget import WriteBudget
from routevpn.agent.clamp import ClampSet
from routevpn.agent.decide import Action, decide, delivered
from routevpn.agent.desired import (
    Blocked,
    DeliveredMaterial,
    build_plan,
    local_address,
    underlay_of,
)
from routevpn.agent.eventlimit import EventLimiter
from routevpn.agent.finalizer import has_finalizer, set_finalizer
from routevpn.agent.metrics import Metrics
from routevpn.agent.mtu import MtuFollower
from routevpn.agent.passclock import PassClock, every
from routevpn.agent.probe import target_of
from routevpn.agent.prober import ProbeSet
from routevpn.agent.settings import AgentSettings
from routevpn.agent.traffic import TrafficTracker
from routevpn.agent.work import Key, State, Work
from routevpn.api import naming
from routevpn.api.conditions import Reason, Status
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane.driver import Driver
from routevpn.dataplane.errors import DataplaneError
from routevpn.dataplane.facts import Facts, IpsecFacts
from routevpn.dataplane.reasons import ReasonTracker
from routevpn.kube.client import ConflictError, Obj, TunnelApi
from routevpn.kube.events import EventSink

log = logging.getLogger(__name__)

_T = TypeVar("_T")
# API requests of one pass in flight at once (finalizers, status writes, events): a
# pass over 200 new tunnels is not 200 round trips end to end, and the API server sees
# no more than a client applying a manifest would send.
API_CONCURRENCY = 8


class AgentReconciler:
    """Turns watched objects into node changes and status writes."""

    def __init__(
        self,
        settings: AgentSettings,
        kube: TunnelApi,
        events: EventSink,
        driver: Driver,
        metrics: Metrics,
        reasons: ReasonTracker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.events = events
        self.driver = driver
        self.metrics = metrics
        self.reasons = reasons or ReasonTracker()
        self.clock = clock
        self.state = State()
        self.traffic = TrafficTracker(settings.traffic)
        self.event_limit = EventLimiter(settings.event_interval)
        self.mtu = MtuFollower()
        self.clamp = ClampSet(settings.mss_clamp)  # TCP MSS clamp: the node's interfaces
        self.probes = ProbeSet(metrics)  # health probes (spec.healthCheck) by tunnel
        self.bgp = BgpStep(settings)  # spec.bgp: the node's BIRD
        self.charon_ok = False
        self.gc_done = False
        #: The node's tunnels as failover saw them last (routes, which carry traffic).
        self.node_routes = fo.NodeRoutes({}, frozenset())
        self.budget = WriteBudget(settings.status_qps, settings.status_burst)
        self.deferred: set[Key] = set()  # status writes over budget: for a later pass
        self._api_slots = asyncio.Semaphore(API_CONCURRENCY)
        self._slots_loop: asyncio.AbstractEventLoop | None = None

    async def _call(self, request: Awaitable[_T]) -> _T:
        """One API request; at most API_CONCURRENCY of a pass in flight at once."""
        loop = asyncio.get_running_loop()
        if self._slots_loop is not loop:  # a semaphore belongs to one event loop
            self._api_slots, self._slots_loop = asyncio.Semaphore(API_CONCURRENCY), loop
        async with self._api_slots:
            return await request

    # -- the pass -------------------------------------------------------------------

    async def run_pass(self, keys: Iterable[Key]) -> None:
        """Reconcile `keys` (tunnels that changed, or all of them on a resync)."""
        keys = set(keys)
        if not keys and self.gc_done:
            return  # nothing to look at: no dump of the node, no VICI listing
        work: list[Work] = []
        released: list[tuple[Key, Obj]] = []
        clock = PassClock()
        # One observation for the whole pass: the driver keeps it current with its own
        # changes, so each tunnel's safety check sees what earlier tunnels changed.
        async with self.driver.batch():
            facts = await self._observe()
            clock.lap("observe")
            for key in self._with_siblings(keys, facts):
                obj = self.state.tunnels.get(key)
                if obj is None:
                    await self._gone(key)
                    continue
                action = decide(obj, self.settings.node)
                if action is Action.TEARDOWN:
                    await self._teardown(key)
                    released.append((key, obj))
                elif action is Action.CONFIGURE:
                    work.append(self._plan(key, obj, facts))
            clock.lap("plan+teardown")
            if not self.gc_done:
                await self._garbage_collect(work)
            # the finalizer before anything is applied: from then on the object can't
            # vanish before teardown (API writes of a pass run side by side, bounded)
            await every(self._ensure_finalizer(w) for w in work if w.plan is not None)
            clock.lap("finalizers")
            for w in work:
                await self._apply(w)
            await self.bgp.sync()  # every session of the node: nothing when none
            for change in await self.clamp.apply(self.driver):  # the node's MSS clamp table
                self.metrics.dataplane_changes_total.labels(change.what).inc()
            clock.lap("apply")
        await every(self._release(key, obj) for key, obj in released)
        clock.lap("release")
        # outside the batch: a fresh observation of what the pass left (SAs for status)
        after = await self._observe() if work else facts
        clock.lap("observe-after")
        # charon reports relative seconds: turn them into times with the clock of the
        # observation, not of each report, or a slow pass would shift every timestamp
        observed_at = self.clock()
        ipsec = after.ipsec if after else None
        await every(self._report(w, ipsec, observed_at) for w in work)
        clock.lap("report")
        self.metrics.tunnels.labels(self.settings.node).set(len(self.state.configured))
        log.debug("pass over %d tunnel(s): %s", len(keys), clock)

    def _with_siblings(self, keys: set[Key], facts: Facts | None) -> list[Key]:
        """`keys` and every tunnel sharing a route destination with one of them: whether
        a tunnel's routes are demoted depends on the others being up (`failover`)."""
        before = self.node_routes
        ipsec = facts.ipsec if facts is not None else None
        self.node_routes = before.refresh(
            self.state.tunnels, self.settings.node, ipsec, self.probes.failing()
        )
        return sorted(keys | self.node_routes.siblings(keys) | before.siblings(keys))

    async def _observe(self) -> Facts | None:
        try:
            facts = await self.driver.observe()
        except DataplaneError as e:
            if self.charon_ok:
                log.warning("cannot observe the node: %s", e)
            self.charon_ok = False
            return None
        self.charon_ok = True
        return facts

    async def _garbage_collect(self, work: list[Work]) -> None:
        """Once, after the first full list: remove what we own that no tunnel wants.

        A tunnel of this node that can't be planned at this moment (no Secret yet, an
        invalid edit) still wants what it has: that is kept, not collected.
        """
        desired = [w.plan for w in work if w.plan is not None]
        keep = [naming.tunnel_ref(*w.key) for w in work if w.plan is None]
        try:
            changes = await self.driver.garbage_collect(desired, keep)
        except DataplaneError as e:
            log.warning("garbage collection postponed: %s", e)
            return
        for change in changes:
            log.debug("garbage-collected %s", change)
            self.metrics.dataplane_changes_total.labels(change.what).inc()
        self.gc_done = True

    # -- configure ------------------------------------------------------------------

    def _plan(self, key: Key, obj: Obj, facts: Facts | None) -> Work:
        w = Work(key, obj)
        ref = naming.tunnel_ref(*key)
        try:
            w.tunnel = VpnTunnel.from_wire(obj)
        except ValidationError as e:
            first = e.errors()[0]
            w.problem = cond.Problem(
                Reason.INVALID_SPEC, f"tunnel {ref}: {first.get('msg', 'invalid')} "
                f"at {'.'.join(str(x) for x in first.get('loc', ()))}"
            )  # fmt: skip
            return w
        secret = self._secret(key)
        made = build_plan(w.tunnel, secret, underlay_of(facts, local_address(w.tunnel)))
        if isinstance(made, Blocked):
            w.problem, w.problem_status = cond.Problem(made.reason, made.message), made.status
        else:
            w.routes = fo.decide_routes(key, made, self.node_routes)
            self.probes.ensure(key, target_of(w.tunnel, made.link.name) if made.link else None)
            w.plan, w.inner_mtu = self.mtu.follow(
                fo.apply_decisions(made, w.routes), w.tunnel, facts
            )
            self.bgp.plan(key, w.tunnel, made, facts)
        return w

    def _secret(self, key: Key) -> DeliveredMaterial | None:
        obj = self.state.secrets.get(key)
        return delivered(obj) if obj is not None else None

    async def _ensure_finalizer(self, w: Work) -> None:
        if has_finalizer(w.obj):
            return
        try:
            updated = await self._call(set_finalizer(self.kube, w.obj, present=True))
        except ConflictError:
            updated = None
        if updated is None:
            w.plan, w.problem = None, cond.Problem(Reason.PENDING, "adding the finalizer")
            w.problem_status = Status.UNKNOWN
            return
        w.obj = updated
        self.state.tunnels[w.key] = updated

    async def _apply(self, w: Work) -> None:
        ref = naming.tunnel_ref(*w.key)
        plan = w.plan
        if plan is None:
            return
        conn = plan.conn.name
        for peer in plan.conn.remote_addrs:
            self.reasons.peers[peer] = conn
        self.reasons.expected[conn] = plan.conn.remote_id
        try:
            result = await self.driver.apply(plan)
        except DataplaneError as e:
            w.problem = cond.problem_of(e)
            log.warning("%s", e)
            return
        self.state.configured.add(w.key)
        self.clamp.note(w.key, plan)
        for change in result.changes:
            self.metrics.dataplane_changes_total.labels(change.what).inc()
        if result.findings:
            first = result.findings[0]
            msg = " ".join(f.message for f in result.findings)
            w.problem = cond.Problem(first.reason, msg)
            log.warning("tunnel %s not applied: %s", ref, msg)
        elif result.changes:
            log.info("tunnel %s: %d change(s) applied", ref, len(result.changes))

    # -- report ---------------------------------------------------------------------

    async def _report(self, w: Work, ipsec: IpsecFacts | None, now_ts: float) -> None:
        ns, name = w.key
        conn = naming.conn_name(ns, name)
        now = datetime.fromtimestamp(now_ts, UTC)
        ike = cond.best_ike(list(ipsec.sas), conn) if ipsec is not None else None
        child = cond.best_child(ike, conn)
        problem, problem_status = w.problem, w.problem_status
        if problem is None and ipsec is None:
            problem = cond.Problem(
                Reason.CHARON_UNAVAILABLE,
                f"tunnel {ns}/{name}: charon's VICI socket does not answer; is the node's "
                "charon running?",
            )
        failure = self.reasons.get(conn)
        mode = w.tunnel.spec.effective_mode.value if w.tunnel is not None else "route"
        start = w.plan.conn.child.start_action if w.plan is not None else "start"
        obs = cond.Observation(
            mode="policy" if mode == "policy" else "route",
            plan=w.plan,
            problem=problem,
            problem_status=problem_status,
            failure=cond.Problem(failure.reason, failure.message) if failure else None,
            ike=ike,
            traffic=self.traffic.judge(f"{ns}/{name}", sel.children(ike, w.plan, conn), now_ts),
            start_action=start,
            probe=self.probes.note(w.key) if w.key in self.node_routes.probe_failed else None,
        )
        current: dict[str, Any] = dict(w.obj.get("status") or {})
        generation = int((w.obj.get("metadata") or {}).get("generation") or 1)
        previous = current.get("conditions") or []
        computed = cond.keep_known_failures(cond.compute(obs, conn), previous)
        bgp = self.bgp.status(w.key, computed, self.metrics)  # BgpEstablished too
        conds = st.merge_conditions(computed, previous, generation, now)
        # SA facts and route states only for a configured tunnel
        desired = st.desired_status(conds) if problem is not None else st.desired_status(
            conds,
            st.ike_status(ike, current.get("ike"), now),
            st.child_status(child, current.get("child"), now, self.settings.counters_period,
                            w.inner_mtu, sel.installed(sel.children(ike, w.plan, conn))),
            [d.to_wire() for d in w.routes],
        )  # fmt: skip
        if bgp is not None:
            desired["bgp"] = bgp
        routes = [d.state.value for d in w.routes]
        self.metrics.tunnel(ns, name, ike, child, now_ts, routes, on_demand=start != "start")
        if not st.needs_write(desired, current):
            return
        await self._write(w, conds, desired, current)

    async def _write(self, w: Work, conds: list[st.Wire], desired: st.Wire, current: Obj) -> None:
        """Apply the agent's status (within the write budget) and an Event per transition."""
        if not self.budget.take():
            self.deferred.add(w.key)
            return
        moved = st.transitions(conds, current)
        updated = await self._call(self.kube.apply_tunnel_status(*w.key, desired))
        if updated is None:
            return  # gone meanwhile
        self._remember(w.key, updated)
        for c in moved:
            ctype, status = str(c["type"]), str(c["status"])
            if not self.event_limit.allow(naming.tunnel_ref(*w.key), ctype, status, self.clock()):
                self.metrics.events_limited_total.labels(ctype).inc()
                continue  # status has it; the Event would repeat a recent one
            message = f"{ctype} is {status}: {c['message']}"
            await self._call(self.events.post(updated, st.event_type(c), str(c["reason"]), message))

    def _remember(self, key: Key, obj: Obj) -> None:
        """Keep the newer of the cached and the returned object."""
        old = self.state.tunnels.get(key)
        if old is None:
            return
        try:
            newer = int(obj["metadata"]["resourceVersion"]) >= int(
                old["metadata"]["resourceVersion"]
            )
        except (KeyError, ValueError, TypeError):
            newer = True
        if newer:
            self.state.tunnels[key] = obj

    # -- tear down ------------------------------------------------------------------

    async def _teardown(self, key: Key) -> None:
        """Remove the tunnel from the node (its finalizer goes later: `_release`)."""
        ref = naming.tunnel_ref(*key)
        try:
            changes = await self.driver.remove(ref)
        except DataplaneError as e:
            log.warning("tunnel %s: teardown failed, will retry: %s", ref, e)
            raise
        for change in changes:
            self.metrics.dataplane_changes_total.labels(change.what).inc()
        if changes:
            log.info("tunnel %s torn down (%d change(s))", ref, len(changes))
        self._forget(key)

    async def _release(self, key: Key, obj: Obj) -> None:
        """After the teardown: remove the agent's finalizer, so the object may go."""
        if not has_finalizer(obj):
            return
        updated = await self._call(set_finalizer(self.kube, obj, present=False))
        log.info("tunnel %s: cleaned up, agent finalizer removed", naming.tunnel_ref(*key))
        if updated is not None:
            self._remember(key, updated)

    async def _gone(self, key: Key) -> None:
        """The tunnel left this agent's view (deleted, or relabelled to another node)."""
        if key not in self.state.configured:
            self._forget(key)
            return
        ref = naming.tunnel_ref(*key)
        changes = await self.driver.remove(ref)
        log.info("tunnel %s is no longer this node's: removed (%d change(s))", ref, len(changes))
        self._forget(key)

    def _forget(self, key: Key) -> None:
        self.state.configured.discard(key)
        self.traffic.forget(naming.tunnel_ref(*key))
        self.event_limit.forget(naming.tunnel_ref(*key))
        self.mtu.forget(naming.tunnel_ref(*key))
        self.clamp.forget(key)
        self.probes.forget(key)
        self.bgp.forget(key)
        self.metrics.forget(*key)
