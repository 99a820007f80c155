"""Run `routevpn operator` as a real process and drive tunnels through the API.

Shared by the operator's cluster tests (tests/cluster/test_operator_*.py, whose fixtures
wrap these) and the benchmarks. Nothing here is a mock: the operator is a subprocess of
this interpreter against a real apiserver, and "the agent" is played through the API the
way the real one writes (server-side apply with fieldManager routevpn-agent, its
finalizer added and removed under a resourceVersion guard).

``Operator(kubeconfig, namespace, log, not_ready_grace=…, orphan_wait=…)``
    ``.pid .port .healthy() .metric(name) .metric_by_label(name, label) .metrics() .active()``
    ``.peak_rss_mib() .stop() .log_tail()``
``read_lease(api, namespace)``  the operator's Lease (who leads), or None
``psk_secret(api, ns, name, value)``  ``tunnel_body(name, selector, **spec)``
``create_tunnel`` ``get_tunnel`` ``tunnel_when(api, ns, name, pred)``
``list_tunnels`` ``delete_tunnel`` ``release_tunnels(api, ns)``
``condition(obj, type)`` ``label(obj)`` ``is_placed(obj)``
``agent_apply(api, ns, name, status)`` ``agent_finalizer(api, ns, name, present)``
``events_for(api, ns, name)`` ``agent_lease(api, rns, node, duration)`` (one renewal)

pytest fixtures (import them into a test module, they are its parameters):
``routevpn_ns``, ``start_operator`` -> ``StartOperator``
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from routevpn.api import naming
from support.cluster import free_port
from support.kube import create_namespace, delete_namespace, wait_until
from support.secretscan import REGISTRY

GROUP, VERSION, PLURAL = "routevpn.io", "v1alpha1", "vpntunnels"
NODE_LABEL = "routevpn.io/node"
#: The operator's Lease (its --lease-name default), in the operator's own namespace.
LEASE_NAME = "routevpn-operator"
#: The PSK every helper-made Secret carries unless told otherwise (base64 of "secret-1").
DEFAULT_PSK = "c2VjcmV0LTE="


def _custom(api: client.ApiClient) -> Any:
    # The client's generated annotations say `object` for every custom-object body.
    return client.CustomObjectsApi(api)


def _core(api: client.ApiClient) -> Any:
    return client.CoreV1Api(api)


class Operator:
    """One `routevpn operator` process; stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log: Path,
        *,
        not_ready_grace: float = 1.0,
        orphan_wait: float = 2.0,
        secret_reread: float = 1.0,
        extra_args: Sequence[str] = (),
        log_level: str = "info",
        without_policy: str = "allow",
        pod_name: str = "operator",
    ) -> None:
        self.port = free_port()
        self.log = log
        #: The Lease names its holder "<pod_name>_<random>", as in a pod.
        self.pod_name = pod_name
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "ROUTEVPN_LOG_LEVEL": log_level,
            "POD_NAME": pod_name,
        }
        argv = [
            sys.executable,
            "-m",
            "routevpn",
            "operator",
            "--namespace",
            namespace,
            "--http-port",
            str(self.port),
            "--http-host",
            "127.0.0.1",
            "--orphan-wait",
            str(orphan_wait),
            "--not-ready-grace",
            str(not_ready_grace),
            # Rotation is followed by re-reading referenced Secrets: fast in tests.
            "--secret-reread",
            str(secret_reread),
            # The tests of placement, allocation and lifecycle run single-tenant; the
            # tenancy tests (test_operator_policy.py) run with the product's default, deny.
            "--without-policy",
            without_policy,
            *extra_args,
        ]
        self._out = log.open("ab")
        REGISTRY.add_log(log)  # scanned for secrets at the end of the session
        self.proc = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        """The operator's process id (it is this interpreter's child, not a wrapper)."""
        return self.proc.pid

    def metrics(self) -> str:
        """The /metrics text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
        return text

    def metric(self, name: str) -> float:
        """Sum of a metric's samples (all label values) from /metrics."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{", 1)[0] == name:
                total += float(value)
        return total

    def metric_by_label(self, name: str, label: str) -> dict[str, float]:
        """A metric's samples by the value of one label, e.g. writes by `kind`."""
        out: dict[str, float] = {}
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, labels = series.partition("{")
            if metric != name:
                continue
            for pair in labels.rstrip("}").split(","):
                key, _, quoted = pair.partition("=")
                if key == label:
                    out[quoted.strip('"')] = out.get(quoted.strip('"'), 0.0) + float(value)
        return out

    def holds(self, lease: client.V1Lease | None) -> bool:
        """Does `lease` name this process (by its pod name) as its holder?"""
        holder = (lease.spec.holder_identity if lease and lease.spec else None) or ""
        return holder.startswith(f"{self.pod_name}_")

    def active(self) -> bool:
        """Does this replica hold the Lease and act? False when it does not answer."""
        try:
            return self.metric("routevpn_operator_leader") == 1
        except OSError:
            return False

    def healthy(self) -> bool:
        """/healthz answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def peak_rss_mib(self) -> float:
        """Peak resident set size so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmHWM for pid {self.pid}")

    def stop(self) -> None:
        """Keep its /metrics for the secret scan; SIGTERM, then SIGKILL after 20 s; close
        the log."""
        if self.proc.poll() is None:
            # not answering (stopped with SIGSTOP, say): nothing to keep
            with contextlib.suppress(OSError):
                REGISTRY.add_text(f"operator {self.pod_name} /metrics", self.metrics())
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the operator's log, for failure messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def read_lease(api: client.ApiClient, namespace: str) -> client.V1Lease | None:
    """The operator's Lease in `namespace` (holder, transitions), or None."""
    try:
        return client.CoordinationV1Api(api).read_namespaced_lease(LEASE_NAME, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def psk_secret(api: client.ApiClient, ns: str, name: str = "psk", value: str = DEFAULT_PSK) -> None:
    """Create a PSK Secret (key `psk`, base64 `value`, the IKE opt-in label) in `ns`;
    the PSK is registered for the end-of-session secret scan."""
    REGISTRY.add_psk(base64.b64decode(value), f"{ns}/{name}")
    meta = {"name": name, "labels": {"routevpn.io/usage": "ike"}}
    _core(api).create_namespaced_secret(ns, {"metadata": meta, "data": {"psk": value}})


def tunnel_body(name: str, selector: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A minimal PSK VpnTunnel; nodeSelector `selector` unless `nodeName` is given."""
    body: dict[str, Any] = {
        "remote": {"address": "198.51.100.1"},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "psk"}}},
    }
    if "nodeName" not in spec:
        body["nodeSelector"] = selector or {"routevpn.io/gateway": "true"}
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VpnTunnel",
        "metadata": {"name": name},
        "spec": body,
    }


def create_tunnel(api: client.ApiClient, ns: str, body: dict[str, Any]) -> None:
    """Create a VpnTunnel in `ns`."""
    _custom(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def get_tunnel(api: client.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    """The VpnTunnel, or None when it does not exist."""
    try:
        got: dict[str, Any] = _custom(api).get_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return got


def tunnel_when(
    api: client.ApiClient, ns: str, name: str, pred: Callable[[dict[str, Any]], object]
) -> Callable[[], dict[str, Any] | None]:
    """A `wait_until` check: the tunnel once `pred(tunnel)` holds, else None."""

    def check() -> dict[str, Any] | None:
        obj = get_tunnel(api, ns, name)
        return obj if obj is not None and pred(obj) else None

    return check


def list_tunnels(api: client.ApiClient, ns: str) -> list[dict[str, Any]]:
    """Every VpnTunnel in `ns`."""
    items: list[dict[str, Any]] = _custom(api).list_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL
    )["items"]
    return items


def delete_tunnel(api: client.ApiClient, ns: str, name: str) -> None:
    """Delete a VpnTunnel (its finalizers decide when it is gone)."""
    _custom(api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    """The condition of type `ctype` ({} when absent)."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def label(obj: dict[str, Any] | None) -> str | None:
    """The routevpn.io/node label (the node whose agent acts)."""
    return (((obj or {}).get("metadata") or {}).get("labels") or {}).get(NODE_LABEL)


def is_placed(obj: dict[str, Any] | None) -> bool:
    """Placed and allocated: status.node, status.interface and the label, all agreeing."""
    st = (obj or {}).get("status") or {}
    node = st.get("node")
    return bool(node and st.get("interface") and label(obj) == node)


def agent_apply(api: client.ApiClient, ns: str, name: str, status: dict[str, Any]) -> None:
    """Write status as the agent does: SSA on /status with fieldManager routevpn-agent."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VpnTunnel",
        "metadata": {"name": name, "namespace": ns},
        "status": status,
    }
    _custom(api).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        name,
        body,
        field_manager="routevpn-agent",
        force=True,
        _content_type="application/apply-patch+yaml",
    )


def agent_finalizer(api: client.ApiClient, ns: str, name: str, present: bool) -> None:
    """Add or remove routevpn.io/agent (JSON merge patch guarded by resourceVersion)."""
    custom = _custom(api)
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    fins = [f for f in obj["metadata"].get("finalizers") or [] if f != "routevpn.io/agent"]
    if present:
        fins.append("routevpn.io/agent")
    _merge_patch(
        api,
        ns,
        name,
        {"metadata": {"finalizers": fins, "resourceVersion": obj["metadata"]["resourceVersion"]}},
    )


def _merge_patch(api: client.ApiClient, ns: str, name: str, body: dict[str, Any]) -> None:
    """A JSON merge patch of VpnTunnel `name` in `ns`."""
    _custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, body, _content_type="application/merge-patch+json"
    )


def events_for(api: client.ApiClient, ns: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about object `name` in `ns`."""
    evs = _core(api).list_namespaced_event(ns).items
    return [
        (str(e.type), str(e.reason), str(e.message)) for e in evs if e.involved_object.name == name
    ]


def agent_lease(api: client.ApiClient, rns: str, node: str, duration: int = 3600) -> None:
    """Renew (create the first time) node `node`'s agent liveness Lease in `rns`, as the
    agent does: the operator then counts that node's agent as live for `duration` seconds
    from when it sees this renewal."""
    coord: Any = client.CoordinationV1Api(api)
    name = naming.agent_lease_name(node)
    spec = {
        "holderIdentity": node,
        "leaseDurationSeconds": duration,
        "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    labels = {naming.AGENT_LEASE_LABEL: naming.AGENT_LEASE_VALUE}
    try:
        coord.create_namespaced_lease(
            rns, {"metadata": {"name": name, "labels": labels}, "spec": spec}
        )
    except ApiException as e:
        if e.status != 409:
            raise
        coord.patch_namespaced_lease(name, rns, {"spec": spec})


# --- pytest fixtures ---------------------------------------------------------------------

#: `start_operator(**kw)`: keyword arguments are Operator's (not_ready_grace, ...).
StartOperator = Callable[..., Operator]


@pytest.fixture
def routevpn_ns(kube: client.ApiClient) -> Iterator[str]:
    """The operator's own namespace (delivered Secrets go here)."""
    name = create_namespace(kube, "routevpn")
    try:
        yield name
    finally:
        delete_namespace(kube, name)


def release_tunnels(api: client.ApiClient, ns: str) -> None:
    """Delete every VpnTunnel in `ns` and drop its finalizers (no operator or agent is left
    to): otherwise they wait, Terminating, for the next test's operator (cluster-wide),
    which then spends its first minute releasing them instead of doing its own test."""
    custom = _custom(api)
    for obj in list_tunnels(api, ns):
        name = obj["metadata"]["name"]
        try:
            _merge_patch(api, ns, name, {"metadata": {"finalizers": None}})
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        except ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture
def start_operator(
    kube: client.ApiClient,
    namespace: str,
    kubeconfig: Path,
    routevpn_ns: str,
    crd: list[str],
    tmp_path: Path,
) -> Iterator[StartOperator]:
    """`start_operator(**kw)` -> a running Operator; they elect their leader through the
    Lease in this test's own routevpn namespace.

    Returns once the election has settled: exactly one operator started so far leads (the
    first one: a later one finds the Lease held), so a test never races a replica's first
    moments. Every operator is stopped by PID at teardown, whatever the test did; then the
    test's tunnels (in `namespace`) are deleted without waiting for anyone.
    """
    started: list[Operator] = []

    def settled() -> bool:
        return sum(op.active() for op in started) == 1

    def start(**kw: Any) -> Operator:
        n = len(started)
        op = Operator(
            kubeconfig, routevpn_ns, tmp_path / f"operator-{n}.log", pod_name=f"operator-{n}", **kw
        )
        started.append(op)
        try:
            wait_until(op.healthy, timeout=60, what="operator /healthz")
            wait_until(settled, timeout=60, what="one operator leads")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- operator log:\n{op.log_tail()}") from None
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()
        release_tunnels(kube, namespace)
