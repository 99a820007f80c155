"""Follow the agents' liveness Leases in routevpn's namespace (`controller.liveness`).

A list+watch (`kube.watch`) of the Leases labelled as agents' in routevpn's namespace
only: kopf watches cluster-wide, which would need every Lease of the cluster. Runs on
every replica, like the delivered-Secret watch, so a replica taking over has it warm.

What makes a tunnel look again: the first listing (until then every agent counted as
live), and a node's Lease coming or going. A renewal changes nothing a decision would
act on now; a Lease running out is no event at all, so the decision sets its own timer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from routevpn.api import naming
from routevpn.controller.reconciler import OperatorReconciler
from routevpn.kube.client import KubeClient
from routevpn.kube.watch import Watcher, WatchItem


def lease_selector() -> str:
    """The label selector of the agents' liveness Leases."""
    return f"{naming.AGENT_LEASE_LABEL}={naming.AGENT_LEASE_VALUE}"


class AgentLeaseFollower:
    """Keeps the store's agent Leases current and queues the tunnels that may care."""

    def __init__(
        self, reconciler: OperatorReconciler, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reconciler = reconciler
        self.store = reconciler.store
        self._clock = clock

    def on_item(self, item: WatchItem) -> None:
        """A listing or one change of Leases."""
        first = not self.store.agents.listed
        nodes: set[str] | None = self.store.agents.seen(item.kind, item.objects, self._clock())
        if first and item.kind == "list":
            nodes = None  # every waiting tunnel: until now each of its agents was live
        elif not nodes:
            return
        for rec in list(self.store.tunnels.values()):
            # Only tunnels that may wait for an agent: being deleted, moving or unplaced.
            waits = rec.has_agent_finalizer and (rec.deleting or rec.label_node != rec.status_node)
            if waits and (nodes is None or rec.label_node in nodes or rec.status_node in nodes):
                self.reconciler.enqueue(rec.key)


def follow(
    reconciler: OperatorReconciler, kube: KubeClient, namespace: str
) -> tuple[Watcher, asyncio.Task[None]]:
    """Start the Lease watch and its consumer on the running loop."""
    follower = AgentLeaseFollower(reconciler)
    queue: asyncio.Queue[WatchItem] = asyncio.Queue()
    watcher = Watcher(kube.leases(namespace, lease_selector()), asyncio.get_running_loop(), queue)
    watcher.start()

    async def consume() -> None:
        while True:
            follower.on_item(await queue.get())

    return watcher, asyncio.create_task(consume())
