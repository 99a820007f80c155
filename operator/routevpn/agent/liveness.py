"""The agent says it is live: it renews a Lease for its node in routevpn's namespace.

The operator waits for an agent to tear a tunnel down before it lets the tunnel go (the
agent's finalizer). A node whose agent no longer runs (the chart was uninstalled, the
node left the agent's nodeSelector) would make it wait forever; with this Lease the
operator tells a live agent that is busy from one that is gone (`controller.liveness`).

- `routevpn-agent-<node>` (`naming.agent_lease_name`), holderIdentity = the node,
  leaseDurationSeconds LEASE_SECONDS, renewed every RENEW_SECONDS: three renewals may
  fail in a row (an API server restart) before the operator counts the agent as gone.
- A failed renewal is logged and retried after a growing delay (never longer than the
  period); it never touches the data plane and never stops the agent.
- On a graceful stop the Lease is left to run out: a rolling update of the DaemonSet
  restarts the agent well within LEASE_SECONDS, and must not release any tunnel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from routevpn.api import naming
from routevpn.api.timefmt import k8s_micro_time
from routevpn.kube.backoff import Backoff
from routevpn.kube.client import ConflictError, Obj

log = logging.getLogger(__name__)

#: How long the Lease says the agent is live after a renewal.
LEASE_SECONDS = 40
#: Seconds between renewals: a quarter of the lease, as kubelet's node Lease does.
RENEW_SECONDS = 10.0


class LeaseApi(Protocol):
    """The Lease calls the agent makes (`KubeClient`; in memory in unit tests)."""

    async def get_lease(self, namespace: str, name: str) -> Obj | None: ...

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> Obj: ...

    async def replace_lease(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> Obj | None: ...


def lease_body(node: str, namespace: str, now: datetime, duration: int) -> Obj:
    """A new liveness Lease for `node`'s agent."""
    stamp = k8s_micro_time(now)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": naming.agent_lease_name(node),
            "namespace": namespace,
            "labels": {naming.AGENT_LEASE_LABEL: naming.AGENT_LEASE_VALUE},
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": duration,
            "acquireTime": stamp,
            "renewTime": stamp,
        },
    }


def renewed(seen: Mapping[str, Any], node: str, now: datetime, duration: int) -> Obj:
    """`seen` (the Lease as last read or written) renewed at `now`, ours again if it was
    not (its resourceVersion kept: the replace fails if another writer came between)."""
    body = dict(seen)
    spec = dict(body.get("spec") or {})
    if spec.get("holderIdentity") != node:
        spec["acquireTime"] = k8s_micro_time(now)
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    spec.update(holderIdentity=node, leaseDurationSeconds=duration, renewTime=k8s_micro_time(now))
    body["spec"] = spec
    return body


class LivenessLease:
    """Renews node `node`'s liveness Lease until cancelled."""

    def __init__(
        self,
        kube: LeaseApi,
        node: str,
        namespace: str,
        *,
        duration: int = LEASE_SECONDS,
        period: float = RENEW_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.node = node
        self.namespace = namespace
        self.name = naming.agent_lease_name(node)
        self.duration = duration
        self.period = period
        self._clock = clock
        #: The Lease as we last read or wrote it (None: read it first).
        self._seen: Obj | None = None
        self.renewals = 0

    async def renew(self) -> None:
        """Renew once (create the Lease if there is none); raises when the API refuses."""
        if self._seen is None:
            self._seen = await self.kube.get_lease(self.namespace, self.name)
        now = self._clock()
        try:
            if self._seen is None:
                body = lease_body(self.node, self.namespace, now, self.duration)
                self._seen = await self.kube.create_lease(self.namespace, body)
            else:
                body = renewed(self._seen, self.node, now, self.duration)
                self._seen = await self.kube.replace_lease(self.namespace, self.name, body)
        except ConflictError:
            self._seen = None  # created or changed meanwhile: read it again next time
            raise
        if self._seen is None:
            raise LookupError(f"Lease {self.namespace}/{self.name} deleted while renewing")
        self.renewals += 1

    async def run(self) -> None:
        """Renew every `period` seconds; after a failure, again after a growing delay."""
        backoff = Backoff(base=1.0, cap=self.period)
        while True:
            try:
                await self.renew()
                backoff.reset()
                delay = self.period
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never fatal: the data plane does not depend on it
                delay = backoff.next_delay()
                log.warning(
                    "liveness Lease %s/%s not renewed (%s); retrying in %.1fs",
                    self.namespace, self.name, _why(e), delay,
                )  # fmt: skip
            await asyncio.sleep(delay)  # a renewal period, not a wait for an outcome


def _why(e: Exception) -> str:
    status = getattr(e, "status", None)
    return f"{type(e).__name__} {status}" if status else type(e).__name__
