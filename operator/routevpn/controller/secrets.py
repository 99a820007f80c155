"""The Secrets the operator reads and writes, without a cluster-wide Secret watch.

- Delivered Secrets (routevpn's own namespace, label `app.kubernetes.io/managed-by`):
  listed and watched there only (`kube.watch`), kept in the view by tunnel. One whose
  name is not the current `naming.secret_name` of its tunnel (an older naming, or naming
  no tunnel) is deleted: an upgrade leaves no old-format Secret behind.
- User Secrets (the PSK/TLS Secrets tunnels refer to): read with one GET each when a
  tunnel first needs them (`OperatorReconciler._user_secrets`), cached, and re-read every
  `period` seconds, only those some tunnel still refers to. A rotation reaches the
  tunnels within one period; the cost is one GET per referenced Secret per period
  (1000 tunnels with their own PSK Secret, period 60 s: about 17 GETs a second), paced
  `READS_AT_ONCE` at a time. So the operator needs `get` on Secrets, never `list` or
  `watch`, and reads no Secret that no tunnel names.
"""

from __future__ import annotations

import asyncio
import logging

from routevpn.api import naming
from routevpn.controller import bundle
from routevpn.controller.model import TunnelKey, delivered_from_body
from routevpn.controller.reconciler import OperatorReconciler, user_secret
from routevpn.kube.watch import WatchItem

log = logging.getLogger("routevpn.operator")
#: User Secrets re-read at once: bounds the burst a re-read puts on the API server.
READS_AT_ONCE = 8


def delivered_selector() -> str:
    """The label selector of every Secret the operator delivers."""
    return f"app.kubernetes.io/managed-by={bundle.MANAGED_BY}"


class SecretFollower:
    """Keeps the view's delivered and user Secrets current (see the module docstring)."""

    def __init__(self, reconciler: OperatorReconciler, period: float) -> None:
        self.reconciler = reconciler
        self.store = reconciler.store
        self.period = period

    def on_delivered(self, item: WatchItem) -> None:
        """A listing or change of delivered Secrets: update the view, queue their tunnels,
        delete those under a name that is not (or no longer) their tunnel's."""
        store, r = self.store, self.reconciler
        if item.kind == "list":
            store.delivered = {}
        for body in item.objects:
            got = delivered_from_body(body)
            if got.tunnel is None:
                if item.kind != "DELETED":
                    r.delete_stale_secret(got.name)
                continue
            if item.kind == "DELETED":
                if (have := store.delivered.get(got.tunnel)) and have.name == got.name:
                    store.delivered.pop(got.tunnel, None)
            else:
                store.delivered[got.tunnel] = got
            r.enqueue(got.tunnel)

    async def reread_loop(self) -> None:
        """Every `period` seconds, re-read the user Secrets tunnels refer to."""
        while True:
            await asyncio.sleep(self.period)  # a polling period, not a wait for an outcome
            try:
                await self.reread()
            except Exception as e:  # the next period tries again
                log.warning("re-reading referenced Secrets failed: %s", type(e).__name__)

    async def reread(self) -> int:
        """Re-read every cached user Secret still referred to, drop the others; queue the
        tunnels whose Secret changed. How many Secrets were read."""
        store, r = self.store, self.reconciler
        if not r.active:
            return 0
        wanted: dict[tuple[str, str], list[TunnelKey]] = {}
        for ckey in list(store.user_secrets):
            users = store.referencing(*ckey)
            if users:
                wanted[ckey] = users
            else:
                del store.user_secrets[ckey]  # a tunnel that comes later reads it afresh
        gate = asyncio.Semaphore(READS_AT_ONCE)

        async def one(ckey: tuple[str, str], users: list[TunnelKey]) -> None:
            async with gate:
                got = user_secret(await r.kube.read_secret(*ckey))
            if ckey in store.user_secrets and store.user_secrets[ckey] != got:
                log.info("Secret %s changed: looking at %d tunnel(s)", naming.tunnel_ref(*ckey),
                         len(users))  # fmt: skip
                store.user_secrets[ckey] = got
                for key in users:
                    r.enqueue(key)

        await asyncio.gather(*(one(k, u) for k, u in wanted.items()))
        return len(wanted)
