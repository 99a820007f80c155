"""`routevpn release-all`: what the chart's pre-delete hook runs on `helm uninstall`.

Uninstalling removes the operator and the agents, but Helm keeps the CRD and every
tenant's VpnTunnel (they are the tenants' objects). Without this, each tunnel would keep
the `routevpn.io/operator` and `routevpn.io/agent` finalizers that nothing would ever
remove again: deleting it later would hang in Terminating. So before the release goes,
this drops routevpn's finalizers from every tunnel (saying so in an Event on each) and
deletes what the operator created in its own namespace (delivered Secrets, the agents'
Leases). The tunnels stay, and so does what the agents configured on the nodes
(docs/install.md says what and how to remove it): stopping routevpn never cuts traffic
by itself, and a reinstall picks every tunnel up again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from routevpn.api import naming
from routevpn.controller import bundle
from routevpn.kube.client import ConflictError, KubeClient, Obj, connect, key_of
from routevpn.kube.events import WARNING, EventPoster

log = logging.getLogger("routevpn.release")
FIELD_MANAGER = "routevpn-uninstall"
OURS = (naming.OPERATOR_FINALIZER, naming.AGENT_FINALIZER)
TRIES = 5


def release_message(obj: Mapping[str, Any]) -> str:
    """The Event on a tunnel released by uninstall: what may remain, and where."""
    status = obj.get("status") or {}
    node = status.get("node") or "its node"
    iface = (status.get("interface") or {}).get("name")
    left = f"interface {iface} (alias {naming.link_alias(*key_of(obj))}), " if iface else ""
    return (
        f"routevpn was uninstalled: this tunnel is no longer managed and may be deleted; "
        f"on {node} its {left}routes and IPsec connection {naming.conn_name(*key_of(obj))} "
        "stay until removed by hand (docs/install.md) or routevpn is installed again"
    )


async def release_tunnel(kube: KubeClient, obj: Obj) -> bool:
    """Drop routevpn's finalizers from one tunnel; True when it held any."""
    for _ in range(TRIES):
        meta = obj.get("metadata") or {}
        held = list(meta.get("finalizers") or [])
        if not any(f in OURS for f in held):
            return False
        try:
            await kube.patch_tunnel_metadata(meta, finalizers=[f for f in held if f not in OURS])
            return True
        except ConflictError:
            fresh = await kube.get_tunnel(*key_of(obj))
            if fresh is None:
                return False
            obj = fresh
    raise ConflictError(f"tunnel {naming.tunnel_ref(*key_of(obj))}: finalizers kept changing")


async def release_all(kube: KubeClient, namespace: str) -> int:
    """Release every tunnel and remove the operator's objects in `namespace`; how many
    tunnels were released."""
    events = EventPoster(kube.create_event, FIELD_MANAGER, namespace)
    released = 0
    for obj in await kube.list_tunnels():
        if await release_tunnel(kube, obj):
            released += 1
            ref = naming.tunnel_ref(*key_of(obj))
            log.info("%s: released (routevpn's finalizers removed)", ref)
            try:
                await events.post(obj, WARNING, "Uninstalled", release_message(obj))
            except Exception as e:  # the release is what matters; the Event is a courtesy
                # (a namespace being deleted refuses new Events: 403)
                log.warning("%s: event not posted: %s", ref, type(e).__name__)
    managed = f"app.kubernetes.io/managed-by={bundle.MANAGED_BY}"
    for secret in await kube.list_secrets(namespace, managed):
        await kube.delete_secret(namespace, key_of(secret)[1])
    agents = f"{naming.AGENT_LEASE_LABEL}={naming.AGENT_LEASE_VALUE}"
    leases, _ = await asyncio.to_thread(kube.leases(namespace, agents).list)
    for lease in leases:
        await kube.delete_lease(namespace, key_of(lease)[1])
    return released


def main(namespace: str, kubeconfig: str | None = None) -> int:
    """Run `release_all` once; the process exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    async def run() -> int:
        kube = KubeClient(connect(kubeconfig), FIELD_MANAGER)
        try:
            n = await release_all(kube, namespace)
        finally:
            kube.close()
        log.info("released %d tunnel(s); routevpn's objects in %s removed", n, namespace)
        return 0

    return asyncio.run(run())
