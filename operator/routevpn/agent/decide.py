"""What the agent must do with one tunnel it sees, and the key material delivered for it.

The contract with the operator, as pure functions of the object:
- label == me, status.node == me, no deletionTimestamp → configure (finalizer first);
- label == me and (status.node != me or deletionTimestamp set) → tear down, then
  remove the agent's finalizer;
- anything else is not this agent's business.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping
from typing import Any

from routevpn.agent.desired import DeliveredMaterial
from routevpn.api import naming


class Action(enum.Enum):
    """The agent's decision for one tunnel."""

    CONFIGURE = "configure"
    TEARDOWN = "teardown"
    IGNORE = "ignore"


def decide(obj: Mapping[str, Any], node: str) -> Action:
    """Configure, tear down or ignore `obj` on `node` (see the module docstring)."""
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(naming.NODE_LABEL) != node:
        return Action.IGNORE
    status_node = (obj.get("status") or {}).get("node")
    if meta.get("deletionTimestamp") or status_node != node:
        return Action.TEARDOWN
    return Action.CONFIGURE


def delivered(secret: Mapping[str, Any]) -> DeliveredMaterial | None:
    """A Secret's data decoded, with its content hash; None when it can't be decoded."""
    data: dict[str, str] = {}
    try:
        for key, value in (secret.get("data") or {}).items():
            data[str(key)] = base64.b64decode(str(value), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return DeliveredMaterial(data, str(annotations.get(naming.CONTENT_HASH_ANNOTATION, "")))
