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
from routevpn.controller import agents
from routevpn.controller.decide import OperatorSettings
from routevpn.controller.leader import Leader
from routevpn.controller.metrics import API_WRITES, REGISTRY
from routevpn.controller.model import node_from_body, tunnel_from_body
from routevpn.controller.reconciler import OperatorReconciler
from routevpn.controller.secrets import SecretFollower, delivered_selector
from routevpn.controller.store import Store
from routevpn.kube import http
from routevpn.kube.client import KubeClient, connect
from routevpn.kube.events import EventPoster
from routevpn.kube.watch import Watcher, WatchItem


@dataclass
class Runtime:
    """What the command line decided, and the running parts (one per process)."""

    settings: OperatorSettings
    peering: str
    priority: int
    #: Our identity in the peering object (also given to kopf), to find ourselves there.
    identity: str
    http_host: str
    http_port: int
    concurrency: int = 32
    #: Seconds between re-reads of the user Secrets tunnels refer to (rotation latency).
    secret_reread_seconds: float = 60.0
    store: Store = field(default_factory=Store)
    reconciler: OperatorReconciler | None = None
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
    # Replicas coordinate cluster-wide (tunnels live in every namespace); a replica that
    # can't find the peering object must not run unpeered next to another one.
    settings.peering.name = rt.peering
    settings.peering.clusterwide = True
    settings.peering.mandatory = True
    # Equal priorities make kopf pause every replica: each draws its own at start.
    settings.peering.priority = rt.priority
    # A replica that dies without saying goodbye blocks the other this long: short enough
    # for a quick fail-over, long enough that a busy event loop does not lose its lease.
    settings.peering.lifetime = 30
    # Distinct from the agent's (two kopf processes on one object). The operator manages
    # routevpn.io/operator itself; kopf's own finalizer is never needed (no deletion handlers).
    settings.persistence.finalizer = f"{naming.GROUP}/operator-kopf"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=f"operator.{naming.GROUP}"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=f"operator.{naming.GROUP}", key="last-handled-configuration"
    )
    # Events for every decision (Normal ones included), posted by kopf in the background.
    settings.posting.level = logging.INFO
    # Watches end server-side after this long and are re-established: a silently broken
    # connection can't leave the operator blind for longer.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # A stuck API call must fail (and be retried) rather than hang a worker forever.
    settings.networking.request_timeout = 60
    # 1000 tunnels created at once: don't let kopf's per-object workers be the limit.
    settings.batching.worker_limit = None
    # Every API call runs in a thread (the kubernetes client blocks): the default pool
    # (cpu + 4 threads) would cap the reconcilers' writes in flight far below --concurrency.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=rt.concurrency + 4, thread_name_prefix="kube")
    )
    kube = KubeClient(
        connect(pool=rt.concurrency + 4),
        FIELD_MANAGER,
        on_write=lambda kind: API_WRITES.labels(kind).inc(),
    )
    events = EventPoster(kube.create_event, FIELD_MANAGER, rt.identity)
    leader = Leader(rt.identity, rt.priority)
    rt.reconciler = reconciler = OperatorReconciler(rt.store, kube, events, rt.settings, leader)
    rt.tasks.append(asyncio.create_task(reconciler.run(rt.concurrency)))
    rt.tasks.append(
        asyncio.create_task(leader.run(lambda: _read_peering(kube, rt.peering), reconciler.resync))
    )
    rt.tasks.append(asyncio.create_task(_gauge(reconciler)))
    _follow_secrets(rt, kube, reconciler)
    # Agent liveness: a watch of their Leases in our namespace (kopf's would be cluster-wide).
    lease_watcher, lease_task = agents.follow(reconciler, kube, rt.settings.routevpn_namespace)
    rt.watchers.append(lease_watcher)
    rt.tasks.append(lease_task)
    rt.http_runner = await http.serve(http.app(REGISTRY), rt.http_host, rt.http_port)
    logger.info(
        "routevpn operator: namespace %s, peering %s (priority %d), http %s:%d",
        rt.settings.routevpn_namespace,
        rt.peering,
        rt.priority,
        rt.http_host,
        rt.http_port,
    )


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


async def _read_peering(kube: KubeClient, name: str) -> dict[str, Any] | None:
    """The status (peers) of ClusterKopfPeering `name`, or None when it does not exist."""
    got: Any = await asyncio.to_thread(
        kube._custom.get_cluster_custom_object,
        "kopf.dev", "v1", "clusterkopfpeerings", name,
    )  # fmt: skip
    return dict(got.get("status") or {})


async def _gauge(reconciler: OperatorReconciler) -> None:
    while True:
        reconciler.count_ready()
        await asyncio.sleep(5)  # a gauge, not a deadline


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    """Stop the reconciler and the HTTP server."""
    rt = _rt()
    for watcher in rt.watchers:
        watcher.stop()
    for task in rt.tasks:
        task.cancel()
    if rt.http_runner is not None:
        await rt.http_runner.cleanup()


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
