"""The dashboard's queries and the alerts' expressions against a real Prometheus that
scrapes the real operator and the real agent while tunnels run.

    host                                   netns "node"  203.0.113.1 ── veth ── netns "far"
      kube-apiserver ◄──── relay ──────────  routevpn agent (charon beside it, VICI)
      routevpn operator ◄── relay ─────────  prometheus (scrapes both, evaluates the rules)

The operator places N policy-mode tunnels on a Node object and delivers their PSK; the
agent configures them in its charon. Nothing answers IKE at the far end (the addresses
are unreachable), so the tunnels stay CONNECTING and charon logs failures: every series
family exists, the states are real ones. Prometheus runs inside the node's namespace,
where the agent listens, and reaches the operator through a relay; its jobs are named as
the chart's ServiceMonitors name them and scrape with honor_labels, as they do. It loads
the chart's rendered alerting rules.

Asserted: both targets up; every panel query succeeds without warnings and returns
series carrying the labels its legend uses; every alerting rule is evaluated by
Prometheus with health "ok"; every alert expression runs. Printed (figures): how long
Prometheus took to scrape each process and how many series the agent has per tunnel.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from support.alerts import AGENT_JOB, OPERATOR_JOB, all_rules, rules
from support.charon import CHARON, Charon
from support.chart import CHART
from support.cluster import ClusterAccess, free_port
from support.kube import create_namespace, create_node, delete_namespace, delete_node, wait_until
from support.netns import Netns, have_root, netns, veth
from support.nsrelay import forward_into, http_get_in
from support.operator import Operator, create_tunnel, psk_secret, release_tunnels, tunnel_body
from support.prometheus import Prometheus
from support.secretscan import REGISTRY
from support.tiers import missing

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]

NODE_ADDR = "203.0.113.1"
#: Tunnels on the node (ROUTEVPN_PROM_TUNNELS raises it to 32, the selectors there are;
#: 200 on a node: benchmarks/bench_metrics_scrape.py).
TUNNELS = min(int(os.environ.get("ROUTEVPN_PROM_TUNNELS", "10")), 32)
DASHBOARD = json.loads((CHART / "files" / "dashboard.json").read_text())


def panel_queries() -> list[tuple[str, str, list[str]]]:
    """(panel title, query with the dashboard's variables at All, labels its legend uses)."""
    out = []
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$node", ".*").replace("$namespace", ".*")
            out.append((panel["title"], expr, re.findall(r"\{\{(\w+)\}\}", target["legendFormat"])))
    return out


def tunnel_spec(node: str, i: int) -> dict[str, Any]:
    """Tunnel i: policy mode (this host's kernel has no ESP for a CHILD SA anyway), its
    own far-end address and remote traffic selector, so no two share an owner (the upper
    half of 198.51.100.0/24: the test API server is 198.51.100.1, never routable)."""
    return {
        "nodeName": node,
        "mode": "policy",
        "local": {"address": NODE_ADDR},
        "remote": {"address": f"203.0.113.{10 + i}"},
        "child": {
            "trafficSelectors": {
                "local": ["192.0.2.0/25"],
                "remote": [f"198.51.100.{128 + 4 * i}/30"],
            }
        },
    }


class Agent:
    """`routevpn agent` inside `ns`, stopped by PID."""

    def __init__(self, ns: Netns, argv: list[str], log: Path, port: int) -> None:
        self.log, self.ns, self.port = log, ns, port
        self._out = log.open("ab")
        REGISTRY.add_log(log)  # scanned for secrets at the end of the session
        self.proc = subprocess.Popen(ns.argv(*argv), stdout=self._out, stderr=subprocess.STDOUT)

    def keep_metrics(self) -> None:
        """Its /metrics for the secret scan (while its namespace is still there)."""
        code, text = http_get_in(self.ns, self.port, "/metrics")
        if code == 200:
            REGISTRY.add_text("agent /metrics", text)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def scraped(
    cluster: ClusterAccess,
    crd: list[str],
    kube: client.ApiClient,
    kubeconfig_for: Any,
    tmp_path: Path,
) -> Iterator[tuple[Prometheus, str, str]]:
    """Operator, agent (with charon) and Prometheus running, N tunnels placed on the
    node: (prometheus, node, tenant namespace)."""
    if not have_root():
        missing("root (network namespaces)")
    if not CHARON.exists():
        missing(f"charon ({CHARON})")
    rule_file = rules(tmp_path)  # helm; skips or fails like the chart tests
    node = f"prom-node-{secrets.token_hex(3)}"
    rns = create_namespace(kube, "routevpn")
    tenant = create_namespace(kube, "tenant")
    create_node(kube, node)
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    api_host, api_port = server.removeprefix("https://").rsplit(":", 1)
    api_inner, op_inner, agent_port = free_port(), free_port(), free_port()
    op = Operator(cluster.kubeconfig, rns, tmp_path / "operator.log")
    started: list[Any] = [op]
    try:
        with (
            netns("rvpnode") as node_net,
            netns("rvpfar") as far_net,
            veth(node_net, "vnode", far_net, "vfar"),
            forward_into(node_net, api_inner, (api_host, int(api_port))),
            forward_into(node_net, op_inner, ("127.0.0.1", op.port)),
        ):
            node_net.add_address("vnode", f"{NODE_ADDR}/24")
            charon = Charon(node_net, tmp_path / "charon")
            charon.start()
            started.append(charon)
            kubeconfig = kubeconfig_for(f"https://127.0.0.1:{api_inner}")
            argv = [
                sys.executable, "-m", "routevpn", "agent", "--node", node, "--namespace", rns,
                "--vici-socket", str(charon.vici_socket), "--http-port", str(agent_port),
                "--bind-address", "127.0.0.1", "--kubeconfig", str(kubeconfig),
                "--resync-seconds", "3", "--counters-period", "2",
            ]  # fmt: skip
            agent = Agent(node_net, argv, tmp_path / "agent.log", agent_port)
            started.append(agent)
            (tmp_path / "prom").mkdir()
            (tmp_path / "prom" / "rules.yaml").write_text(yaml.safe_dump(rule_file))
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["rules.yaml"],
                "scrape_configs": [
                    {"job_name": job, "honor_labels": True,
                     "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                    for job, port in ((OPERATOR_JOB, op_inner), (AGENT_JOB, agent_port))
                ],
            }  # fmt: skip
            prom = Prometheus(node_net, tmp_path / "prom", config)
            started.append(prom)
            wait_until(op.healthy, timeout=60, what="operator /healthz")
            psk_secret(kube, tenant)
            for i in range(TUNNELS):
                create_tunnel(kube, tenant, tunnel_body(f"t{i}", **tunnel_spec(node, i)))
            try:
                yield prom, node, tenant
            finally:
                agent.keep_metrics()
    finally:
        for proc in reversed(started):
            proc.stop()
        release_tunnels(kube, tenant)
        delete_namespace(kube, tenant)
        delete_namespace(kube, rns)
        delete_node(kube, node)


_SCRAPED = {
    "agent": 'count(routevpn_tunnel_ike_state{{node="{node}"}} == 1)',
    "operator": 'sum(routevpn_tunnels{{node="{node}"}})',
    "live": 'sum(routevpn_node_agent_live{{node="{node}"}})',
}


def _all_tunnels_scraped(prom: Prometheus, node: str) -> bool:
    """The agent has every tunnel's series, the operator counts them on the node, and
    sees the node's agent live."""
    want = {"agent": TUNNELS, "operator": TUNNELS, "live": 1}
    for what, query in _SCRAPED.items():
        result = prom.series(query.format(node=node))
        if not result or float(result[0]["value"][1]) != want[what]:
            return False
    return True


def _rules_evaluated(prom: Prometheus) -> list[dict[str, Any]] | None:
    groups = prom.get("/api/v1/rules")["data"]["groups"]
    evaluated = [r for g in groups for r in g["rules"]]
    return evaluated if evaluated and all(r["health"] != "unknown" for r in evaluated) else None


def _wait_for_the_scrape(prom: Prometheus, node: str) -> None:
    """Both targets up, and every tunnel in both processes' series."""

    def up() -> dict[str, str]:
        return {s["metric"]["job"]: s["value"][1] for s in prom.series("up")}

    both = {OPERATOR_JOB: "1", AGENT_JOB: "1"}
    try:
        wait_until(lambda: up() == both, timeout=60, what="both targets scraped and up")
    except TimeoutError:
        pytest.fail(f"targets: {prom.get('/api/v1/targets')['data']}\n{prom.tail()}")
    try:
        wait_until(lambda: _all_tunnels_scraped(prom, node), timeout=120, interval=2,
                   what=f"{TUNNELS} tunnels in both processes' series")  # fmt: skip
    except TimeoutError:
        seen = {w: prom.series(q.format(node=node)) for w, q in _SCRAPED.items()}
        pytest.fail(f"not every tunnel is in both processes' series: {seen}")


def _check_panels(prom: Prometheus) -> None:
    """Every panel: the query succeeds without warnings, with series carrying its legend's
    labels. (rate() over the CHILD SA's byte gauges draws an *info* that the name does not
    end in _total: those gauges restart at a rekey, which rate() takes as a counter reset.)"""

    def answered() -> list[tuple[str, str, dict[str, Any]]] | None:
        answers = [(title, expr, prom.query(expr)) for title, expr, _ in panel_queries()]
        return answers if all(a["data"]["result"] for _, _, a in answers) else None

    try:
        answers = wait_until(answered, timeout=120, interval=2, what="every panel has series")
    except TimeoutError:
        empty = [t for t, e, _ in panel_queries() if not prom.series(e)]
        pytest.fail(f"panels without series: {empty}")
    for (title, expr, answer), (_, _, legend) in zip(answers, panel_queries(), strict=True):
        assert answer["status"] == "success", (title, answer)
        assert not answer.get("warnings"), (title, answer["warnings"])
        for s in answer["data"]["result"]:
            assert set(legend) <= set(s["metric"]), f"{title}: {expr} gives {s['metric']}"


def _check_variables(prom: Prometheus, node: str, tenant: str) -> None:
    """The dashboard's variables (label_values(metric, label)) list this node, namespace."""
    for var in DASHBOARD["templating"]["list"]:
        if var["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["definition"])
        assert found, var["definition"]
        values = prom.get(f"/api/v1/label/{found[2]}/values", **{"match[]": found[1]})["data"]
        assert {node, tenant} & set(values), (var["name"], values)


def _check_rules(prom: Prometheus) -> None:
    """Every alerting rule: evaluated by Prometheus itself, healthy; each expression runs."""
    evaluated = wait_until(lambda: _rules_evaluated(prom), timeout=60, what="rules evaluated")
    assert {r["name"] for r in evaluated} == set(all_rules(rules_of(prom)))
    for r in evaluated:
        assert r["health"] == "ok" and not r.get("lastError"), r
        answer = prom.query(r["query"])
        assert answer["status"] == "success" and not answer.get("warnings"), (r["name"], answer)


def test_dashboard_and_alerts_against_the_real_scrape(
    scraped: tuple[Prometheus, str, str],
) -> None:
    prom, node, tenant = scraped
    _wait_for_the_scrape(prom, node)
    _check_panels(prom)
    _check_variables(prom, node, tenant)
    tunnel_series = prom.series(f'routevpn_tunnel_ike_state{{namespace="{tenant}"}}')
    assert {s["metric"]["node"] for s in tunnel_series} == {node}
    assert {s["metric"]["name"] for s in tunnel_series} == {f"t{i}" for i in range(TUNNELS)}
    _check_rules(prom)
    _print_figures(prom, tenant)


def rules_of(prom: Prometheus) -> dict[str, Any]:
    """The rule file Prometheus was given (what the chart renders)."""
    loaded: dict[str, Any] = yaml.safe_load((prom.config.parent / "rules.yaml").read_text())
    return loaded


def _print_figures(prom: Prometheus, tenant: str) -> None:
    """Scrape durations and sizes as Prometheus measured them; series per tunnel."""
    lines = [f"figures ({TUNNELS} tunnels on one node, scrape interval 1 s):"]
    for job in (OPERATOR_JOB, AGENT_JOB):
        for stat in ("avg", "max"):
            d = prom.series(f'{stat}_over_time(scrape_duration_seconds{{job="{job}"}}[1m])')
            lines.append(f"  {job}: {stat} scrape {float(d[0]['value'][1]) * 1000:.1f} ms")
        n = prom.series(f'scrape_samples_scraped{{job="{job}"}}')
        lines.append(f"  {job}: {n[0]['value'][1]} samples per scrape")
    per = prom.series(f'count({{job="{AGENT_JOB}", namespace="{tenant}"}})')
    lines.append(f"  agent series per tunnel: {int(per[0]['value'][1]) / TUNNELS:g}")
    print("\n".join(lines))
