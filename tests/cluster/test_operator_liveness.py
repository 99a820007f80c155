"""Deletion always completes: a Ready node without a live agent releases its tunnels.

The real operator against the real API server. "The agent" is played through the API:
its finalizer on the tunnel, and (on one node only) its liveness Lease renewed by a
thread here the way `routevpn agent` renews it.
"""
# ruff: noqa: F811  (pytest fixtures imported from the harness are test parameters)

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes import client

from routevpn.api import naming
from support.kube import NodeFactory, api_client, wait_until
from support.operator import (  # fixtures are imported to be used
    StartOperator,
    agent_finalizer,
    agent_lease,
    create_tunnel,
    delete_tunnel,
    events_for,
    get_tunnel,
    is_placed,
    psk_secret,
    routevpn_ns,  # noqa: F401
    start_operator,  # noqa: F401
    tunnel_body,
    tunnel_when,
)

#: The fake agent's Lease: short, renewed four times per duration (the agent's ratio).
LEASE_SECONDS = 2
RENEW_SECONDS = 0.5
ORPHAN_WAIT = 3.0


class Renewer:
    """A fake agent's liveness loop: renews `node`'s Lease until stopped; counts renewals."""

    def __init__(self, kubeconfig: Path, rns: str, node: str) -> None:
        self._api = api_client(kubeconfig)  # its own connection pool: another thread
        self._rns, self._node = rns, node
        self._stop = threading.Event()
        self.renewals = 0
        self._thread = threading.Thread(target=self._run, name=f"lease-{node}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            agent_lease(self._api, self._rns, self._node, duration=LEASE_SECONDS)
            self.renewals += 1
            self._stop.wait(RENEW_SECONDS)  # the renewal period, as the agent's loop

    @contextmanager
    def running(self) -> Iterator[Renewer]:
        self._thread.start()
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _agent_gone(kube: client.ApiClient, ns: str, name: str) -> list[str]:
    return [m for t, r, m in events_for(kube, ns, name) if (t, r) == ("Warning", "AgentGone")]


def test_a_tunnel_on_a_node_without_a_live_agent_is_released_after_the_wait(
    kube: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    routevpn_ns: str,
    make_node: NodeFactory,
    start_operator: StartOperator,
) -> None:
    dead, live = f"{namespace}-dead", f"{namespace}-live"
    make_node(dead, {"zone": dead}, addresses=["192.0.2.20"])  # Ready, but no agent runs
    make_node(live, {"zone": live}, addresses=["192.0.2.21"])
    psk_secret(kube, namespace)
    op = start_operator(orphan_wait=ORPHAN_WAIT)
    for name, zone in (("t-dead", dead), ("t-live", live)):
        create_tunnel(kube, namespace, tunnel_body(name, {"zone": zone}))
        wait_until(tunnel_when(kube, namespace, name, is_placed), what=f"{name} placed")
        agent_finalizer(kube, namespace, name, True)  # an agent configured it once

    with Renewer(kubeconfig, routevpn_ns, live).running() as renewer:
        wait_until(lambda: renewer.renewals >= 1, what="the live node's first renewal")
        delete_tunnel(kube, namespace, "t-dead")
        delete_tunnel(kube, namespace, "t-live")
        try:
            wait_until(
                lambda: get_tunnel(kube, namespace, "t-dead") is None,
                timeout=60,
                what="t-dead released although its agent never answers",
            )
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- operator log:\n{op.log_tail(60)}") from None
        (message,) = wait_until(lambda: _agent_gone(kube, namespace, "t-dead"), what="AgentGone")
        for what in (dead, naming.conn_name(namespace, "t-dead"),
                     naming.link_alias(namespace, "t-dead"), "vti"):  # fmt: skip
            assert what in message, (what, message)

        # The control: deleted at the same moment, on a node whose agent renews. Past the
        # point where it would have gone too (its Lease's duration and the orphan wait,
        # counted in renewals), it is still held by its agent's finalizer.
        after = renewer.renewals
        enough = after + int((LEASE_SECONDS + ORPHAN_WAIT) / RENEW_SECONDS) + 2
        wait_until(lambda: renewer.renewals >= enough, timeout=60, what="renewals go on")
        held = get_tunnel(kube, namespace, "t-live")
        assert held is not None and naming.AGENT_FINALIZER in held["metadata"]["finalizers"]
        assert not _agent_gone(kube, namespace, "t-live")

    # Its agent stops renewing (as after `helm uninstall`): now it is released as well.
    wait_until(
        lambda: get_tunnel(kube, namespace, "t-live") is None,
        timeout=60,
        what="t-live released once its agent stopped renewing",
    )
    wait_until(lambda: _agent_gone(kube, namespace, "t-live"), what="AgentGone for t-live")
    assert op.metric("routevpn_operator_reconcile_errors_total") == 0
