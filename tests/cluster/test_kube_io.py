"""The shared Kubernetes I/O layer (routevpn.kube) against the real API server.

What both processes rely on: the watcher's server-side label selector (an object that
stops matching goes away from the view), the guarded metadata patch (a stale view fails
with ConflictError instead of dropping someone's finalizer), two field managers' status
applies that don't overwrite each other, and Events about a tunnel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from routevpn.api import naming
from routevpn.kube.client import ConflictError, KubeClient, connect
from routevpn.kube.events import EventPoster
from routevpn.kube.watch import Watcher, WatchItem
from support.kube import wait_until
from support.operator import create_tunnel, get_tunnel, tunnel_body

pytestmark = pytest.mark.usefixtures("crd")


@pytest.fixture
def kio(kubeconfig: Path) -> Iterator[KubeClient]:
    kube = KubeClient(connect(str(kubeconfig)), "routevpn-test")
    yield kube
    kube.close()


def _labelled(kube: client.ApiClient, ns: str, name: str, node: str) -> None:
    body = tunnel_body(name, nodeName=node)
    body["metadata"]["labels"] = {naming.NODE_LABEL: node}
    create_tunnel(kube, ns, body)


def test_watcher_sees_only_its_selector_and_drops_what_stops_matching(
    kube: client.ApiClient, kio: KubeClient, namespace: str
) -> None:
    _labelled(kube, namespace, "mine", "node-w")
    _labelled(kube, namespace, "theirs", "node-v")

    async def scenario() -> list[WatchItem]:
        queue: asyncio.Queue[WatchItem] = asyncio.Queue()
        watcher = Watcher(
            kio.tunnels(f"{naming.NODE_LABEL}=node-w"), asyncio.get_running_loop(), queue
        )
        watcher.start()
        try:
            first = await asyncio.wait_for(queue.get(), 30)
            # relabel "mine" away: for this selector it is now gone
            await asyncio.to_thread(
                client.CustomObjectsApi(kube).patch_namespaced_custom_object,
                naming.GROUP, naming.VERSION, namespace, naming.PLURAL, "mine",
                {"metadata": {"labels": {naming.NODE_LABEL: "node-v"}}},
            )  # fmt: skip
            second = await asyncio.wait_for(queue.get(), 30)
            return [first, second]
        finally:
            watcher.stop()

    first, second = asyncio.run(scenario())
    assert first.kind == "list"
    assert [
        o["metadata"]["name"] for o in first.objects if o["metadata"]["namespace"] == namespace
    ] == ["mine"]
    assert second.kind == "DELETED"
    assert second.objects[0]["metadata"]["name"] == "mine"


def test_a_stale_metadata_patch_conflicts_and_a_fresh_one_lands(
    kube: client.ApiClient, kio: KubeClient, namespace: str
) -> None:
    create_tunnel(kube, namespace, tunnel_body("t1", nodeName="node-a"))
    seen = (get_tunnel(kube, namespace, "t1") or {})["metadata"]

    async def scenario() -> dict[str, Any] | None:
        # another writer adds its finalizer first
        await kio.patch_tunnel_metadata(seen, finalizers=["example.com/other"])
        with pytest.raises(ConflictError):
            await kio.patch_tunnel_metadata(seen, finalizers=[naming.AGENT_FINALIZER])
        fresh = (await kio.get_tunnel(namespace, "t1") or {})["metadata"]
        return await kio.patch_tunnel_metadata(
            fresh,
            finalizers=[*fresh["finalizers"], naming.AGENT_FINALIZER],
            labels={naming.NODE_LABEL: "node-a"},
        )

    got = asyncio.run(scenario())
    assert got is not None
    assert got["metadata"]["finalizers"] == ["example.com/other", naming.AGENT_FINALIZER]
    assert got["metadata"]["labels"] == {naming.NODE_LABEL: "node-a"}

    async def cleanup() -> None:
        meta = (await kio.get_tunnel(namespace, "t1") or {})["metadata"]
        await kio.patch_tunnel_metadata(meta, finalizers=[], labels={naming.NODE_LABEL: None})

    asyncio.run(cleanup())
    after = (get_tunnel(kube, namespace, "t1") or {})["metadata"]
    assert not after.get("finalizers") and not after.get("labels")


def test_two_field_managers_keep_their_own_status_fields(
    kube: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    create_tunnel(kube, namespace, tunnel_body("t2", nodeName="node-a"))
    operator = KubeClient(connect(str(kubeconfig)), "routevpn-operator")
    agent = KubeClient(connect(str(kubeconfig)), "routevpn-agent")
    cond = {"status": "True", "reason": "Placed", "message": "m",
            "lastTransitionTime": "2026-12-01T08:00:00Z"}  # fmt: skip
    try:
        asyncio.run(operator.apply_tunnel_status(
            namespace, "t2", {"node": "node-a", "conditions": [{"type": "Scheduled", **cond}]}
        ))  # fmt: skip
        got = asyncio.run(agent.apply_tunnel_status(
            namespace, "t2", {"conditions": [{"type": "Configured", **cond, "reason": "Applied"}]}
        ))  # fmt: skip
    finally:
        operator.close()
        agent.close()
    assert got is not None
    status = got["status"]
    assert status["node"] == "node-a"
    assert sorted(c["type"] for c in status["conditions"]) == ["Configured", "Scheduled"]


def test_events_reach_the_tunnels_namespace(
    kube: client.ApiClient, kio: KubeClient, namespace: str
) -> None:
    create_tunnel(kube, namespace, tunnel_body("t3", nodeName="node-a"))
    obj = get_tunnel(kube, namespace, "t3") or {}
    poster = EventPoster(kio.create_event, "routevpn-test", "here")
    asyncio.run(poster.post(obj, "Normal", "Placed", "placed on node node-a"))
    core = client.CoreV1Api(kube)

    def posted() -> list[Any]:
        return [
            e for e in core.list_namespaced_event(namespace).items
            if e.involved_object.name == "t3" and e.reason == "Placed"
        ]  # fmt: skip

    got = wait_until(posted, timeout=15, what="the Event")
    assert got[0].involved_object.uid == obj["metadata"]["uid"]
    assert got[0].reporting_component == "routevpn-test"
