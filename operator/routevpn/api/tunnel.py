"""A whole VpnTunnel object as the controllers read it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from routevpn.api import naming
from routevpn.api.spec import VpnTunnelSpec
from routevpn.api.status import VpnTunnelStatus


class ObjectMeta(BaseModel):
    """The part of metadata routevpn uses; everything else is kept but ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    name: str
    namespace: str
    uid: str | None = None
    generation: int = 1
    labels: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")


class VpnTunnel(BaseModel):
    """`routevpn.io/v1alpha1` VpnTunnel: spec (the user's) and status (the controllers')."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    api_version: str = Field(default=naming.API_VERSION, alias="apiVersion")
    kind: str = naming.KIND
    metadata: ObjectMeta
    spec: VpnTunnelSpec
    status: VpnTunnelStatus | None = None

    @property
    def ref(self) -> str:
        """`namespace/name`, as logs and messages name the tunnel."""
        return naming.tunnel_ref(self.metadata.namespace, self.metadata.name)

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> VpnTunnel:
        """Parse an object as the API server returns it (status parsed leniently)."""
        return cls.model_validate(obj)
