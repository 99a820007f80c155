"""One Event builder for both processes: addressed to the tunnel, bounded, timestamped."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from routevpn.kube.events import EventPoster, event_body

TUNNEL = {
    "apiVersion": "routevpn.io/v1alpha1",
    "kind": "VpnTunnel",
    "metadata": {"namespace": "prod", "name": "site-b", "uid": "u-1", "resourceVersion": "7"},
}
NOW = datetime(2026, 12, 1, 8, 0, 0, 123456, tzinfo=UTC)


def test_body_names_the_tunnel_and_cuts_long_messages() -> None:
    body = event_body(
        TUNNEL, "Warning", "AuthenticationFailed", "x" * 5000,
        component="routevpn-agent", instance="node-a", now=NOW,
    )  # fmt: skip
    assert body["metadata"]["namespace"] == "prod"
    assert body["metadata"]["name"].startswith("site-b.")
    assert body["involvedObject"] == {
        "apiVersion": "routevpn.io/v1alpha1", "kind": "VpnTunnel", "name": "site-b",
        "namespace": "prod", "uid": "u-1", "resourceVersion": "7",
    }  # fmt: skip
    assert len(body["message"]) == 1024
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-12-01T08:00:00Z"
    assert body["reportingComponent"] == "routevpn-agent"
    assert body["reportingInstance"] == "node-a"


def test_poster_sends_to_the_tunnels_namespace() -> None:
    sent: list[tuple[str, Mapping[str, Any]]] = []

    async def create(namespace: str, body: Mapping[str, Any]) -> None:
        sent.append((namespace, body))

    poster = EventPoster(create, "routevpn-operator", "op-1", clock=lambda: NOW)
    asyncio.run(poster.post(TUNNEL, "Normal", "Placed", "placed on node-a"))
    assert [(ns, b["reason"], b["source"]) for ns, b in sent] == [
        ("prod", "Placed", {"component": "routevpn-operator", "host": "op-1"})
    ]
