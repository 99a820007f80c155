"""The agent's only channel to the API server: typed list+watch, patches, status, events.

Why not kopf: kopf filters labels client-side, so every agent would watch every
tunnel of the cluster. Here both watches carry a server-side `labelSelector`
(`routevpn.io/node=<this node>`), so an agent's cost grows with its own tunnels only.

The kubernetes client is synchronous. Each watch runs in its own thread (list, then
watch from the list's resourceVersion; relist on 410 Gone; exponential backoff on any
other error) and hands plain dicts to the asyncio loop through a queue. Requests
(patches, status, events) run in worker threads via `asyncio.to_thread`. Requests go
through the client's own serialisation and auth, with JSON bodies, so objects stay
plain dicts end to end (no model round-trips that could drop unknown fields).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from routevpn.api import naming

log = logging.getLogger(__name__)

FIELD_MANAGER = "routevpn-agent"
REPORTING_CONTROLLER = "routevpn-agent"
TUNNELS_PATH = f"/apis/{naming.GROUP}/{naming.VERSION}/{naming.PLURAL}"
# A watch request ends server-side after this long and is re-opened from the last
# resourceVersion; short enough that a stopping agent's thread ends soon.
WATCH_SECONDS = 55
REQUEST_TIMEOUT = 30.0
BACKOFF_MAX = 30.0

Obj = dict[str, Any]
Query = list[tuple[str, str]]


def key_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class Api(Protocol):
    """What the reconciler needs from the API server (`Kube`; an in-memory fake in tests)."""

    def add_finalizer(self, obj: Mapping[str, Any], finalizer: str) -> Obj:
        """Add `finalizer`; the updated object. Raises ConflictError if `obj` is stale."""
        ...

    def remove_finalizer(self, obj: Mapping[str, Any], finalizer: str) -> Obj:
        """Remove `finalizer`; the updated object. Raises ConflictError if `obj` is stale."""
        ...

    def get_tunnel(self, ns: str, name: str) -> Obj | None:
        """The tunnel now, or None."""
        ...

    def apply_status(self, ns: str, name: str, status: Mapping[str, Any]) -> Obj:
        """Server-side apply of the agent's status fields; the updated object."""
        ...

    def event(
        self, obj: Mapping[str, Any], *, type_: str, reason: str, message: str, node: str
    ) -> None:
        """Record one Event about `obj`."""
        ...


class ConflictError(Exception):
    """A guarded patch failed its test (the object changed): re-read and retry."""


class Kube:
    """Raw JSON requests through a configured `ApiClient`; counts every write."""

    def __init__(self, api: ApiClient, on_write: Callable[[str], None] | None = None) -> None:
        self.api = api
        self._on_write = on_write or (lambda kind: None)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | tuple[float, float] = REQUEST_TIMEOUT,
        stream: bool = False,
    ) -> Any:
        """One API request; the parsed JSON reply (or the raw response with `stream`)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        m, url, hdrs, data, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(m, url, hdrs, data, _request_timeout=timeout)
        if not 200 <= resp.status <= 299:
            resp.read()  # type: ignore[no-untyped-call]
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        if stream:
            return resp.response
        return json.loads(resp.read() or b"null")  # type: ignore[no-untyped-call]

    # -- writes ------------------------------------------------------------------------

    def _write(self, kind: str, method: str, path: str, **kw: Any) -> Any:
        try:
            out = self.request(method, path, **kw)
        except ApiException as e:
            if e.status in (409, 422) and kw.get("content_type") == "application/json-patch+json":
                raise ConflictError(str(e.reason)) from e
            raise
        self._on_write(kind)
        return out

    def add_finalizer(self, obj: Mapping[str, Any], finalizer: str) -> Obj:
        """Append `finalizer` with a JSON patch guarded by the list as it was seen."""
        ns, name = key_of(obj)
        meta = obj.get("metadata") or {}
        current = meta.get("finalizers")
        if current:
            ops: list[Obj] = [
                {"op": "test", "path": "/metadata/finalizers", "value": current},
                {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
            ]
        else:
            # No list yet: guard on the resourceVersion so no one else's new list is lost.
            ops = [
                {"op": "test", "path": "/metadata/resourceVersion",
                 "value": meta.get("resourceVersion")},
                {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
            ]  # fmt: skip
        out: Obj = self._write(
            "finalizer",
            "PATCH",
            f"/apis/{naming.API_VERSION}/namespaces/{ns}/{naming.PLURAL}/{name}",
            body=ops,
            content_type="application/json-patch+json",
        )
        return out

    def remove_finalizer(self, obj: Mapping[str, Any], finalizer: str) -> Obj:
        """Remove `finalizer` with a JSON patch guarded by its index."""
        ns, name = key_of(obj)
        current = list((obj.get("metadata") or {}).get("finalizers") or [])
        index = current.index(finalizer)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        out: Obj = self._write(
            "finalizer",
            "PATCH",
            f"/apis/{naming.API_VERSION}/namespaces/{ns}/{naming.PLURAL}/{name}",
            body=ops,
            content_type="application/json-patch+json",
        )
        return out

    def get_tunnel(self, ns: str, name: str) -> Obj | None:
        """The tunnel as the server has it now, or None."""
        try:
            out: Obj = self.request(
                "GET", f"/apis/{naming.API_VERSION}/namespaces/{ns}/{naming.PLURAL}/{name}"
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return out

    def apply_status(self, ns: str, name: str, status: Mapping[str, Any]) -> Obj:
        """Server-side apply of the agent's status fields (field manager routevpn-agent)."""
        body = {
            "apiVersion": naming.API_VERSION,
            "kind": naming.KIND,
            "metadata": {"name": name, "namespace": ns},
            "status": dict(status),
        }
        out: Obj = self._write(
            "status",
            "PATCH",
            f"/apis/{naming.API_VERSION}/namespaces/{ns}/{naming.PLURAL}/{name}/status",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=body,
            content_type="application/apply-patch+yaml",
        )
        return out

    def event(
        self,
        obj: Mapping[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
        node: str,
    ) -> None:
        """One core/v1 Event about `obj` in its namespace."""
        ns, name = key_of(obj)
        meta = obj.get("metadata") or {}
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": ns},
            "involvedObject": {
                "apiVersion": naming.API_VERSION,
                "kind": naming.KIND,
                "name": name,
                "namespace": ns,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": REPORTING_CONTROLLER, "host": node},
            "reportingComponent": REPORTING_CONTROLLER,
            "reportingInstance": node,
        }
        self._write("event", "POST", f"/api/v1/namespaces/{ns}/events", body=body)


@dataclass(frozen=True, slots=True)
class WatchItem:
    """What an informer thread hands to the loop: a full list or one change."""

    source: str
    kind: str  # "list" | "ADDED" | "MODIFIED" | "DELETED"
    objects: tuple[Obj, ...]


class Informer:
    """List+watch of one resource with a server-side label selector, in a thread."""

    def __init__(
        self,
        kube: Kube,
        source: str,
        path: str,
        label_selector: str,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[WatchItem],
    ) -> None:
        self.kube = kube
        self.source = source
        self.path = path
        self.selector = label_selector
        self._loop = loop
        self._queue = queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{source}", daemon=True)
        #: lists done (1 after the first); relists after 410 or errors count too
        self.lists = 0

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (it does at the end of its current watch request)."""
        self._stop.set()

    def _emit(self, kind: str, objects: tuple[Obj, ...]) -> None:
        item = WatchItem(self.source, kind, objects)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _list(self) -> str:
        reply = self.kube.request("GET", self.path, query=[("labelSelector", self.selector)])
        items = tuple(reply.get("items") or [])
        self._emit("list", items)
        self.lists += 1
        log.debug("listed %d %s", len(items), self.source)
        return str((reply.get("metadata") or {}).get("resourceVersion", ""))

    def _watch(self, rv: str) -> str:
        query = [
            ("labelSelector", self.selector),
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", rv),
            ("timeoutSeconds", str(WATCH_SECONDS)),
        ]
        resp = self.kube.request(
            "GET", self.path, query=query, stream=True, timeout=(10.0, WATCH_SECONDS + 15.0)
        )
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise ApiException(status=int(obj.get("code", 500)), reason=obj.get("message"))
                rv = str((obj.get("metadata") or {}).get("resourceVersion", rv))
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._emit(str(kind), (obj,))
        finally:
            resp.release_conn()
        return rv

    def _run(self) -> None:
        backoff = 0.5
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                rv = self._watch(rv)
                backoff = 0.5
            except ApiException as e:
                if e.status == 410:
                    log.info("watch of %s: resourceVersion too old; relisting", self.source)
                    rv = None
                    continue
                log.warning("watch of %s failed (%s %s); retrying", self.source, e.status, e.reason)
                rv = None
            except Exception as e:  # any transport error: back off and relist
                log.warning("watch of %s failed (%s); retrying", self.source, type(e).__name__)
                rv = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)


def tunnel_informer(
    kube: Kube, node: str, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[WatchItem]
) -> Informer:
    """VpnTunnels of every namespace labelled for `node` (server-side selector)."""
    return Informer(kube, "tunnels", TUNNELS_PATH, f"{naming.NODE_LABEL}={node}", loop, queue)


def secret_informer(
    kube: Kube,
    namespace: str,
    node: str,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[WatchItem],
) -> Informer:
    """Secrets the operator delivered for `node`, in the agent's own namespace only."""
    return Informer(
        kube,
        "secrets",
        f"/api/v1/namespaces/{namespace}/secrets",
        f"{naming.NODE_LABEL}={node}",
        loop,
        queue,
    )
