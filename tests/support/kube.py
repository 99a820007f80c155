"""Kubernetes helpers for the ``cluster`` tier: clients, polling, CRDs, simulated nodes.

There is no kubelet in the test control plane: a "node" is a ``Node`` object whose
``Ready`` condition the test sets through the status subresource, and its agent runs
as a process. The controller-manager's node-lifecycle controller runs with grace
periods longer than any test (see hack/local-cluster.sh): a node stays Ready or
NotReady exactly as a test left it, and the controller keeps its
``node.kubernetes.io/not-ready`` taints in step, as in a real cluster.

``api_client(kubeconfig) -> ApiClient``
``wait_until(check, timeout=…, what=…) -> T``   poll with a deadline, never a bare sleep
``apply_crd(kubectl, yaml_text) -> list[str]``  server-side apply, wait for Established
``create_node(api, name, labels, addresses=…)`` ``set_node_ready(api, name, ready)``
``delete_node(api, name)``  ``node_ready(api, name) -> bool | None``
``create_namespace(api, prefix) -> str``  ``delete_namespace(api, name)``
``NodeFactory(api)``  what the ``make_node`` fixture gives: call, ``.ready``, ``.delete``
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client import ApiException

from support.cluster import Kubectl
from support.secretscan import REGISTRY, sweep_namespace

T = TypeVar("T")

# Every object the tests create carries this label, so a person can find (and a test
# of a shared cluster can clean) what the test suite left behind.
TEST_LABEL = "routevpn.io/test"


def api_client(kubeconfig: Path) -> client.ApiClient:
    """A client configured from ``kubeconfig`` (its own Configuration, no globals)."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``check`` until it returns something truthy; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not true after {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)


def apply_crd(kubectl: Kubectl, yaml_text: str, timeout: float = 60.0) -> list[str]:
    """Apply CRD manifests server-side and wait until each is Established; their names."""
    names = [
        str(doc["metadata"]["name"])
        for doc in yaml.safe_load_all(yaml_text)
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]
    if not names:
        raise ValueError("no CustomResourceDefinition in the given YAML")
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=routevpn-tests",
        "-f",
        "-",
        input=yaml_text,
    )
    for name in names:
        kubectl(
            "wait",
            "--for=condition=Established",
            f"customresourcedefinition/{name}",
            f"--timeout={int(timeout)}s",
            timeout=timeout + 10,
        )
    return names


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_node(
    api: client.ApiClient,
    name: str,
    labels: Mapping[str, str] | None = None,
    *,
    ready: bool = True,
    addresses: Sequence[str] = (),
) -> client.V1Node:
    """Create a Node (as a kubelet would register) and set its Ready condition.

    ``addresses`` become ``InternalIP`` addresses in its status (documentation ranges
    only, as everywhere in this project). Returns the Node as the server has it.
    """
    core = client.CoreV1Api(api)
    all_labels = {"kubernetes.io/hostname": name, TEST_LABEL: "true", **(labels or {})}
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=all_labels)))
    return set_node_ready(api, name, ready, addresses=addresses)


def set_node_ready(
    api: client.ApiClient,
    name: str,
    ready: bool,
    *,
    addresses: Sequence[str] = (),
    reason: str | None = None,
    message: str | None = None,
) -> client.V1Node:
    """Set the Node's Ready condition (True/False) through the status subresource."""
    now = _now()
    cond = {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": reason or ("KubeletReady" if ready else "KubeletNotReady"),
        "message": message or ("simulated node is ready" if ready else "simulated node is down"),
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    status: dict[str, Any] = {"conditions": [cond]}
    if addresses:
        status["addresses"] = [{"type": "InternalIP", "address": a} for a in addresses]
    # Strategic merge keyed by condition type: other conditions stay as they are.
    return client.CoreV1Api(api).patch_node_status(
        name,
        {"status": status},
        _content_type="application/strategic-merge-patch+json",
    )


def node_ready(api: client.ApiClient, name: str) -> bool | None:
    """The Node's Ready condition as a bool; None when absent or Unknown."""
    status = client.CoreV1Api(api).read_node_status(name).status
    for cond in (status.conditions if status else None) or []:
        if cond.type == "Ready":
            return {"True": True, "False": False}.get(cond.status)
    return None


def delete_node(api: client.ApiClient, name: str) -> None:
    """Delete the Node if it exists."""
    try:
        client.CoreV1Api(api).delete_node(name)
    except ApiException as e:
        if e.status != 404:
            raise


def namespace_name(prefix: str) -> str:
    """A valid, unique namespace name from a free-form prefix (e.g. a test's name)."""
    base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:48].rstrip("-") or "t"
    return f"{base}-{secrets.token_hex(3)}"


def create_namespace(api: client.ApiClient, prefix: str) -> str:
    """Create a uniquely named namespace; its name."""
    name = namespace_name(prefix)
    meta = client.V1ObjectMeta(name=name, labels={TEST_LABEL: "true"})
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=meta))
    return name


def delete_namespace(api: client.ApiClient, name: str, wait: float | None = None) -> None:
    """Delete a namespace (its contents go with it); with ``wait``, until it is gone.

    Its Events and VpnTunnels are kept first for the end-of-session secret scan."""
    core = client.CoreV1Api(api)
    try:
        sweep_namespace(api, REGISTRY, name)
    except Exception as e:  # the namespace goes all the same (the API down in a fault test)
        REGISTRY.gaps.append(f"namespace {name}: {type(e).__name__}")
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise
        return
    if wait:

        def gone() -> bool:
            try:
                core.read_namespace(name)
            except ApiException as e:
                if e.status == 404:
                    return True
                raise
            return False

        wait_until(gone, timeout=wait, what=f"namespace {name} deleted")


class NodeFactory:
    """Creates simulated Nodes and deletes them at teardown."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self.created: list[str] = []

    def __call__(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        ready: bool = True,
        addresses: Sequence[str] = (),
    ) -> client.V1Node:
        """Create a Node with ``labels`` and its Ready condition set; the Node."""
        self.created.append(name)
        return create_node(self._api, name, labels, ready=ready, addresses=addresses)

    def ready(self, name: str, ready: bool = True, **kw: Any) -> client.V1Node:
        """Set the Node's Ready condition (False: NotReady)."""
        return set_node_ready(self._api, name, ready, **kw)

    def delete(self, name: str) -> None:
        """Delete the Node now."""
        delete_node(self._api, name)

    def cleanup(self) -> None:
        """Delete every Node this factory created."""
        for name in self.created:
            delete_node(self._api, name)
