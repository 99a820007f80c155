"""kopf registrations: thin handlers that keep the view current and queue tunnels.

Indexes fill the view (tunnels, nodes, delivered Secrets) and kopf runs no handler until
every index holds the whole listing, so the first allocation already sees every number
that existing tunnels hold. Event handlers only queue the tunnels to look at.

Every handler is `async` although none awaits: kopf runs plain functions in a thread
pool, and the view and the queue must only ever be touched from the event loop's thread
(a thread adding a tunnel while the worker iterates the view, or putting into the
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
from routevpn.controller import http, leader
from routevpn.controller.kubeio import KubeIO
from routevpn.controller.model import (
    CONTENT_HASH_ANNOTATION,
    delivered_from_body,
    node_from_body,
    tunnel_from_body,
)
from routevpn.controller.reconcile import Settings
from routevpn.controller.store import Store
from routevpn.controller.worker import Worker
from routevpn.kube.lease import KubeLeaseStore, LeaderElector, Timings


@dataclass
class Runtime:
    """What the command line decided, and the running parts (one per process)."""

    settings: Settings
    #: The Lease (in routevpn's namespace) whose holder is the replica that acts.
    lease_name: str
    lease_timings: Timings
    http_host: str
    http_port: int
    concurrency: int = 32
    store: Store = field(default_factory=Store)
    worker: Worker | None = None
    elector: LeaderElector | None = None
    #: Where every API call of the worker runs (a graceful stop waits for it to drain).
    pool: ThreadPoolExecutor | None = None
    #: kopf's stop flag: set when another replica took the Lease over from this one.
    stop_flag: asyncio.Event = field(default_factory=asyncio.Event)
    #: Another replica took the Lease over: the process exits non-zero, to start afresh.
    lease_lost: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    http_runner: Any = None
    #: Node facts as node_event last acted on them (the index has already updated the view).
    nodes_handled: dict[str, Any] = field(default_factory=dict)


RUNTIME: Runtime | None = None


def _rt() -> Runtime:
    if RUNTIME is None:
        raise RuntimeError("routevpn.controller.handlers.RUNTIME is not configured")
    return RUNTIME


def _worker() -> Worker:
    w = _rt().worker
    if w is None:
        raise RuntimeError("the worker has not started")
    return w


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    """Every kopf setting in one place, then the worker and the HTTP endpoints."""
    rt = _rt()
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
    rt.pool = ThreadPoolExecutor(max_workers=rt.concurrency + 4, thread_name_prefix="kube")
    asyncio.get_running_loop().set_default_executor(rt.pool)
    io = KubeIO.from_environment(pool=rt.concurrency + 4)
    # Every replica watches (kopf's peering is off); only the Lease holder acts. The Lease
    # client copies the configuration KubeIO has just loaded.
    lease = KubeLeaseStore.from_default_config(
        rt.settings.routevpn_namespace, rt.lease_name, timeout=rt.lease_timings.renew_deadline
    )
    rt.elector = elector = LeaderElector(lease, leader.identity(), rt.lease_timings)
    rt.worker = worker = Worker(rt.store, io, rt.settings, elector)
    rt.tasks.append(asyncio.create_task(worker.run(rt.concurrency)))
    rt.tasks.append(asyncio.create_task(leader.lead(elector, _lease_lost)))
    rt.tasks.append(asyncio.create_task(_gauge(rt.worker)))
    rt.http_runner = await http.start(rt.http_host, rt.http_port)
    logger.info(
        "routevpn operator: namespace %s, lease %s as %s, http %s:%d",
        rt.settings.routevpn_namespace,
        rt.lease_name,
        elector.identity,
        rt.http_host,
        rt.http_port,
    )


def _lease_lost() -> None:
    rt = _rt()
    rt.lease_lost = True
    rt.stop_flag.set()


async def _gauge(worker: Worker) -> None:
    while True:
        worker.count_ready()
        await asyncio.sleep(5)  # a gauge, not a deadline


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    """Stop the worker, hand the Lease over, stop the HTTP server."""
    rt = _rt()
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
    _rt().store.put_tunnel(tunnel_from_body(body))


@kopf.index("", "v1", "nodes")
async def nodes(body: kopf.Body, **_: Any) -> None:
    """Keep the node view current."""
    rec = node_from_body(body)
    _rt().store.nodes[rec.name] = rec


@kopf.index("", "v1", "secrets")
async def secrets(body: kopf.Body, namespace: str | None, name: str | None, **_: Any) -> None:
    """Delivered Secrets (by tunnel) and the user Secrets tunnels refer to (cached)."""
    store = _rt().store
    if namespace == _rt().settings.routevpn_namespace and CONTENT_HASH_ANNOTATION in (
        body.metadata.annotations or {}
    ):
        got = delivered_from_body(body)
        if got.tunnel is not None:
            store.delivered[got.tunnel] = got
    elif (namespace, name) in store.user_secrets and namespace and name:
        store.user_secrets[(namespace, name)] = (
            str(body.get("type") or "Opaque"),
            dict(body.get("data") or {}),
        )


# --- what to look at --------------------------------------------------------------------


@kopf.on.event(naming.GROUP, naming.VERSION, naming.PLURAL)
async def tunnel_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """Queue the tunnel; on deletion forget it and wake tunnels waiting for its claims."""
    rt, w = _rt(), _worker()
    rec = tunnel_from_body(body)
    if event.get("type") == "DELETED":
        rt.store.drop_tunnel(rec.key)
        for key in rt.store.waiting_on_others():
            w.enqueue(key)
        return
    rt.store.put_tunnel(rec)
    w.enqueue(rec.key)


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """Re-place tunnels when a node's labels, readiness or addresses change, or it goes."""
    rt, w = _rt(), _worker()
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
        w.enqueue(key)
        if not rec.ready:
            # Look again once "NotReady for a moment" has become "NotReady for good".
            w.enqueue(key, rt.settings.not_ready_grace_seconds + 0.5)


@kopf.on.event("", "v1", "secrets")
async def secret_event(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str | None, **_: Any
) -> None:
    """React only to Secrets that tunnels refer to (and to our own delivered ones)."""
    if not namespace or not name:
        return
    rt, w = _rt(), _worker()
    deleted = event.get("type") == "DELETED"
    if namespace == rt.settings.routevpn_namespace:
        got = delivered_from_body(body)
        if got.tunnel is not None:
            if deleted:
                rt.store.delivered.pop(got.tunnel, None)
            else:
                rt.store.delivered[got.tunnel] = got
            w.enqueue(got.tunnel)
        return
    users = rt.store.referencing(namespace, name)
    if not users and (namespace, name) not in rt.store.user_secrets:
        return
    # Cached but unused (its tunnels are gone) still follows: the index below never sees
    # a deletion, and a tunnel created later must not start from a Secret that is gone.
    rt.store.user_secrets[(namespace, name)] = (
        None if deleted else (str(body.get("type") or "Opaque"), dict(body.get("data") or {}))
    )
    for key in users:
        w.enqueue(key)
