"""charon's events, followed as they happen on a second VICI session.

vici is synchronous, so a dedicated thread listens (ike-updown, child-updown, ike-rekey,
child-rekey, log) and feeds an `asyncio.Queue`: state changes are seen at once rather
than at the next poll. One of the two modules importing vici (the other is
`ipsec_session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable

from vici.exception import SessionException

from routevpn.dataplane import vici_facts
from routevpn.dataplane.errors import CharonUnavailableError
from routevpn.dataplane.ipsec_session import connect
from routevpn.dataplane.vici_facts import IpsecEvent, text

# The adapter's one logger, as before it was split into modules.
log = logging.getLogger("routevpn.dataplane.ipsec")

EVENTS = ("ike-updown", "child-updown", "ike-rekey", "child-rekey", "log")


async def follow(
    path: str, resync: Callable[[], Awaitable[object]], retry: float
) -> AsyncGenerator[IpsecEvent, None]:
    """Yield the events of the charon at VICI socket `path`, across charon restarts.

    A dedicated thread listens on its own VICI session and hands events to this
    coroutine through a queue. After it reconnects, `resync()` re-loads what charon lost
    before the "reconnected" event is yielded.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[IpsecEvent] = asyncio.Queue()
    stop = threading.Event()
    thread = threading.Thread(
        target=_listen,
        args=(path, loop, queue, stop, retry),
        name="routevpn-vici-events",
        daemon=True,
    )
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item.kind == "reconnected":
                try:
                    await resync()
                except CharonUnavailableError:
                    log.warning("charon went away again during re-load; will retry")
            yield item
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 5.0)


def _listen(
    path: str,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[IpsecEvent],
    stop: threading.Event,
    retry: float,
) -> None:
    """Event thread: listen, translate, hand over; reconnect until told to stop."""
    first = True
    while not stop.is_set():
        try:
            session = connect(path, 5.0)
        except OSError:
            stop.wait(retry)
            continue
        if not first:
            loop.call_soon_threadsafe(queue.put_nowait, IpsecEvent(kind="reconnected"))
            log.info("VICI event session reconnected to charon")
        first = False
        try:
            for kind, data in session.listen(list(EVENTS), timeout=0.5):
                if stop.is_set():
                    break
                if kind is None:
                    continue
                item = vici_facts.event(text(kind), data)
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except (OSError, SessionException):
            log.warning("VICI event session lost charon; reconnecting")
        finally:
            with contextlib.suppress(OSError):
                session.transport.close()
