"""Which replica acts: the holder of the operator's Lease (`routevpn.kube.lease`).

kopf runs with peering off, so every replica's watches keep its view current, the
standby's included; only the Lease holder's worker decides and writes, asking `active`
before every decision and every write. A standby takes the Lease over only after the old
leader has stopped acting (its renew deadline comes before the lease duration runs out
for anyone else), and by then its own watches have brought it the old leader's writes:
taking the lead needs no re-read.

A replica whose Lease was taken over stops its process (`lead`): its view lays its own
decisions over what it observed (`Store.applied`), and the new leader may have undone
them; a restarted replica starts from the API server alone.

A graceful stop hands over at once (`hand_over`): the writes already sent finish, then
the Lease is released and a standby takes it at its next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from routevpn.controller.metrics import LEADER
from routevpn.kube.lease import LeaderElector

log = logging.getLogger("routevpn.operator")


def identity() -> str:
    """This replica's name in the Lease: the pod's (or host's) name and a random part, so
    a restarted process never passes for the one before it."""
    name = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{name}_{secrets.token_hex(4)}"


async def lead(elector: LeaderElector, on_lost: Callable[[], None]) -> None:
    """Take part in the election until cancelled; `on_lost()` once another replica has
    taken the Lease over from this one (the process must stop: see the module docstring)."""
    LEADER.set_function(lambda: 1.0 if elector.active else 0.0)
    await elector.run()
    log.error("the Lease was taken over: stopping, to start again from a fresh view")
    on_lost()


async def hand_over(elector: LeaderElector, writes: ThreadPoolExecutor, drain: float) -> None:
    """Graceful stop, once the worker is cancelled: wait for the writes already sent (they
    run on `writes`), then release the Lease. Writes that take longer than `drain` seconds keep
    the Lease held: a standby then waits for it to run out, and sees those writes first."""
    loop = asyncio.get_running_loop()
    drained = loop.create_future()

    def done() -> None:
        if not drained.done():
            drained.set_result(None)

    def wait_for_writes() -> None:
        writes.shutdown(wait=True)
        # A closed loop (RuntimeError): nobody waits for this any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(done)

    threading.Thread(target=wait_for_writes, name="drain-writes", daemon=True).start()
    try:
        await asyncio.wait_for(drained, drain)
    except TimeoutError:
        log.warning("writes still in flight after %.0f s: the Lease is left to run out", drain)
        return
    await elector.release()
