"""What the operator knows about the world: tunnels, nodes and delivered Secrets, as records.

Records are small frozen views of API objects, built from the bodies kopf hands over, so
the decision functions stay pure and cheap to compare. A spec that does not parse is kept
as an error string: the tunnel is then reported InvalidSpec, never acted on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from routevpn.api import naming
from routevpn.api.conditions import Observed
from routevpn.api.spec import VpnTunnelSpec, parse_spec

TunnelKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class TunnelRecord:
    """One VpnTunnel as last seen (metadata, parsed spec, the status fields we read)."""

    namespace: str
    name: str
    uid: str
    created: str
    generation: int
    resource_version: str
    label_node: str | None
    labels: Mapping[str, str]
    finalizers: tuple[str, ...]
    deleting: bool
    spec: VpnTunnelSpec | None
    spec_error: str | None
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> TunnelKey:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        """`namespace/name`, as messages and logs name the tunnel."""
        return naming.tunnel_ref(self.namespace, self.name)

    @property
    def order(self) -> tuple[str, str, str]:
        """Who came first: creationTimestamp, then namespace/name (the conflict tie-break)."""
        return (self.created, self.namespace, self.name)

    @property
    def status_node(self) -> str | None:
        node = self.status.get("node")
        return str(node) if node else None

    @property
    def conditions(self) -> list[Observed]:
        raw = self.status.get("conditions") or []
        return [Observed.from_wire(c) for c in raw if isinstance(c, Mapping)]

    @property
    def has_agent_finalizer(self) -> bool:
        return naming.AGENT_FINALIZER in self.finalizers

    def metadata(self) -> dict[str, Any]:
        """The metadata a guarded patch tests against (see `kube.client.metadata_patch`)."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "resourceVersion": self.resource_version,
            "finalizers": list(self.finalizers),
            "labels": dict(self.labels),
        }

    def body_ref(self) -> dict[str, Any]:
        """Enough of the object to address Events to it."""
        return {
            "apiVersion": naming.API_VERSION,
            "kind": naming.KIND,
            "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
        }


def tunnel_from_body(body: Mapping[str, Any]) -> TunnelRecord:
    """A TunnelRecord from a VpnTunnel body as the API server returns it."""
    meta = body.get("metadata") or {}
    spec: VpnTunnelSpec | None = None
    error: str | None = None
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
    except ValidationError as e:
        # The first error is enough for a condition message and never holds a secret.
        first = e.errors()[0] if e.errors() else {"msg": str(e)}
        error = str(first.get("msg", "invalid spec"))
    labels = meta.get("labels") or {}
    return TunnelRecord(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        created=str(meta.get("creationTimestamp", "")),
        generation=int(meta.get("generation") or 1),
        resource_version=str(meta.get("resourceVersion", "")),
        label_node=labels.get(naming.NODE_LABEL) or None,
        labels=dict(labels),
        finalizers=tuple(meta.get("finalizers") or ()),
        deleting=bool(meta.get("deletionTimestamp")),
        spec=spec,
        spec_error=error,
        status=dict(body.get("status") or {}),
    )


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """The facts of a Node placement depends on."""

    name: str
    labels: Mapping[str, str]
    ready: bool
    #: When Ready last changed (RFC 3339), to tell "NotReady for a moment" from "for good".
    ready_since: str
    internal_ips: tuple[str, ...]


def node_from_body(body: Mapping[str, Any]) -> NodeRecord:
    """A NodeRecord from a Node body."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    ready = False
    since = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
            since = str(cond.get("lastTransitionTime") or "")
    ips = tuple(
        str(a.get("address"))
        for a in status.get("addresses") or []
        if a.get("type") == "InternalIP" and a.get("address")
    )
    unschedulable = bool((body.get("spec") or {}).get("unschedulable"))
    return NodeRecord(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        ready=ready and not unschedulable,
        ready_since=since,
        internal_ips=ips,
    )


@dataclass(frozen=True, slots=True)
class DeliveredRecord:
    """A Secret the operator delivered into the routevpn namespace (no data kept)."""

    name: str
    node: str | None
    content_hash: str
    tunnel: TunnelKey | None


def delivered_from_body(body: Mapping[str, Any]) -> DeliveredRecord:
    """A DeliveredRecord from a Secret body; only labels and annotations are read.

    `tunnel` is None for a Secret whose name is not its tunnel's current one (stale)."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    ann = meta.get("annotations") or {}
    return DeliveredRecord(
        name=str(meta.get("name", "")),
        node=labels.get(naming.NODE_LABEL) or None,
        content_hash=str(ann.get(CONTENT_HASH_ANNOTATION, "")),
        tunnel=naming.current_delivered(meta),
    )


TUNNEL_NAMESPACE_LABEL = naming.TUNNEL_NAMESPACE_LABEL
TUNNEL_NAME_LABEL = naming.TUNNEL_NAME_LABEL
CONTENT_HASH_ANNOTATION = naming.CONTENT_HASH_ANNOTATION
