"""The watcher's loop against a scripted lister: list, watch, relist on 410 Gone, back off
on other errors and reset after a watch that worked. (The real API server: see
tests/cluster/test_kube_io.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from kubernetes.client import ApiException

from routevpn.kube.backoff import Backoff
from routevpn.kube.client import Obj
from routevpn.kube.watch import Watcher, WatchItem


def _obj(name: str, rv: str) -> Obj:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}}


class ScriptedLister:
    """Each list answers the next listing; each watch plays the next script step."""

    source = "tunnels"

    def __init__(self, lists: list[list[Obj]], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.watched_from: list[str] = []

    def list(self) -> tuple[list[Obj], str]:
        items = self.lists.pop(0) if self.lists else []
        return items, str(100 + len(self.watched_from))

    def stream(self, resource_version: str, w: Any) -> Iterator[Obj]:
        self.watched_from.append(resource_version)
        step = self.watches.pop(0) if self.watches else []
        if isinstance(step, Exception):
            raise step
        yield from step


def _collect(lister: ScriptedLister, backoff: Backoff, want: int) -> list[WatchItem]:
    async def run() -> list[WatchItem]:
        queue: asyncio.Queue[WatchItem] = asyncio.Queue()
        watcher = Watcher(lister, asyncio.get_running_loop(), queue, backoff)  # type: ignore[arg-type]
        watcher.start()
        got = [await asyncio.wait_for(queue.get(), 10) for _ in range(want)]
        watcher.stop()
        return got

    return asyncio.run(run())


class CountingBackoff(Backoff):
    def __init__(self) -> None:
        super().__init__(base=0.001, cap=0.002)
        self.delays = 0
        self.resets = 0

    def next_delay(self) -> float:
        self.delays += 1
        return super().next_delay()

    def reset(self) -> None:
        self.resets += 1
        super().reset()


def test_lists_then_watches_from_the_lists_version_then_relists_on_gone() -> None:
    lister = ScriptedLister(
        lists=[[_obj("a", "5")], [_obj("a", "9"), _obj("b", "10")]],
        watches=[
            [{"type": "MODIFIED", "object": _obj("a", "6")},
             {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "8"}}}],
            ApiException(status=410, reason="Gone"),
        ],
    )  # fmt: skip
    backoff = CountingBackoff()
    items = _collect(lister, backoff, 3)
    assert [(i.kind, [o["metadata"]["name"] for o in i.objects]) for i in items] == [
        ("list", ["a"]),
        ("MODIFIED", ["a"]),
        ("list", ["a", "b"]),  # 410: a fresh list, not a retry from a stale version
    ]
    # the first watch went on from the list's version; the second from the bookmark's
    assert lister.watched_from[:2] == ["100", "8"]
    assert backoff.delays == 0  # Gone is not a failure: no waiting


def test_other_errors_back_off_and_a_working_watch_resets() -> None:
    lister = ScriptedLister(
        lists=[[_obj("a", "5")], [_obj("a", "5")], [_obj("a", "5")]],
        watches=[ApiException(status=500, reason="boom"), ConnectionError("reset"), []],
    )
    backoff = CountingBackoff()
    items = _collect(lister, backoff, 3)
    assert [i.kind for i in items] == ["list", "list", "list"]
    assert backoff.delays == 2
