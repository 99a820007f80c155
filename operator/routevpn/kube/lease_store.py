"""The operator's election Lease on the API server (`KubeLeaseStore`), and its wire form.

The elector (`kube.lease`) only sees `LeaseRecord`s; this turns them into the
coordination.k8s.io/v1 objects the typed client sends, and back.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

from routevpn.api.timefmt import k8s_micro_time
from routevpn.kube.lease import LeaseConflictError, LeaseRecord

#: A Kubernetes MicroTime (acquireTime, renewTime): UTC, always six fraction digits.
microtime = k8s_micro_time


class _MicroTime(datetime):
    """A datetime the client sends as a MicroTime. The client turns every body into its
    typed model and sends datetimes with `isoformat()`, which leaves the fraction out
    when it is zero: the API server refuses that for acquireTime and renewTime."""

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return microtime(self)


def _wire(t: datetime) -> datetime:
    return _MicroTime.combine(t.date(), t.timetz())


class KubeLeaseStore:
    """A LeaseStore on the API server: the typed CoordinationV1Api, in a thread of its own.

    Its own thread and connection pool: renewals stay on time however many writes of
    the reconcilers are queued for the shared ones."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, timeout: float) -> None:
        self.ref = f"{namespace}/{name}"
        self._namespace = namespace
        self._name = name
        #: Per request: a call that hangs fails, and the next attempt is on time.
        self._timeout = timeout
        self._api = client.CoordinationV1Api(api)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")

    async def get(self) -> LeaseRecord | None:
        """The Lease, or None when it does not exist."""
        try:
            got = await self._call(self._api.read_namespaced_lease, self._name, self._namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return _record(got)

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        """Create the Lease; LeaseConflictError when it exists."""
        try:
            got = await self._call(
                self._api.create_namespaced_lease,
                self._namespace,
                lease_body(self._namespace, self._name, record),
            )
        except ApiException as e:
            if e.status == 409:
                raise LeaseConflictError(self.ref) from None
            raise
        return _record(got)

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        """Replace the Lease, guarded by `record.resource_version`."""
        try:
            got = await self._call(
                self._api.replace_namespaced_lease,
                self._name,
                self._namespace,
                lease_body(self._namespace, self._name, record),
            )
        except ApiException as e:
            if e.status == 409:
                raise LeaseConflictError(self.ref) from None
            raise
        return _record(got)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        call = functools.partial(fn, *args, _request_timeout=self._timeout)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)


def lease_body(namespace: str, name: str, record: LeaseRecord) -> dict[str, Any]:
    """The Lease to create or replace: `record` as the API server takes it."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if record.resource_version is not None:
        meta["resourceVersion"] = record.resource_version
    spec: dict[str, Any] = {
        "leaseDurationSeconds": record.duration_seconds,
        "leaseTransitions": record.transitions,
    }
    if record.holder:
        spec["holderIdentity"] = record.holder
    if record.acquire_time is not None:
        spec["acquireTime"] = _wire(record.acquire_time)
    if record.renew_time is not None:
        spec["renewTime"] = _wire(record.renew_time)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


def _record(lease: client.V1Lease) -> LeaseRecord:
    spec = lease.spec or client.V1LeaseSpec()
    meta = lease.metadata or client.V1ObjectMeta()
    return LeaseRecord(
        holder=spec.holder_identity or "",
        duration_seconds=spec.lease_duration_seconds or 0,
        acquire_time=spec.acquire_time,
        renew_time=spec.renew_time,
        transitions=spec.lease_transitions or 0,
        resource_version=meta.resource_version,
    )
