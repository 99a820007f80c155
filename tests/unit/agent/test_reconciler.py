"""Reconcile decisions over the data plane's FakeDriver and an in-memory API.

The API stand-in keeps objects as the server would (finalizers, resourceVersion bumps,
the agent's status fields replaced as server-side apply does for one field manager);
what is proved here is the agent's decision logic. The real API server and charon are
proved in tests/cluster/test_agent_node.py.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
from collections.abc import Mapping
from typing import Any

from routevpn.agent.budget import WriteBudget
from routevpn.agent.desired import DeliveredMaterial, build_plan
from routevpn.agent.metrics import Metrics
from routevpn.agent.reconciler import AgentReconciler
from routevpn.agent.settings import AgentSettings
from routevpn.agent.traffic import TrafficPolicy
from routevpn.api import naming
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane import safety
from routevpn.dataplane.driver import ApplyResult
from routevpn.dataplane.errors import CharonUnavailableError
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts
from routevpn.dataplane.plan import TunnelPlan
from routevpn.kube.client import ConflictError, Obj, metadata_patch
from support.fakedriver import FakeDriver

NODE = "node-a"
KEY = ("prod", "site-b")
CONN = "routevpn.prod.site-b"
UNDERLAY = safety.HostRoute(ipaddress.ip_network("2001:db8:0:2::/64"), "eth0")


class MemoryApi:
    """Objects by key; counts writes like the real client's metrics do.

    Metadata patches go through the real `metadata_patch` and a small JSON-patch
    interpreter, so a stale view fails its `test` as it would on the API server."""

    def __init__(self, objects: dict[tuple[str, str], Obj]) -> None:
        self.objects = objects
        self.writes: list[str] = []
        self.events: list[tuple[str, str]] = []

    def _bump(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", "1")) + 1)
        return copy.deepcopy(obj)

    def get(self, ns: str, name: str) -> Obj | None:
        obj = self.objects.get((ns, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def get_tunnel(self, namespace: str, name: str) -> Obj | None:
        return self.get(namespace, name)

    async def patch_tunnel_metadata(
        self,
        seen: Mapping[str, Any],
        *,
        finalizers: list[str] | None = None,
        labels: Mapping[str, str | None] | None = None,
    ) -> Obj | None:
        self.writes.append("finalizer")
        stored = self.objects.get((seen["namespace"], seen["name"]))
        if stored is None:
            return None
        meta = stored["metadata"]
        for op in metadata_patch(seen, finalizers=finalizers, labels=labels):
            field = op["path"].rsplit("/", 1)[1]
            if op["op"] == "test" and meta.get(field) != op["value"]:
                raise ConflictError(f"test of {op['path']} failed")
            if op["op"] == "add":
                meta[field] = copy.deepcopy(op["value"])
        return self._bump(stored)

    async def apply_tunnel_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Obj | None:
        self.writes.append("status")
        stored = self.objects[(namespace, name)]
        current = stored.setdefault("status", {})
        mine = {"Configured", "IkeEstablished", "ChildSaInstalled", "RoutesInstalled",
                "TrafficFlowing", "BgpEstablished"}  # fmt: skip
        kept = [c for c in current.get("conditions", []) if c["type"] not in mine]
        current["conditions"] = kept + copy.deepcopy(status["conditions"])
        for key in ("routes", "ike", "child", "bgp"):
            current.pop(key, None)
            if key in status:
                current[key] = copy.deepcopy(status[key])
        return self._bump(stored)

    async def post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.writes.append("event")
        self.events.append((type_, reason))


def tunnel(**status: Any) -> Obj:
    return {
        "apiVersion": "routevpn.io/v1alpha1",
        "kind": "VpnTunnel",
        "metadata": {
            "name": "site-b",
            "namespace": "prod",
            "generation": 2,
            "resourceVersion": "10",
            "labels": {naming.NODE_LABEL: NODE},
        },
        "spec": {
            "nodeName": NODE,
            "local": {"address": "2001:db8:0:1::1"},
            "remote": {"address": "2001:db8:0:2::1"},
            "auth": {"type": "psk", "psk": {"secretRef": {"name": "site-b-psk"}}},
            "interface": {"type": "vti", "name": "vti1", "addresses": ["2001:db8:100::/127"]},
            "routes": [{"to": "::/0", "via": "2001:db8:100::1"}],
        },
        "status": {
            "node": NODE,
            "interface": {"name": "vti1", "type": "vti", "key": 4096},
            **status,
        },
    }


def secret() -> Obj:
    return {
        "metadata": {
            "name": naming.secret_name(*KEY),
            "resourceVersion": "3",
            "labels": {"routevpn.io/tunnel-namespace": "prod", "routevpn.io/tunnel-name": "site-b"},
        },
        "data": {"psk": base64.b64encode(b"p" * 40).decode()},
    }


def setup(
    obj: Obj, driver: FakeDriver | None = None
) -> tuple[AgentReconciler, MemoryApi, FakeDriver]:
    api = MemoryApi({KEY: obj})
    # the node reaches the peer through its underlay, so ::/0 into the tunnel is no loop
    drv = driver or FakeDriver(host_routes=[UNDERLAY])
    settings = AgentSettings(node=NODE, namespace="routevpn")
    rec = AgentReconciler(settings, api, api, drv, Metrics(NODE), clock=lambda: 1_800_000_000.0)
    rec.state.tunnels[KEY] = copy.deepcopy(obj)
    rec.state.secrets[KEY] = secret()
    return rec, api, drv


def run(rec: AgentReconciler, api: MemoryApi) -> None:
    asyncio.run(rec.run_pass([KEY]))
    # the watch would deliver the server's object; do what it does
    stored = api.get(*KEY)
    if stored is not None:
        rec.state.tunnels[KEY] = stored
    else:
        rec.state.tunnels.pop(KEY, None)


def conds(api: MemoryApi) -> dict[str, tuple[str, str]]:
    status = api.objects[KEY].get("status") or {}
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}


def test_configure_adds_finalizer_applies_and_reports_once() -> None:
    rec, api, drv = setup(tunnel())
    run(rec, api)
    assert naming.AGENT_FINALIZER in api.objects[KEY]["metadata"]["finalizers"]
    assert api.writes[0] == "finalizer"  # before anything touches the node
    assert drv.calls == ["apply prod/site-b"]
    assert CONN in drv.plans["prod/site-b"].conn.name
    c = conds(api)
    assert c["Configured"] == ("True", "Applied")
    assert c["IkeEstablished"] == ("Unknown", "Connecting")
    assert c["RoutesInstalled"] == ("True", "Installed")
    assert len(api.events) == 5  # one per condition on the first visit
    assert api.objects[KEY]["status"]["node"] == NODE  # the operator's field stays


def test_second_pass_changes_nothing_and_writes_nothing() -> None:
    rec, api, drv = setup(tunnel())
    run(rec, api)
    writes = len(api.writes)
    changes = _changes(rec)
    assert changes > 0
    run(rec, api)
    assert len(api.writes) == writes
    assert _changes(rec) == changes
    assert drv.calls == ["apply prod/site-b", "apply prod/site-b"]


def _changes(rec: AgentReconciler) -> float:
    """routevpn_agent_dataplane_changes_total, all labels."""
    return sum(
        s.value
        for m in rec.metrics.dataplane_changes_total.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


def test_route_mode_waits_for_the_interface_and_touches_nothing() -> None:
    obj = tunnel()
    del obj["status"]["interface"]
    rec, api, drv = setup(obj)
    run(rec, api)
    assert drv.calls == []
    assert conds(api)["Configured"] == ("Unknown", "Pending")
    assert conds(api)["IkeEstablished"] == ("Unknown", "Pending")
    assert "ike" not in api.objects[KEY]["status"]


def test_missing_secret_is_reported_not_guessed() -> None:
    rec, api, drv = setup(tunnel())
    rec.state.secrets.clear()
    run(rec, api)
    assert drv.calls == []
    assert conds(api)["Configured"] == ("Unknown", "SecretMissing")


def test_moved_to_another_node_tears_down_then_releases_finalizer() -> None:
    rec, api, drv = setup(tunnel())
    run(rec, api)
    api.objects[KEY]["status"]["node"] = "node-b"
    rec.state.tunnels[KEY] = api.get(*KEY) or {}
    run(rec, api)
    assert drv.calls[-1] == "remove prod/site-b"
    assert "prod/site-b" not in drv.plans
    assert naming.AGENT_FINALIZER not in api.objects[KEY]["metadata"]["finalizers"]


def test_deletion_tears_down_then_releases_finalizer() -> None:
    rec, api, drv = setup(tunnel())
    run(rec, api)
    api.objects[KEY]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    rec.state.tunnels[KEY] = api.get(*KEY) or {}
    run(rec, api)
    assert drv.calls[-1] == "remove prod/site-b"
    assert api.objects[KEY]["metadata"]["finalizers"] == []


def test_route_loop_is_refused_with_its_reason() -> None:
    obj = tunnel()
    obj["spec"]["interface"]["addresses"] = ["2001:db8::/64"]
    obj["spec"]["routes"] = [{"to": "2001:db8::/32"}]
    driver = FakeDriver(
        host_routes=[safety.HostRoute(ipaddress.ip_network("::/0"), "eth0")],
    )
    rec, api, drv = setup(obj, driver)
    run(rec, api)
    assert conds(api)["Configured"] == ("False", "RouteLoop")
    assert conds(api)["RoutesInstalled"] == ("False", "RouteLoop")
    assert "prod/site-b" not in drv.plans


def test_charon_down_is_reported_and_retried() -> None:
    driver = FakeDriver(
        host_routes=[UNDERLAY],
        fail={"prod/site-b": CharonUnavailableError("prod/site-b", "no socket")},
    )
    rec, api, _ = setup(tunnel(), driver)
    run(rec, api)
    assert conds(api)["Configured"] == ("False", "CharonUnavailable")
    driver.fail.clear()
    run(rec, api)
    assert conds(api)["Configured"] == ("True", "Applied")


def test_first_pass_garbage_collects_what_no_tunnel_wants() -> None:
    rec, api, drv = setup(tunnel())
    # a plan of a tunnel that no longer exists, left by an earlier agent run
    stale = tunnel()
    stale["metadata"]["name"] = "gone"
    stale["status"]["interface"]["name"] = "vti9"
    plan = build_plan(VpnTunnel.from_wire(stale), DeliveredMaterial({"psk": "x" * 32}))
    assert isinstance(plan, TunnelPlan)
    drv.plans[plan.ref] = plan
    run(rec, api)
    assert "remove prod/gone" in drv.calls
    assert set(drv.plans) == {"prod/site-b"}
    assert rec.gc_done


def test_first_pass_keeps_what_a_blocked_tunnel_has() -> None:
    """Restarting while a tunnel's Secret is missing must not tear its tunnel down."""
    rec, api, drv = setup(tunnel())
    plan = build_plan(VpnTunnel.from_wire(tunnel()), DeliveredMaterial({"psk": "x" * 32}))
    assert isinstance(plan, TunnelPlan)
    drv.plans[plan.ref] = plan  # configured by the agent's previous run
    rec.state.secrets.clear()  # ...and the delivered Secret is not there right now
    run(rec, api)
    assert rec.gc_done
    assert "remove prod/site-b" not in drv.calls
    assert set(drv.plans) == {"prod/site-b"}
    assert conds(api)["Configured"] == ("Unknown", "SecretMissing")


def test_a_pass_applies_inside_one_driver_batch_and_reports_after_it() -> None:
    rec, api, drv = setup(tunnel())
    inside: list[bool] = []
    real_apply = drv.apply

    async def apply(plan: TunnelPlan) -> ApplyResult:
        inside.append(drv.in_batch)
        return await real_apply(plan)

    drv.apply = apply  # type: ignore[method-assign]
    run(rec, api)
    assert inside == [True]
    assert drv.batches == 1 and not drv.in_batch
    run(rec, api)
    assert drv.batches == 2 and inside == [True, True]


# --- failover: routes follow the SA --------------------------------------------------

BACKUP_KEY = ("prod", "site-b-backup")


def _pair(up: list[tuple[str, str]]) -> tuple[AgentReconciler, MemoryApi, FakeDriver]:
    """site-b (metric 100) and its backup (metric 200) to the same network; `up` have a
    CHILD SA installed."""
    primary = tunnel()
    primary["spec"]["routes"] = [{"to": "2001:db8:200::/48", "metric": 100}]
    backup = copy.deepcopy(primary)
    backup["metadata"]["name"] = BACKUP_KEY[1]
    backup["spec"]["routes"] = [{"to": "2001:db8:200::/48", "metric": 200}]
    backup["spec"]["interface"]["name"] = "vti2"
    backup["status"]["interface"] = {"name": "vti2", "type": "vti", "key": 4097}
    rec, api, drv = setup(primary)
    api.objects[BACKUP_KEY] = backup
    rec.state.tunnels[BACKUP_KEY] = copy.deepcopy(backup)
    rec.state.secrets[BACKUP_KEY] = secret()
    drv.sas = [_sa(key) for key in up]
    return rec, api, drv


def _sa(key: tuple[str, str]) -> IkeSaFacts:
    conn = naming.conn_name(*key)
    return IkeSaFacts(conn, "1", "ESTABLISHED", children=(ChildSaFacts(conn, "1", "INSTALLED"),))


def _metrics(drv: FakeDriver, key: tuple[str, str]) -> list[int]:
    return [r.metric for r in drv.plans[naming.tunnel_ref(*key)].routes]


def _route_states(api: MemoryApi, key: tuple[str, str]) -> list[tuple[str, str, int]]:
    routes = api.objects[key]["status"].get("routes") or []
    return [(r["state"], r["reason"], r["metric"]) for r in routes]


def test_a_down_tunnel_is_demoted_and_an_event_for_its_sibling_moves_it_back() -> None:
    rec, api, drv = _pair(up=[BACKUP_KEY])
    asyncio.run(rec.run_pass([KEY]))  # one tunnel changed: its sibling is passed too
    assert _metrics(drv, KEY) == [100 + 2**31]
    assert _metrics(drv, BACKUP_KEY) == [200]
    assert _route_states(api, KEY) == [("Demoted", "SaDown", 100 + 2**31)]
    assert _route_states(api, BACKUP_KEY) == [("Active", "SaInstalled", 200)]
    drv.sas = []  # the backup goes down too: nothing is up, both fail closed
    asyncio.run(rec.run_pass([BACKUP_KEY]))
    assert _metrics(drv, KEY) == [100]
    assert _route_states(api, KEY) == [("Active", "FailClosed", 100)]
    drv.sas = [_sa(KEY)]  # the primary is back: active, and the backup stays active
    asyncio.run(rec.run_pass([KEY]))
    assert _route_states(api, KEY) == [("Active", "SaInstalled", 100)]
    assert _route_states(api, BACKUP_KEY) == [("Demoted", "SaDown", 200 + 2**31)]


def test_status_writes_over_budget_are_deferred_but_routes_are_not() -> None:
    rec, api, drv = _pair(up=[BACKUP_KEY])
    rec.budget = WriteBudget(rate=1.0, burst=1, clock=lambda: 0.0)
    asyncio.run(rec.run_pass([KEY, BACKUP_KEY]))
    assert api.writes.count("status") == 1
    assert len(rec.deferred) == 1
    # both tunnels' routes are in place already: only the API hears later
    assert _metrics(drv, KEY) == [100 + 2**31]
    assert _metrics(drv, BACKUP_KEY) == [200]


def test_traffic_flowing_changes_reach_status_and_their_events_are_limited() -> None:
    """Traffic that starts and stops every few tens of seconds: status follows each
    change (after the hold), the Events are one per tunnel per --event-interval."""
    now = [1_800_000_000.0]
    api = MemoryApi({KEY: tunnel()})
    drv = FakeDriver(host_routes=[UNDERLAY])
    settings = AgentSettings(
        node=NODE,
        namespace="routevpn",
        traffic=TrafficPolicy(quiet=20.0, on_packets=3),  # on: 3 within 10 s; hold 10 s
        event_interval=600.0,
    )
    rec = AgentReconciler(settings, api, api, drv, Metrics(NODE), clock=lambda: now[0])
    rec.state.tunnels[KEY] = tunnel()
    rec.state.secrets[KEY] = secret()

    def look(at: float, packets_in: int) -> tuple[str, str]:
        now[0] = 1_800_000_000.0 + at
        child = ChildSaFacts(CONN, "1", "INSTALLED", spi_in="c1", packets_in=packets_in)
        drv.sas = [IkeSaFacts(CONN, "1", "ESTABLISHED", children=(child,))]
        run(rec, api)
        return conds(api)["TrafficFlowing"]

    assert look(0, 0) == ("Unknown", "Pending")
    assert look(5, 10) == ("True", "Flowing")
    assert look(40, 10) == ("False", "NoTrafficReceived")
    assert look(50, 20) == ("True", "Flowing")
    assert look(90, 20) == ("False", "NoTrafficReceived")
    traffic_events = [e for e in api.events if e[1] in ("Flowing", "NoTrafficReceived")]
    assert traffic_events == [("Normal", "Flowing")]  # the first verdict; then the limit
    limited = [
        (sample.labels["condition"], sample.value)
        for m in rec.metrics.events_limited_total.collect()
        for sample in m.samples
        if sample.name.endswith("_total")
    ]
    assert limited == [("TrafficFlowing", 3.0)]
    assert look(700, 40) == ("True", "Flowing")
    assert api.events[-1] == ("Normal", "Flowing")  # the interval (from t=5) is over
