"""Every allocation the API server ever showed for a set of VpnTunnels, from a watch.

``AllocationWatch(api, label_selector)`` is a context manager: a thread watches the
VpnTunnels (all namespaces) that carry the label and records, per tunnel
("namespace/name"), each distinct allocation its status showed — ``Allocation(node, kind,
number, name)`` — with the monotonic time it first appeared, plus its spec's inside
addresses. A poll between two reads would miss a value that lasted a moment; the watch
sees every write (reconnecting from the last resourceVersion when the server ends it).

    with AllocationWatch(kube, "run=abc") as seen:
        ...                    # create tunnels, kill the operator, ...
        seen.count()           # tunnels allocated so far
    seen.history              # {"ns/name": [(t, Allocation), ...]}
    seen.duplicates()         # [(node, what, value, [refs])]: handed out twice on a node
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kubernetes import client, watch

GROUP, VERSION, PLURAL = "routevpn.io", "v1alpha1", "vpntunnels"


@dataclass(frozen=True)
class Allocation:
    """What a tunnel's status says it was given on its node."""

    node: str
    kind: str
    number: int
    name: str


def allocation_of(obj: dict[str, Any]) -> Allocation | None:
    """The tunnel's allocation from its status, or None while it has none."""
    st = obj.get("status") or {}
    iface = st.get("interface") or {}
    number = iface.get("key") if iface.get("key") is not None else iface.get("ifId")
    if not st.get("node") or not iface.get("name") or number is None:
        return None
    return Allocation(str(st["node"]), str(iface.get("type") or "vti"), int(number), iface["name"])


class AllocationWatch:
    """Records every allocation of the VpnTunnels selected by a label (see module doc)."""

    def __init__(self, api: client.ApiClient, label_selector: str) -> None:
        self._custom: Any = client.CustomObjectsApi(api)
        self._selector = label_selector
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.history: dict[str, list[tuple[float, Allocation]]] = defaultdict(list)
        self.addresses: dict[str, frozenset[str]] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="allocation-watch", daemon=True)

    def __enter__(self) -> AllocationWatch:
        listed = self._custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector=self._selector
        )
        for obj in listed["items"]:
            self._record(obj)
        self._rv = str(listed["metadata"]["resourceVersion"])
        self._thread.start()
        return self

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self._custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    label_selector=self._selector,
                    resource_version=self._rv,
                    timeout_seconds=2,
                )
                for event in stream:
                    obj = event["object"]
                    self._rv = str(obj["metadata"]["resourceVersion"])
                    self._record(obj)
        except BaseException as e:  # reported by check(), in the test's thread
            self.error = e

    def _record(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        spec_iface = (obj.get("spec") or {}).get("interface") or {}
        got = allocation_of(obj)
        with self._lock:
            self.addresses[ref] = frozenset(
                a.split("/", 1)[0] for a in spec_iface.get("addresses") or []
            )
            seen = self.history[ref]
            if got is not None and got not in {a for _, a in seen}:
                seen.append((time.monotonic(), got))

    def check(self) -> None:
        """Raise what stopped the watch, if anything did."""
        if self.error is not None:
            raise RuntimeError(f"the allocation watch failed: {self.error!r}") from self.error

    def count(self) -> int:
        """Tunnels that have been allocated (at least once) so far."""
        self.check()
        with self._lock:
            return sum(1 for seen in self.history.values() if seen)

    def latest(self) -> dict[str, Allocation]:
        """Each allocated tunnel's last allocation."""
        with self._lock:
            return {ref: seen[-1][1] for ref, seen in self.history.items() if seen}

    def duplicates(self) -> list[tuple[str, str, str, list[str]]]:
        """(node, what, value, tunnels) for every value more than one tunnel was given on
        one node: the key/if_id (one number space), the name, an inside address."""
        claims: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        with self._lock:
            for ref, seen in self.history.items():
                for _, a in seen:
                    claims[(a.node, "number", str(a.number))].add(ref)
                    claims[(a.node, "name", a.name)].add(ref)
                    for ip in self.addresses.get(ref, frozenset()):
                        claims[(a.node, "address", ip)].add(ref)
        return [(n, w, v, sorted(refs)) for (n, w, v), refs in claims.items() if len(refs) > 1]
