"""Typed calls to the API server, shared by the operator and the agent; every write counted.

Calls go through the `kubernetes` package's typed APIs (`CustomObjectsApi`,
`CoreV1Api`) with `_preload_content=False` and are parsed as JSON here, so objects stay
plain dicts end to end: no round trip through a generated model that would drop fields
it does not know (VpnTunnel's status is ours, not the client's). The client blocks, so
each call runs in a worker thread; the watcher (`kube.watch`) uses the synchronous
`lister` from its own thread.

Writes:
- status: server-side apply on the status subresource, forced, with the process's own
  field manager (the operator's and the agent's fields never overwrite each other);
- metadata (finalizers, labels): one JSON patch guarded by `test` operations on the
  values it replaces, so a writer whose view is stale fails with `ConflictError`
  instead of dropping another writer's finalizer or label;
- Secrets: server-side apply;
- Leases (agent liveness): create, then replace guarded by resourceVersion (a 409 is a
  `ConflictError`: the writer reads again).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from kubernetes import client, config, watch
from kubernetes.client import ApiException

from routevpn.api import naming
from routevpn.api.policy import POLICY_PLURAL

Obj = dict[str, Any]

_APPLY = "application/apply-patch+yaml"
_JSON_PATCH = "application/json-patch+json"
_MERGE = "application/merge-patch+json"
#: A watch request ends server-side after this long and is re-opened from the last
#: resourceVersion; short enough that a stopping watcher's thread ends soon.
WATCH_SECONDS = 55
#: (connect, read) timeout of one request: a hung API server fails the call, not the caller.
REQUEST_TIMEOUT = (10.0, 30.0)


class ConflictError(Exception):
    """The object changed under us (409, or a failed JSON-patch test): look at it again."""


def key_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def connect(kubeconfig: str | None = None, pool: int = 10) -> client.ApiClient:
    """A client from `kubeconfig`, else the pod's service account, else ~/.kube/config.

    `pool`: connections kept open to the API server (as many as calls in flight, or
    each waits for one)."""
    conf = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=conf)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    conf.connection_pool_maxsize = pool
    return client.ApiClient(conf)


def _escape(key: str) -> str:
    """A map key as one JSON-pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def metadata_patch(
    seen: Mapping[str, Any],
    *,
    finalizers: list[str] | None = None,
    labels: Mapping[str, str | None] | None = None,
) -> list[Obj]:
    """JSON patch setting finalizers and/or labels, guarded by what `seen` (metadata) held.

    Each replaced value is tested first, so the patch fails (409/422) if another writer
    changed it since `seen`; a value that was absent can't be tested, so then the
    resourceVersion is (stricter, but only the first write of a list or map needs it).
    `labels` maps keys to set to their value and keys to remove to None."""
    ops: list[Obj] = []
    guarded_rv = False

    def replace(path: str, old: Any, new: Any) -> None:
        nonlocal guarded_rv
        if old:
            ops.append({"op": "test", "path": path, "value": old})
        elif not guarded_rv:
            ops.insert(
                0,
                {"op": "test", "path": "/metadata/resourceVersion",
                 "value": seen.get("resourceVersion")},
            )  # fmt: skip
            guarded_rv = True
        ops.append({"op": "add", "path": path, "value": new})

    if finalizers is not None:
        replace("/metadata/finalizers", list(seen.get("finalizers") or []), list(finalizers))
    if labels:
        old = dict(seen.get("labels") or {})
        new = {k: v for k, v in {**old, **labels}.items() if v is not None}
        if new != old:
            replace("/metadata/labels", old, new)
    return ops


class TunnelApi(Protocol):
    """The VpnTunnel calls a reconcile pass makes (`KubeClient`; in memory in unit tests)."""

    async def get_tunnel(self, namespace: str, name: str) -> Obj | None:
        """The tunnel now, or None."""
        ...

    async def apply_tunnel_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Obj | None:
        """Server-side apply of this field manager's status fields; None when gone."""
        ...

    async def patch_tunnel_metadata(
        self,
        seen: Mapping[str, Any],
        *,
        finalizers: list[str] | None = None,
        labels: Mapping[str, str | None] | None = None,
    ) -> Obj | None:
        """Guarded finalizers/labels patch; ConflictError when `seen` is stale."""
        ...


@dataclass(frozen=True, slots=True)
class Lister:
    """List and watch one kind of object with a server-side label selector (sync)."""

    source: str
    call: Callable[..., Any]
    args: tuple[str, ...]
    label_selector: str

    def list(self) -> tuple[list[Obj], str]:
        """Every matching object now, and the list's resourceVersion."""
        resp = self.call(
            *self.args,
            label_selector=self.label_selector,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
        got = json.loads(resp.data or b"{}")
        rv = str((got.get("metadata") or {}).get("resourceVersion", ""))
        return list(got.get("items") or []), rv

    def stream(self, resource_version: str, w: watch.Watch) -> Iterator[Obj]:
        """Watch events (plain dicts: type, object) from `resource_version` on.

        A 410 Gone (the version is too old) raises ApiException(410): relist."""
        events: Iterator[Obj] = w.stream(  # type: ignore[no-untyped-call]
            self.call,
            *self.args,
            label_selector=self.label_selector,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=(REQUEST_TIMEOUT[0], WATCH_SECONDS + 15.0),
            deserialize=False,
        )
        return events


class KubeClient:
    """The API calls routevpn makes, typed and counted (`on_write(kind)` per write)."""

    def __init__(
        self,
        api: client.ApiClient,
        field_manager: str,
        on_write: Callable[[str], None] | None = None,
    ) -> None:
        self.api = api
        self.field_manager = field_manager
        self._on_write = on_write or (lambda kind: None)
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._coordination = client.CoordinationV1Api(api)

    def close(self) -> None:
        """Close the connection pool."""
        self.api.close()  # type: ignore[no-untyped-call]

    async def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """One request in a worker thread; its JSON reply, or None when it is gone (404)."""
        kw.setdefault("_request_timeout", REQUEST_TIMEOUT)

        def call() -> Any:
            resp = fn(*args, _preload_content=False, **kw)
            return json.loads(resp.data or b"null")

        try:
            return await asyncio.to_thread(call)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def _write(self, kind: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self._on_write(kind)
        try:
            return await self._call(fn, *args, **kw)
        except ApiException as e:
            # 422 is how the server answers a JSON patch whose `test` failed
            if e.status == 409 or (e.status == 422 and kw.get("_content_type") == _JSON_PATCH):
                raise ConflictError(f"{e.status} {e.reason}") from None
            raise

    # -- VpnTunnels ------------------------------------------------------------------

    def tunnels(self, label_selector: str = "") -> Lister:
        """VpnTunnels of every namespace matching `label_selector`."""
        return Lister(
            "tunnels",
            self._custom.list_cluster_custom_object,
            (naming.GROUP, naming.VERSION, naming.PLURAL),
            label_selector,
        )

    async def list_tunnels(self, label_selector: str = "") -> list[Obj]:
        """Every VpnTunnel matching `label_selector`, as the API server has it now."""
        items, _ = await asyncio.to_thread(self.tunnels(label_selector).list)
        return items

    async def get_tunnel(self, namespace: str, name: str) -> Obj | None:
        """The tunnel now, or None."""
        got = await self._call(
            self._custom.get_namespaced_custom_object,
            naming.GROUP, naming.VERSION, namespace, naming.PLURAL, name,
        )  # fmt: skip
        return cast(Obj | None, got)

    async def apply_tunnel_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Obj | None:
        """Server-side apply of this field manager's status fields (forced: they are ours).

        The object as updated, or None when it is gone."""
        body = {
            "apiVersion": naming.API_VERSION,
            "kind": naming.KIND,
            "metadata": {"namespace": namespace, "name": name},
            "status": dict(status),
        }
        got = await self._write(
            "status",
            self._custom.patch_namespaced_custom_object_status,
            naming.GROUP, naming.VERSION, namespace, naming.PLURAL, name, body,
            field_manager=self.field_manager, force=True, _content_type=_APPLY,
        )  # fmt: skip
        return cast(Obj | None, got)

    async def patch_tunnel_metadata(
        self,
        seen: Mapping[str, Any],
        *,
        finalizers: list[str] | None = None,
        labels: Mapping[str, str | None] | None = None,
    ) -> Obj | None:
        """Set finalizers and/or labels of the tunnel `seen` (its metadata) describes,
        guarded by what `seen` held (see `metadata_patch`): ConflictError when another
        writer changed them since. The object as patched, or None when it is gone."""
        ops = metadata_patch(seen, finalizers=finalizers, labels=labels)
        if not ops:
            return None
        namespace, name = str(seen.get("namespace", "")), str(seen.get("name", ""))
        kind = "finalizer" if labels is None else "metadata"
        got = await self._write(
            kind,
            self._custom.patch_namespaced_custom_object,
            naming.GROUP, naming.VERSION, namespace, naming.PLURAL, name, ops,
            _content_type=_JSON_PATCH,
        )  # fmt: skip
        return cast(Obj | None, got)

    # -- Secrets, Nodes, Events -----------------------------------------------------------

    def secrets(self, namespace: str, label_selector: str) -> Lister:
        """Secrets of `namespace` matching `label_selector`."""
        return Lister("secrets", self._core.list_namespaced_secret, (namespace,), label_selector)

    async def list_secrets(self, namespace: str, label_selector: str) -> list[Obj]:
        """Secrets of `namespace` matching `label_selector`."""
        items, _ = await asyncio.to_thread(self.secrets(namespace, label_selector).list)
        return items

    async def read_secret(self, namespace: str, name: str) -> Obj | None:
        """One Secret, or None when it does not exist."""
        got = await self._call(self._core.read_namespaced_secret, name, namespace)
        return cast(Obj | None, got)

    async def apply_secret(self, body: Mapping[str, Any]) -> None:
        """Create or update a Secret by server-side apply (forced: it is ours)."""
        meta = body["metadata"]
        await self._write(
            "secret",
            self._core.patch_namespaced_secret,
            meta["name"], meta["namespace"], dict(body),
            field_manager=self.field_manager, force=True, _content_type=_APPLY,
        )  # fmt: skip

    async def delete_secret(self, namespace: str, name: str) -> None:
        """Delete a Secret if it exists."""
        await self._write("secret_delete", self._core.delete_namespaced_secret, name, namespace)

    async def list_nodes(self) -> list[Obj]:
        """Every Node."""
        got = await self._call(self._core.list_node)
        return list((got or {}).get("items") or [])

    async def list_policies(self) -> list[Obj]:
        """Every VpnTunnelPolicy (cluster-scoped)."""
        got = await self._call(
            self._custom.list_cluster_custom_object,
            naming.GROUP, naming.VERSION, POLICY_PLURAL,
        )  # fmt: skip
        return list((got or {}).get("items") or [])

    async def list_namespaces(self) -> list[Obj]:
        """Every Namespace (their labels select VpnTunnelPolicies)."""
        got = await self._call(self._core.list_namespace)
        return list((got or {}).get("items") or [])

    async def api_server_addresses(self) -> list[str]:
        """The API server's addresses: the `kubernetes` Service's cluster IPs and its
        Endpoints in `default` (where every cluster publishes them)."""
        out: list[str] = []
        svc = await self._call(self._core.read_namespaced_service, "kubernetes", "default")
        spec = (svc or {}).get("spec") or {}
        out += [str(ip) for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip]
        eps = await self._call(self._core.read_namespaced_endpoints, "kubernetes", "default")
        for subset in (eps or {}).get("subsets") or []:
            out += [str(a["ip"]) for a in subset.get("addresses") or [] if a.get("ip")]
        return [ip for ip in out if ip != "None"]

    async def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        """Create one core/v1 Event (built by `kube.events`)."""
        await self._write("event", self._core.create_namespaced_event, namespace, dict(body))

    # -- Leases (agent liveness) --------------------------------------------------------

    def leases(self, namespace: str, label_selector: str) -> Lister:
        """Leases of `namespace` matching `label_selector`."""
        call = self._coordination.list_namespaced_lease
        return Lister("leases", call, (namespace,), label_selector)

    async def get_lease(self, namespace: str, name: str) -> Obj | None:
        """One Lease, or None when it does not exist."""
        got = await self._call(self._coordination.read_namespaced_lease, name, namespace)
        return cast(Obj | None, got)

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> Obj:
        """Create a Lease; ConflictError when it exists already."""
        call = self._coordination.create_namespaced_lease
        return cast(Obj, await self._write("lease", call, namespace, dict(body)))

    async def replace_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> Obj | None:
        """Replace a Lease (`body` carries the resourceVersion it was read at: ConflictError
        when it changed since); None when it is gone."""
        call = self._coordination.replace_namespaced_lease
        return cast(Obj | None, await self._write("lease", call, name, namespace, dict(body)))

    async def delete_lease(self, namespace: str, name: str) -> None:
        """Delete a Lease if it exists."""
        call = self._coordination.delete_namespaced_lease
        await self._write("lease_delete", call, name, namespace)
