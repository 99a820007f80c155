"""List, then watch, in a thread; hand plain dicts to the asyncio loop.

Built on the client's own `kubernetes.watch.Watch`. The server-side label selector is
why the agent has this instead of kopf: kopf filters labels client-side, so every agent
would watch every tunnel of the cluster; here an agent's cost grows with its own
tunnels only.

The loop: list (one `list` item), watch from the list's resourceVersion (bookmarks keep
it fresh), re-open the watch when the server ends it; on 410 Gone relist at once; on any
other error back off exponentially with jitter, reset after a watch that worked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

from kubernetes import watch
from kubernetes.client import ApiException

from routevpn.kube.backoff import Backoff
from routevpn.kube.client import Lister, Obj

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchItem:
    """What a watcher hands to the loop: a full list, or one change."""

    source: str
    kind: str  # "list" | "ADDED" | "MODIFIED" | "DELETED"
    objects: tuple[Obj, ...]


class Watcher:
    """One list+watch loop in a daemon thread, feeding `queue` on `loop`."""

    def __init__(
        self,
        lister: Lister,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[WatchItem],
        backoff: Backoff | None = None,
    ) -> None:
        self.lister = lister
        self.source = lister.source
        self._loop = loop
        self._queue = queue
        self._backoff = backoff or Backoff(base=0.5, cap=30.0)
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.source}", daemon=True)
        #: lists done (1 after the first); relists after 410 or errors count too
        self.lists = 0

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (at the latest when its watch request ends)."""
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()  # type: ignore[no-untyped-call]

    def _emit(self, kind: str, objects: tuple[Obj, ...]) -> None:
        item = WatchItem(self.source, kind, objects)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _list(self) -> str:
        items, rv = self.lister.list()
        self._emit("list", tuple(items))
        self.lists += 1
        log.debug("listed %d %s", len(items), self.source)
        return rv

    def _watch_once(self, rv: str) -> str:
        """One watch request; the resourceVersion to go on from."""
        self._watch = w = watch.Watch()  # type: ignore[no-untyped-call]
        for event in self.lister.stream(rv, w):
            if self._stop.is_set():
                break
            kind, obj = event.get("type"), event.get("object") or {}
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._emit(str(kind), (obj,))
        return rv

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                rv = self._watch_once(rv)
                self._backoff.reset()
                continue
            except ApiException as e:
                rv = None
                if e.status == 410:
                    log.info("watch of %s: resourceVersion too old; relisting", self.source)
                    continue
                why: Any = f"{e.status} {e.reason}"
            except Exception as e:  # any transport error: back off, then relist
                rv = None
                why = type(e).__name__
            delay = self._backoff.next_delay()
            log.warning("watch of %s failed (%s); retrying in %.1fs", self.source, why, delay)
            self._stop.wait(delay)
