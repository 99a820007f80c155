"""core/v1 Events about a VpnTunnel: the one builder and poster both processes use.

An Event never carries secret material: messages are routevpn's own sentences, cut to
the 1 KiB the API server's clients expect to show.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from routevpn.api import naming
from routevpn.api.timefmt import k8s_time
from routevpn.kube.client import Obj, key_of

NORMAL = "Normal"
WARNING = "Warning"
MESSAGE_MAX = 1024


class EventSink(Protocol):
    """Where Events go (`EventPoster`; a list in unit tests)."""

    async def post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record one Event about tunnel `obj`."""
        ...


class CreateEvent(Protocol):
    """The one API call an `EventPoster` needs (`KubeClient.create_event`)."""

    async def __call__(self, namespace: str, body: Mapping[str, Any]) -> None: ...


def event_body(
    obj: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
    *,
    component: str,
    instance: str,
    now: datetime,
) -> Obj:
    """A core/v1 Event about tunnel `obj` in its namespace."""
    ns, name = key_of(obj)
    meta = obj.get("metadata") or {}
    stamp = k8s_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # a random suffix: Events of one tunnel are many and none is updated later
        "metadata": {"name": f"{name[:230]}.{secrets.token_hex(8)}", "namespace": ns},
        "involvedObject": {
            "apiVersion": naming.API_VERSION,
            "kind": naming.KIND,
            "name": name,
            "namespace": ns,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MESSAGE_MAX],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": component, "host": instance},
        "reportingComponent": component,
        "reportingInstance": instance,
    }


class EventPoster:
    """Posts Events as `component` (routevpn-operator, routevpn-agent) from `instance`."""

    def __init__(
        self,
        create: CreateEvent,
        component: str,
        instance: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._create = create
        self.component = component
        self.instance = instance
        self._clock = clock

    async def post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record one Event about tunnel `obj`."""
        body = event_body(
            obj, type_, reason, message,
            component=self.component, instance=self.instance, now=self._clock(),
        )  # fmt: skip
        await self._create(key_of(obj)[0], body)
