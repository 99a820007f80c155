"""An HA pair as agent.failover sees it (two tunnels of one node routing the same
networks), shared by the failover and probe unit tests."""

from __future__ import annotations

import ipaddress
from typing import Any

from routevpn.api import naming
from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts
from routevpn.dataplane.plan import ConnPlan, LinkPlan, PskCredential, RoutePlan, Secret, TunnelPlan

NODE = "node-a"
PRIMARY = ("prod", "primary")
BACKUP = ("prod", "backup")
NET4 = "198.51.100.0/24"
NET6 = "2001:db8:200::/48"
PENALTY = 2**31


def obj(key: tuple[str, str], routes: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    """A tunnel object of this node as the watch delivers it (only what failover reads)."""
    return {
        "metadata": {
            "namespace": key[0], "name": key[1],
            "labels": {naming.NODE_LABEL: NODE}, **meta,
        },
        "spec": {"routes": routes},
        "status": {"node": NODE},
    }  # fmt: skip


def sa(key: tuple[str, str], state: str = "INSTALLED") -> IkeSaFacts:
    conn = naming.conn_name(*key)
    return IkeSaFacts(conn, "1", "ESTABLISHED", children=(ChildSaFacts(conn, "1", state),))


def plan(key: tuple[str, str], *routes: RoutePlan) -> TunnelPlan:
    link = LinkPlan(
        name="vti1", kind="vti", alias=naming.link_alias(*key),
        local=ipaddress.ip_address("192.0.2.1"), remote=ipaddress.ip_address("192.0.2.2"), key=7,
    )  # fmt: skip
    conn = ConnPlan(naming.conn_name(*key), ("192.0.2.1",), ("192.0.2.2",), "192.0.2.1", "x")
    return TunnelPlan(naming.tunnel_ref(*key), conn, PskCredential(Secret("k" * 20)), link,
                      routes=routes)  # fmt: skip


def route(dst: str, metric: int = 0, table: int = 254) -> RoutePlan:
    return RoutePlan(ipaddress.ip_network(dst), "vti1", metric=metric, table=table)


PAIR = {
    PRIMARY: obj(PRIMARY, [{"to": NET4, "metric": 100}, {"to": NET6}]),
    BACKUP: obj(BACKUP, [{"to": NET4, "metric": 200}, {"to": NET6, "metric": 2000}]),
}
