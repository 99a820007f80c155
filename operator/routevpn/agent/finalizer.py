"""The agent's finalizer on a tunnel: added before anything touches the node, removed after
the teardown. One guarded write, re-read and retried a few times when the object changed."""

from __future__ import annotations

from routevpn.api import naming
from routevpn.kube.client import ConflictError, Obj, TunnelApi, key_of

#: Writes tried before giving up for this pass (the object keeps changing under us).
TRIES = 3


def has_finalizer(obj: Obj) -> bool:
    """Whether the agent's finalizer is on `obj`."""
    return naming.AGENT_FINALIZER in ((obj.get("metadata") or {}).get("finalizers") or [])


async def set_finalizer(api: TunnelApi, obj: Obj, present: bool) -> Obj | None:
    """Make the agent's finalizer present (or absent) on tunnel `obj`.

    The object as it then is, or None when it is gone. Raises ConflictError when every
    try found the object changed since it was read."""
    for _ in range(TRIES):
        if has_finalizer(obj) == present:
            return obj
        meta = obj.get("metadata") or {}
        others = [f for f in meta.get("finalizers") or [] if f != naming.AGENT_FINALIZER]
        wanted = [*others, naming.AGENT_FINALIZER] if present else others
        try:
            return await api.patch_tunnel_metadata(meta, finalizers=wanted)
        except ConflictError:
            fresh = await api.get_tunnel(*key_of(obj))
            if fresh is None:
                return None
            obj = fresh
    raise ConflictError(f"tunnel {naming.tunnel_ref(*key_of(obj))}: its finalizers kept changing")
