"""kopf registrations: thin handlers that keep the view current and queue tunnels.

Indexes fill the view (tunnels, nodes) and kopf runs no handler until every index holds
the whole listing, so the first allocation already sees every number that existing
tunnels hold. Event handlers only queue the tunnels to look at. Secrets are not watched
through kopf (it would watch every Secret of the cluster): `controller.secrets` watches
the delivered ones in routevpn's namespace only and reads users' Secrets by name.
Tunnels of namespaces the operator does not serve (`--watch-namespaces`) are ignored.

Every handler is `async` although none awaits: kopf runs plain functions in a thread
pool, and the view and the queue must only ever be touched from the event loop's thread
(a thread adding a tunnel while the reconciler iterates the view, or putting into the
asyncio queue, races).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf

from routevpn.api import naming
from routevpn.api.policy import POLICY_PLURAL
from routevpn.controller import agents, gauges, leader
from routevpn.controller.decide import OperatorSettings
from routevpn.controller.metrics import API_WRITES, REGISTRY
from routevpn.controller.model import node_from_body, tunnel_from_body
from routevpn.controller.reconciler import OperatorReconciler
from routevpn.controller.secrets import SecretFollower, delivered_selector
from routevpn.controller.store import Store
from routevpn.kube import http
from routevpn.kube.client import KubeClient, connect
from routevpn.kube.events import EventPoster
from routevpn.kube.lease import LeaderElector, Timings
from routevpn.kube.lease_store import KubeLeaseStore
from routevpn.kube.watch import Watcher, WatchItem

log = logging.getLogger("routevpn.operator")
#: Seconds between reads of the API server's own addresses (never routed into a tunnel).
API_SERVERS_PERIOD = 300.0


@dataclass
class Runtime:
    """What the command line decided, and the running parts (one per process)."""

    settings: OperatorSettings
    #: This replica's name (in the Lease, in its Events, given to kopf).
    identity: str
    #: The Lease (in routevpn's namespace) whose holder is the replica that acts.
    lease_name: str
    lease_timings: Timings
    http_host: str
    http_port: int
    concurrency: int = 32
    #: Seconds between re-reads of the user Secrets tunnels refer to (rotation latency).
    secret_reread_seconds: float = 60.0
    store: Store = field(default_factory=Store)
    reconciler: OperatorReconciler | None = None
    elector: LeaderElector | None = None
    #: Where every API call of the reconciler runs (a graceful stop waits for it to drain).
    pool: ThreadPoolExecutor | None = None
    #: kopf's stop flag: set when another replica took the Lease over from this one.
    stop_flag: asyncio.Event = field(default_factory=asyncio.Event)
    #: Another replica took the Lease over: the process exits non-zero, to start afresh.
    lease_lost: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    watchers: list[Watcher] = field(default_factory=list)
    http_runner: Any = None
    #: Node facts as node_event last acted on them (the index has already updated the view).
    nodes_handled: dict[str, Any] = field(default_factory=dict)


RUNTIME: Runtime | None = None
#: Field manager of the operator's server-side applies, and the component of its Events.
FIELD_MANAGER = "routevpn-operator"


def _rt() -> Runtime:
    if RUNTIME is None:
        raise RuntimeError("routevpn.controller.handlers.RUNTIME is not configured")
    return RUNTIME


def _reconciler() -> OperatorReconciler:
    r = _rt().reconciler
    if r is None:
        raise RuntimeError("the reconciler has not started")
    return r


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Every kopf setting in one place, then the reconciler and the HTTP endpoints."""
    rt = _rt()
    _kopf_settings(settings)
    # Every API call runs in a thread (the kubernetes client blocks): the default pool
    # (cpu + 4 threads) would cap the reconcilers' writes in flight far below --concurrency.
    rt.pool = ThreadPoolExecutor(max_workers=rt.concurrency + 4, thread_name_prefix="kube")
    asyncio.get_running_loop().set_default_executor(rt.pool)
    kube = KubeClient(
        connect(pool=rt.concurrency + 4),
        FIELD_MANAGER,
        on_write=lambda kind: API_WRITES.labels(kind).inc(),
    )
    # The Lease has a client and a thread of its own: renewals stay on time however many
    # writes of the reconcilers are queued.
    lease = KubeLeaseStore(
        connect(pool=2),
        rt.settings.routevpn_namespace,
        rt.lease_name,
        timeout=rt.lease_timings.renew_deadline,
    )
    rt.elector = elector = LeaderElector(lease, rt.identity, rt.lease_timings)
    events = EventPoster(kube.create_event, FIELD_MANAGER, elector.identity)
    rt.reconciler = reconciler = OperatorReconciler(rt.store, kube, events, rt.settings, elector)
    rt.tasks.append(asyncio.create_task(reconciler.run(rt.concurrency)))
    rt.tasks.append(asyncio.create_task(leader.lead(elector, _lease_lost)))
    rt.tasks.append(asyncio.create_task(_gauge(reconciler)))
    rt.tasks.append(asyncio.create_task(_api_servers(reconciler)))
    _follow_secrets(rt, kube, reconciler)
    # Agent liveness: a watch of their Leases in our namespace (kopf's would be cluster-wide).
    lease_watcher, lease_task = agents.follow(reconciler, kube, rt.settings.routevpn_namespace)
    rt.watchers.append(lease_watcher)
    rt.tasks.append(lease_task)
    rt.http_runner = await http.serve(http.app(REGISTRY), rt.http_host, rt.http_port)
    logger.info(
        "routevpn operator: namespace %s, lease %s as %s, http %s:%d",
        rt.settings.routevpn_namespace,
        rt.lease_name,
        elector.identity,
        rt.http_host,
        rt.http_port,
    )


def _kopf_settings(settings: kopf.OperatorSettings) -> None:
    # kopf's peering is off (every replica watches; the Lease decides who acts), it runs
    # no change-detection or deletion handlers (no progress, diff-base or finalizer of its
    # own to store) and posts no Events (routevpn.kube.events does): nothing to set there.
    settings.posting.enabled = False
    # Watches end server-side after this long and are re-established: a silently broken
    # connection can't leave the operator blind for longer.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A stuck API call must fail (and be retried) rather than hang a watch forever.
    settings.networking.request_timeout = 60
    # 1000 tunnels created at once: don't let kopf's per-object workers be the limit.
    settings.batching.worker_limit = None


def _lease_lost() -> None:
    rt = _rt()
    rt.lease_lost = True
    rt.stop_flag.set()


async def _api_servers(reconciler: OperatorReconciler) -> None:
    """Keep the API server's own addresses current (the `kubernetes` Service, Endpoints)."""
    while True:
        await reconciler.refresh_api_servers()
        await asyncio.sleep(API_SERVERS_PERIOD)  # a polling period, not a wait for an outcome


def _follow_secrets(rt: Runtime, kube: KubeClient, reconciler: OperatorReconciler) -> None:
    """Watch delivered Secrets in our namespace only; re-read referenced ones by name."""
    follower = SecretFollower(reconciler, rt.secret_reread_seconds)
    queue: asyncio.Queue[WatchItem] = asyncio.Queue()
    lister = kube.secrets(rt.settings.routevpn_namespace, delivered_selector())
    watcher = Watcher(lister, asyncio.get_running_loop(), queue)
    watcher.start()
    rt.watchers.append(watcher)

    async def consume() -> None:
        while True:
            follower.on_delivered(await queue.get())

    rt.tasks.append(asyncio.create_task(consume()))
    rt.tasks.append(asyncio.create_task(follower.reread_loop()))


async def _gauge(reconciler: OperatorReconciler) -> None:
    while True:
        gauges.refresh(reconciler.store)
        await asyncio.sleep(5)  # a gauge, not a deadline


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    """Stop the reconciler, hand the Lease over, stop the HTTP server."""
    rt = _rt()
    for watcher in rt.watchers:
        watcher.stop()
    for task in rt.tasks:
        task.cancel()
    await asyncio.gather(*rt.tasks, return_exceptions=True)
    if rt.elector is not None and rt.pool is not None:
        await leader.hand_over(rt.elector, rt.pool, drain=rt.lease_timings.renew_deadline)
    if rt.http_runner is not None:
        await rt.http_runner.cleanup()
    # kopf's waiter for the flag is a task of its own that a signal does not end: kopf
    # would wait 5 s for it before exiting.
    rt.stop_flag.set()


# --- the view ---------------------------------------------------------------------------


@kopf.index(naming.GROUP, naming.VERSION, naming.PLURAL)
async def tunnels(body: kopf.Body, **_: Any) -> None:
    """Keep the tunnel view current (deletions: see `tunnel_event`)."""
    rec = tunnel_from_body(body)
    if _rt().settings.serves(rec.namespace):
        _rt().store.put_tunnel(rec)


@kopf.index("", "v1", "nodes")
async def nodes(body: kopf.Body, **_: Any) -> None:
    """Keep the node view current."""
    rec = node_from_body(body)
    _rt().store.nodes[rec.name] = rec


@kopf.index(naming.GROUP, naming.VERSION, POLICY_PLURAL)
async def policies(body: kopf.Body, **_: Any) -> None:
    """Keep the VpnTunnelPolicies current (deletions: see `policy_event`)."""
    _rt().store.put_policy(body)


@kopf.index("", "v1", "namespaces")
async def namespaces(body: kopf.Body, **_: Any) -> None:
    """Keep namespace labels current (policies select namespaces by them)."""
    _rt().store.put_namespace(body)


# --- what to look at --------------------------------------------------------------------


@kopf.on.event(naming.GROUP, naming.VERSION, naming.PLURAL)
async def tunnel_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """Queue the tunnel; on deletion forget it and wake tunnels waiting for its claims."""
    rt, r = _rt(), _reconciler()
    rec = tunnel_from_body(body)
    if not rt.settings.serves(rec.namespace):
        return
    if event.get("type") == "DELETED":
        rt.store.drop_tunnel(rec.key)
        for key in rt.store.waiting_on_others():
            r.enqueue(key)
        return
    rt.store.put_tunnel(rec)
    r.enqueue(rec.key)


@kopf.on.event(naming.GROUP, naming.VERSION, POLICY_PLURAL)
async def policy_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """A grant changed: look at every tunnel again (it may be admitted or refused now)."""
    rt, r = _rt(), _reconciler()
    rt.store.put_policy(body, deleted=event.get("type") == "DELETED")
    for key in list(rt.store.tunnels):
        r.enqueue(key)


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """A namespace's labels changed: look at its tunnels again."""
    rt, r = _rt(), _reconciler()
    if rt.store.put_namespace(body, deleted=event.get("type") == "DELETED"):
        name = str((body.get("metadata") or {}).get("name", ""))
        for rec in list(rt.store.tunnels_in(name)):
            r.enqueue(rec.key)


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """Re-place tunnels when a node's labels, readiness or addresses change, or it goes."""
    rt, r = _rt(), _reconciler()
    rec = node_from_body(body)
    before = rt.nodes_handled.get(rec.name)
    if event.get("type") == "DELETED":
        rt.store.nodes.pop(rec.name, None)
        rt.nodes_handled.pop(rec.name, None)
    else:
        rt.store.nodes[rec.name] = rec
        rt.nodes_handled[rec.name] = rec
        if before == rec:
            return  # a heartbeat: nothing placement looks at has changed
    for key in list(rt.store.tunnels):
        r.enqueue(key)
        if not rec.ready:
            # Look again once "NotReady for a moment" has become "NotReady for good".
            r.enqueue(key, rt.settings.not_ready_grace_seconds + 0.5)
