"""The agent finds its tunnel's delivered Secret for every legal name length.

A tunnel name of 253 characters in a namespace of 63: the operator's delivered Secret
(built by `bundle.delivered_body`, its name by `naming.secret_name`) is written to the
real API server, and the agent's own watch (server-side label selector on its node) and
lookup (`agent.runner._owner`, the annotation) find it under that tunnel.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from routevpn.agent.runner import _owner
from routevpn.api import naming
from routevpn.controller import bundle
from routevpn.kube.client import KubeClient, connect
from routevpn.kube.watch import Watcher, WatchItem


@pytest.fixture
def kio(kubeconfig: Path) -> Iterator[KubeClient]:
    k = KubeClient(connect(str(kubeconfig)), "test")
    try:
        yield k
    finally:
        k.close()


def test_agent_finds_the_secret_of_a_253_char_tunnel_in_a_63_char_namespace(
    kube: client.ApiClient, kio: KubeClient, namespace: str
) -> None:
    tenant_ns = f"t{secrets.token_hex(4)}-" + "n" * 53  # 63 characters
    name = "t" * 200 + "." + "u" * 52  # 253 characters, with a dot
    assert (len(tenant_ns), len(name)) == (63, 253)
    node = "node-long"
    made = bundle.Bundle({"psk": "cHNr"}, bundle.content_hash({"psk": "cHNr"}))
    body = bundle.delivered_body(tenant_ns, name, namespace, node, made)
    assert body["metadata"]["name"] == naming.secret_name(tenant_ns, name)  # type: ignore[index]
    core = client.CoreV1Api(kube)
    # A second tunnel whose old-style name would have collided, and another node's.
    other = bundle.delivered_body(tenant_ns, "t", namespace, "node-other", made)
    for b in (body, other):
        core.create_namespaced_secret(namespace, b)  # type: ignore[arg-type]

    async def first_list() -> WatchItem:
        queue: asyncio.Queue[WatchItem] = asyncio.Queue()
        watcher = Watcher(
            kio.secrets(namespace, f"{naming.NODE_LABEL}={node}"), asyncio.get_running_loop(),
            queue,
        )  # fmt: skip
        watcher.start()
        try:
            return await asyncio.wait_for(queue.get(), 30)
        finally:
            watcher.stop()

    item = asyncio.run(first_list())
    assert item.kind == "list"
    owners = [_owner(obj) for obj in item.objects]
    assert owners == [(tenant_ns, name)]
    (got,) = item.objects
    assert got["data"] == {"psk": "cHNr"}
