"""The operator's API writes and reads, each counted; the kubernetes client runs in threads.

Only the worker calls these. Secret values pass through untouched and are never logged.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client import ApiException

from routevpn.api import naming
from routevpn.controller import bundle
from routevpn.controller.metrics import API_WRITES

FIELD_MANAGER = "routevpn-operator"
_APPLY = "application/apply-patch+yaml"
_MERGE = "application/merge-patch+json"


class ConflictError(Exception):
    """The object changed under us (409): look at it again."""


class KubeIO:
    """Typed, counted access to the few API calls the operator makes."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    @classmethod
    def from_environment(cls, pool: int = 10) -> KubeIO:
        """In a pod: the service account; elsewhere: KUBECONFIG. `pool`: connections kept
        open to the API server (as many as calls in flight, or each waits for one)."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        conf = client.Configuration.get_default_copy()
        conf.connection_pool_maxsize = pool
        return cls(client.ApiClient(conf))

    async def apply_status(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of the operator's status fields (force: they are ours)."""
        API_WRITES.labels("status").inc()
        got: object = await asyncio.to_thread(
            self._custom.patch_namespaced_custom_object_status,
            naming.GROUP,
            naming.VERSION,
            namespace,
            naming.PLURAL,
            name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=_APPLY,
        )
        return cast(dict[str, Any], got)

    async def patch_metadata(
        self, namespace: str, name: str, patch: dict[str, Any], kind: str
    ) -> dict[str, Any] | None:
        """A JSON merge patch of metadata; with resourceVersion inside it is guarded (409).

        The object as patched, or None when it is gone."""
        API_WRITES.labels(kind).inc()
        try:
            got: object = await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object,
                naming.GROUP,
                naming.VERSION,
                namespace,
                naming.PLURAL,
                name,
                patch,
                _content_type=_MERGE,
            )
        except ApiException as e:
            if e.status == 409:
                raise ConflictError(f"{namespace}/{name} changed, will look again") from None
            if e.status != 404:
                raise
            return None
        return cast(dict[str, Any], got)

    async def post_event(
        self, ref: dict[str, Any], etype: str, reason: str, message: str, now: str
    ) -> None:
        """A core/v1 Event about a tunnel (never carrying secret material)."""
        API_WRITES.labels("event").inc()
        meta = ref["metadata"]
        body = {
            "metadata": {"generateName": f"{meta['name'][:200]}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": ref["apiVersion"],
                "kind": ref["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await asyncio.to_thread(
            self._core.create_namespaced_event, meta["namespace"], cast(Any, body)
        )

    async def apply_secret(self, body: dict[str, Any]) -> None:
        """Create or update a delivered Secret (server-side apply)."""
        API_WRITES.labels("secret").inc()
        meta = body["metadata"]
        await asyncio.to_thread(
            self._core.patch_namespaced_secret,
            meta["name"],
            meta["namespace"],
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=_APPLY,
        )

    async def delete_secret(self, namespace: str, name: str) -> None:
        """Delete a delivered Secret if it exists."""
        API_WRITES.labels("secret_delete").inc()
        try:
            await asyncio.to_thread(self._core.delete_namespaced_secret, name, namespace)
        except ApiException as e:
            if e.status != 404:
                raise

    async def list_tunnels(self) -> list[dict[str, Any]]:
        """Every VpnTunnel in the cluster, as the API server has it now."""
        got: Any = await asyncio.to_thread(
            self._custom.list_cluster_custom_object, naming.GROUP, naming.VERSION, naming.PLURAL
        )
        return list(got.get("items") or [])

    async def list_nodes(self) -> list[dict[str, Any]]:
        """Every Node, as plain bodies (the layout watch events have)."""
        got: Any = await asyncio.to_thread(self._core.list_node)
        return [self._plain(node) for node in got.items]

    async def list_delivered(self, namespace: str) -> list[dict[str, Any]]:
        """The Secrets the operator delivered into `namespace`, as plain bodies."""
        got: Any = await asyncio.to_thread(
            self._core.list_namespaced_secret,
            namespace,
            label_selector=f"app.kubernetes.io/managed-by={bundle.MANAGED_BY}",
        )
        return [self._plain(sec) for sec in got.items]

    def _plain(self, model: object) -> dict[str, Any]:
        plain: object = self._api.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
        return cast(dict[str, Any], plain)

    async def read_peering(self, name: str) -> dict[str, Any] | None:
        """The status (peers) of ClusterKopfPeering `name`, or None when it does not exist."""
        try:
            got: Any = await asyncio.to_thread(
                self._custom.get_cluster_custom_object,
                "kopf.dev",
                "v1",
                "clusterkopfpeerings",
                name,
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(got.get("status") or {})

    async def read_secret(self, namespace: str, name: str) -> bundle.UserSecret:
        """A user's Secret as (type, data), or None when it does not exist."""
        try:
            sec = await asyncio.to_thread(self._core.read_namespaced_secret, name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return (str(sec.type or "Opaque"), {str(k): str(v) for k, v in (sec.data or {}).items()})
