"""A far end that narrows the traffic selectors to one family, on a real IPsec kernel.

Topology: support.hapair's node and its first far-end gateway, the REAL agent and its
charon in the node namespace, one dual-stack VpnTunnel (an IPv4 and an IPv6 route; the
test plays the operator). The gateway is configured by hand the way some firewalls are:
one CHILD SA per family (`::/0` and `0.0.0.0/0`). Proposed `0.0.0.0/0,::/0`, charon
as responder picks one of the two child configs (each matches one proposed selector
exactly; on this charon the IPv4 one) and narrows the proposal to its selectors.

- Before: the tunnel's CHILD SA is installed with one family's selectors only; that
  family passes, the other is lost; status says so (ChildSaInstalled False, reason
  TrafficSelectorsNarrowed, the installed selectors in status.child).
- With `spec.child.perFamily: true` the node asks for one CHILD SA per family, which
  the far end accepts one by one: both installed, IPv4 and IPv6 pings both pass, and
  IPv6 traffic alone turns TrafficFlowing True.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import test_agent_lab as tal  # type: ignore[import-not-found]  # tests/lab is no package
import test_failover_lab as tfl  # type: ignore[import-not-found]  # the HA pair's setup

from routevpn.api import naming
from support import hapair as ha
from support import swanctl as sw
from support.kube import wait_until

pytestmark = pytest.mark.timeout(900)

NAME = tfl.PRIMARY
CHILD = "ChildSaInstalled"


def narrowing_far_end(h: tfl.Ha) -> None:
    """gwa's connection with one child per family (same VTI mark)."""
    gw, p = h.world.gws[0], ha.GWA
    kids = [
        sw.Child(name, local_ts=ts, remote_ts=ts, esp_proposals=ha.ESP_PROPOSALS,
                 mark=ha.PEER_KEY, dpd_action="clear")
        for name, ts in (("v6", "::/0"), ("v4", "0.0.0.0/0"))
    ]  # fmt: skip
    conn = sw.Conn(
        "ha", p.outer, p.node_outer, p.outer, p.node_outer, h.psk, kids,
        proposals=ha.IKE_PROPOSALS, dpd_delay=f"{ha.DPD_DELAY_S}s", unique="replace",
    )  # fmt: skip
    sw.write_and_load(gw.ns, gw.charon.uri, gw.conf, [conn])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tfl.Ha]:
    with (
        tal.guest_control_plane(tmp_path_factory.mktemp("control-plane")) as kc,
        tfl.agent_world(kc, tmp_path_factory.mktemp("narrowing")) as h,
    ):
        narrowing_far_end(h)
        wait_until(h.agent.ready, timeout=120, interval=0.5, what="agent ready")
        obj = tfl.tunnel(h, NAME, ha.GWA, 100)
        del obj["spec"]["healthCheck"]  # IPv4 is lost by design here: no failover wanted
        h.custom.create_namespaced_custom_object(tal.GROUP, tal.VERSION, h.tunnel_ns,
                                                 tal.PLURAL, obj)  # fmt: skip
        tal.deliver_secret(h, NAME)
        tal.operator_places(h, NAME, tfl.IFACES[NAME])
        yield h


def replies(h: tfl.Ha, src: str, dst: str, count: int = 5) -> int:
    """Echo replies of `count` pings from the node's inside address to `dst`."""
    out = subprocess.run(
        h.world.node.argv("ping", "-n", "-c", str(count), "-i", "0.3", "-W", "2", "-I", src, dst),
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return out.count(" bytes from ")


def child_state(h: tfl.Ha) -> tuple[tuple[str, str, str], dict[str, Any]]:
    obj = tal.get(h, NAME)
    status = (obj or {}).get("status") or {}
    return tal.conditions(obj).get(CHILD, ("", "", "")), status.get("child") or {}


def wait_child(h: tfl.Ha, status: str, reason: str) -> dict[str, Any]:
    try:
        wait_until(lambda: child_state(h)[0][:2] == (status, reason), timeout=180,
                   interval=0.5, what=f"{CHILD} {status}/{reason}")  # fmt: skip
    except TimeoutError as e:
        cond, child = child_state(h)
        pytest.fail(f"{e}: {cond} {json.dumps(child)}\n{ha.diagnose(h.world, h.charon)}\n"
                    f"{h.agent.tail()}")  # fmt: skip
    cond, child = child_state(h)
    print(f"{CHILD} {cond[0]}/{cond[1]}: {cond[2]}")
    print(f"status.child localTs {child.get('localTs')} remoteTs {child.get('remoteTs')}")
    return child


def test_narrowing_is_reported_and_per_family_child_sas_carry_both_families(
    world: tfl.Ha,
) -> None:
    h = world
    child = wait_child(h, "False", "TrafficSelectorsNarrowed")
    kept = child.get("localTs")
    assert kept in (["::/0"], ["0.0.0.0/0"]) and child.get("remoteTs") == kept
    v6, v4 = replies(h, ha.NODE_LAN6, ha.FAR_HOST6), replies(h, ha.NODE_LAN4, ha.FAR_HOST4)
    print(f"narrowed to {kept}: IPv6 {v6}/5 replies, IPv4 {v4}/5")
    assert (v6 > 0, v4 > 0) == ((True, False) if kept == ["::/0"] else (False, True))

    h.custom.patch_namespaced_custom_object(
        tal.GROUP, tal.VERSION, h.tunnel_ns, tal.PLURAL, NAME,
        {"spec": {"child": {"perFamily": True}}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    child = wait_child(h, "True", "Installed")
    assert sorted(child.get("localTs") or []) == ["0.0.0.0/0", "::/0"]
    tfl.wait_routes(h, NAME, "Active", "SaInstalled", timeout=120)
    v6, v4 = replies(h, ha.NODE_LAN6, ha.FAR_HOST6), replies(h, ha.NODE_LAN4, ha.FAR_HOST4)
    print(f"per family: IPv6 {v6}/5 replies, IPv4 {v4}/5")
    assert v6 > 0 and v4 > 0
    sas = sw.swanctl(h.world.node, h.charon.uri, "--list-sas")
    conn = naming.conn_name(h.tunnel_ns, NAME)
    print("\n".join(ln for ln in sas.splitlines() if "INSTALLED" in ln or "===" in ln))
    assert f"{conn}{naming.IPV6_CHILD_SUFFIX}:" in sas

    # Traffic through the IPv6 CHILD SA alone is traffic: TrafficFlowing adds the inbound
    # counters of both (it once judged the IPv4 one only). 60 IPv6 pings, no more IPv4.
    def flowing() -> bool:
        return bool(tal.conditions(tal.get(h, NAME)).get("TrafficFlowing", ("",))[0] == "True")

    v6 = replies(h, ha.NODE_LAN6, ha.FAR_HOST6, count=60)
    print(f"IPv6 only: {v6}/60 replies")
    assert v6 >= 30
    wait_until(flowing, timeout=180, interval=1, what="TrafficFlowing True on IPv6 alone")
