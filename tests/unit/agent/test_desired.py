"""spec → TunnelPlan: golden plans for every example, written out by hand, and the blockers."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from routevpn.agent.desired import Blocked, DeliveredMaterial, build_plan, ike_rand_time
from routevpn.api.conditions import Reason, Status
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane import plan as p
from routevpn.dataplane.builders import build_conn

ROOT = Path(__file__).resolve().parents[3]
PSK = "unit-test-psk-0123456789abcdef0123456789abcdef"
ALL = ("0.0.0.0/0", "::/0")


def example(name: str, status: dict[str, Any] | None = None) -> VpnTunnel:
    docs = yaml.safe_load_all((ROOT / "examples" / name).read_text())
    obj = next(d for d in docs if d and d.get("kind") == "VpnTunnel")
    obj["metadata"]["namespace"] = "prod"
    if status is not None:
        obj["status"] = status
    return VpnTunnel.from_wire(obj)


def psk_secret() -> DeliveredMaterial:
    return DeliveredMaterial({"psk": PSK}, "h1")


def default_conn(name: str, local: str, remote: str, child: p.ChildPlan, **kw: Any) -> p.ConnPlan:
    """The connection the documented defaults give (api/sa.py), overridden by `kw`."""
    base: dict[str, Any] = {
        "name": name,
        "local_addrs": (local,),
        "remote_addrs": (remote,),
        "local_id": local,
        "remote_id": remote,
        "auth": "psk",
        "version": 2,
        "proposals": ("aes256gcm16-prfsha384-ecp384", "aes256-sha384-ecp384"),
        "rekey_time": 4 * 3600 - 20 * 60,
        "reauth_time": 0,
        "over_time": 20 * 60,
        "rand_time": 10 * 60,
        "dpd_delay": 30,
        "dpd_timeout": 150,
        "encap": False,
        "mobike": False,
        "child": child,
    }
    base.update(kw)
    return p.ConnPlan(**base)


def default_child(**kw: Any) -> p.ChildPlan:
    base: dict[str, Any] = {
        "esp_proposals": ("aes256gcm16-ecp384", "aes256-sha384-ecp384"),
        "life_time": 3600,
        "rekey_time": 3600 - 9 * 60,
        "rand_time": 3 * 60,
        "replay_window": 32,
        "start_action": "start",
        "dpd_action": "restart",
        "close_action": "none",
        "local_ts": ALL,
        "remote_ts": ALL,
    }
    base.update(kw)
    return p.ChildPlan(**base)


def test_seed_ipv6_vti_golden() -> None:
    tunnel = example(
        "seed-ipv6-vti.yaml",
        {"node": "node-a", "interface": {"name": "vti1", "type": "vti", "key": 4096}},
    )
    plan = build_plan(tunnel, psk_secret())
    assert plan == p.TunnelPlan(
        ref="prod/site-b",
        conn=default_conn(
            "routevpn.prod.site-b",
            "2001:db8:0:1::1",
            "2001:db8:0:2::1",
            default_child(mark_in=4096, mark_out=4096),
        ),
        auth=p.PskCredential(p.Secret(PSK)),
        link=p.LinkPlan(
            name="vti1",
            kind="vti6",
            alias="routevpn:prod/site-b",
            mtu=1400,
            local=ipaddress.ip_address("2001:db8:0:1::1"),
            remote=ipaddress.ip_address("2001:db8:0:2::1"),
            key=4096,
        ),
        addresses=(ipaddress.ip_interface("2001:db8:100::/127"),),
        routes=(
            p.RoutePlan(
                dst=ipaddress.ip_network("::/0"),
                dev="vti1",
                via=ipaddress.ip_address("2001:db8:100::1"),
            ),
        ),
    )


def test_ipv4_vti_golden() -> None:
    tunnel = example(
        "ipv4-vti.yaml",
        {"node": "gw-1", "interface": {"name": "vti4100", "type": "vti", "key": 4100}},
    )
    plan = build_plan(tunnel, psk_secret())
    assert plan == p.TunnelPlan(
        ref="prod/branch-office",
        conn=default_conn(
            "routevpn.prod.branch-office",
            "192.0.2.1",
            "198.51.100.1",
            default_child(esp_proposals=("aes256gcm16-ecp384",), mark_in=4100, mark_out=4100),
            proposals=("aes256gcm16-prfsha384-ecp384",),
            dpd_delay=10,
        ),
        auth=p.PskCredential(p.Secret(PSK)),
        link=p.LinkPlan(
            name="vti4100",
            kind="vti",
            alias="routevpn:prod/branch-office",
            local=ipaddress.ip_address("192.0.2.1"),
            remote=ipaddress.ip_address("198.51.100.1"),
            key=4100,
        ),
        addresses=(ipaddress.ip_interface("169.254.10.1/30"),),
        routes=(
            p.RoutePlan(
                dst=ipaddress.ip_network("203.0.113.0/24"),
                dev="vti4100",
                via=ipaddress.ip_address("169.254.10.2"),
                metric=100,
            ),
        ),
    )


def test_xfrm_interface_golden_binds_to_the_underlay() -> None:
    tunnel = example(
        "xfrm-interface.yaml",
        {"node": "node-a", "interface": {"name": "xfrm-sitec", "type": "xfrm", "ifId": 43}},
    )
    plan = build_plan(tunnel, psk_secret(), underlay="eth0")
    assert plan == p.TunnelPlan(
        ref="prod/site-c",
        conn=default_conn(
            "routevpn.prod.site-c",
            "192.0.2.1",
            "203.0.113.7",
            default_child(if_id_in=43, if_id_out=43),
        ),
        auth=p.PskCredential(p.Secret(PSK)),
        link=p.LinkPlan(
            name="xfrm-sitec",
            kind="xfrm",
            alias="routevpn:prod/site-c",
            if_id=43,
            underlay="eth0",
        ),
        addresses=(
            ipaddress.ip_interface("169.254.20.1/30"),
            ipaddress.ip_interface("2001:db8:120::/127"),
        ),
        routes=(
            p.RoutePlan(
                dst=ipaddress.ip_network("198.51.100.0/24"),
                dev="xfrm-sitec",
                via=ipaddress.ip_address("169.254.20.2"),
            ),
            p.RoutePlan(
                dst=ipaddress.ip_network("2001:db8:c00::/48"),
                dev="xfrm-sitec",
                via=ipaddress.ip_address("2001:db8:120::1"),
            ),
        ),
    )


def test_policy_based_golden_needs_no_interface() -> None:
    tunnel = example("policy-based.yaml", {"node": "node-a"})
    plan = build_plan(tunnel, psk_secret())
    assert plan == p.TunnelPlan(
        ref="prod/legacy-peer",
        conn=default_conn(
            "routevpn.prod.legacy-peer",
            "192.0.2.1",
            "198.51.100.1",
            default_child(local_ts=("192.0.2.128/25",), remote_ts=("203.0.113.0/24",)),
        ),
        auth=p.PskCredential(p.Secret(PSK)),
    )
    assert isinstance(plan, p.TunnelPlan) and plan.mode == "policy"


def test_x509_golden_carries_cert_key_and_ca() -> None:
    tunnel = example(
        "x509-cert-manager.yaml",
        {"node": "node-a", "interface": {"name": "vti4097", "type": "vti", "key": 4097}},
    )
    secret = DeliveredMaterial({"tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA"}, "h")
    plan = build_plan(tunnel, secret)
    assert plan == p.TunnelPlan(
        ref="prod/site-d",
        conn=default_conn(
            "routevpn.prod.site-d",
            "2001:db8:0:1::1",
            "2001:db8:0:4::1",
            default_child(mark_in=4097, mark_out=4097),
            auth="pubkey",
            local_id="gw-a.vpn.example.org",
            remote_id="gw-d.vpn.example.org",
        ),
        auth=p.CertAuth(cert_pem="CERT", key_pem=p.Secret("KEY"), ca_pem="CA"),
        link=p.LinkPlan(
            name="vti4097",
            kind="vti6",
            alias="routevpn:prod/site-d",
            local=ipaddress.ip_address("2001:db8:0:1::1"),
            remote=ipaddress.ip_address("2001:db8:0:4::1"),
            key=4097,
        ),
        addresses=(ipaddress.ip_interface("2001:db8:140::/127"),),
        routes=(
            p.RoutePlan(
                dst=ipaddress.ip_network("2001:db8:d00::/48"),
                dev="vti4097",
                via=ipaddress.ip_address("2001:db8:140::1"),
            ),
        ),
    )


def test_x509_without_local_id_presents_the_certificate_subject() -> None:
    """No spec.local.id with x509: no `id` is sent, so charon uses the cert's subject
    (proved on a real charon in tests/netns/test_dataplane_ipsec.py); PSK keeps the
    local address."""
    tunnel = example(
        "x509-cert-manager.yaml",
        {"node": "node-a", "interface": {"name": "vti4097", "type": "vti", "key": 4097}},
    )
    raw = tunnel.model_dump(by_alias=True, exclude_none=True, mode="json")
    raw["spec"]["local"].pop("id")
    secret = DeliveredMaterial({"tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA"}, "h")
    plan = build_plan(VpnTunnel.from_wire(raw), secret)
    assert isinstance(plan, p.TunnelPlan) and plan.conn.local_id is None
    local = build_conn(plan)["routevpn.prod.site-d"]["local"]
    assert "id" not in local and local["auth"] == "pubkey"
    raw["spec"]["auth"] = {"type": "psk", "psk": {"secretRef": {"name": "k"}}}
    psk_plan = build_plan(VpnTunnel.from_wire(raw), psk_secret())
    assert isinstance(psk_plan, p.TunnelPlan) and psk_plan.conn.local_id == "2001:db8:0:1::1"


def test_every_example_has_a_golden_test() -> None:
    covered = {
        "seed-ipv6-vti.yaml",
        "ipv4-vti.yaml",
        "xfrm-interface.yaml",
        "policy-based.yaml",
        "x509-cert-manager.yaml",
        "ha-pair.yaml",
    }
    assert {f.name for f in (ROOT / "examples").glob("*.yaml")} == covered


def test_ike_rekey_fuzz_default() -> None:
    assert ike_rand_time(example("seed-ipv6-vti.yaml")) == 600


def test_explicit_settings_override_every_default() -> None:
    tunnel = example("seed-ipv6-vti.yaml", {"interface": {"name": "v", "type": "vti", "key": 7}})
    raw = tunnel.model_dump(by_alias=True, exclude_none=True, mode="json")
    raw["spec"]["ike"] = {
        "version": 1,
        "lifetime": "2h",
        "rekeyMargin": "10m",
        "rekeyFuzz": "5m",
        "reauthTime": "8h",
        "dpd": {"delay": "5s", "timeout": "20s", "action": "none"},
        "encapsulation": "force",
        "mobike": "enabled",
    }
    raw["spec"]["child"] = {"lifetime": "30m", "rekeyMargin": "5m", "rekeyFuzz": "1m",
                            "replayWindow": 0, "startAction": "trap"}  # fmt: skip
    raw["spec"]["interface"]["mtu"] = 1300
    raw["spec"]["routes"] = [{"to": "2001:db8:f00::/48", "metric": 5, "table": 100}]
    raw["spec"]["routes"][0].pop("via", None)
    plan = build_plan(VpnTunnel.from_wire(raw), psk_secret())
    assert isinstance(plan, p.TunnelPlan)
    c = plan.conn
    assert (c.version, c.rekey_time, c.over_time, c.reauth_time) == (1, 6600, 600, 28800)
    assert c.rand_time == 300
    assert (c.dpd_delay, c.dpd_timeout, c.encap, c.mobike) == (5, 20, True, True)
    ch = c.child
    assert (ch.life_time, ch.rekey_time, ch.rand_time) == (1800, 1500, 60)
    assert (ch.replay_window, ch.start_action, ch.dpd_action) == (0, "trap", "clear")
    assert plan.link is not None and plan.link.mtu == 1300
    assert plan.routes == (
        p.RoutePlan(ipaddress.ip_network("2001:db8:f00::/48"), "v", None, 5, 100),
    )


@pytest.mark.parametrize(
    ("status", "secret", "reason", "cond_status"),
    [
        ({"node": "node-a"}, psk_secret(), Reason.PENDING, Status.UNKNOWN),
        (
            {"interface": {"name": "vti1", "type": "vti"}},
            psk_secret(),
            Reason.PENDING,
            Status.UNKNOWN,
        ),
        (
            {"interface": {"name": "vti1", "type": "vti", "key": 9}},
            None,
            Reason.SECRET_MISSING,
            Status.UNKNOWN,
        ),
        (
            {"interface": {"name": "vti1", "type": "vti", "key": 9}},
            DeliveredMaterial({"tls.crt": "x"}),
            Reason.SECRET_INVALID,
            Status.FALSE,
        ),
    ],
    ids=["no-interface", "no-key", "no-secret", "secret-without-psk"],
)
def test_blocked_until_the_operator_has_done_its_part(
    status: dict[str, Any], secret: DeliveredMaterial | None, reason: Reason, cond_status: Status
) -> None:
    blocked = build_plan(example("seed-ipv6-vti.yaml", status), secret)
    assert isinstance(blocked, Blocked)
    assert (blocked.reason, blocked.status) == (reason, cond_status)
    assert "prod/site-b" in blocked.message
    assert PSK not in blocked.message


def test_local_address_falls_back_to_the_operators_choice() -> None:
    tunnel = example("policy-based.yaml", {"node": "node-a", "localAddress": "192.0.2.77"})
    raw = tunnel.model_dump(by_alias=True, exclude_none=True, mode="json")
    del raw["spec"]["local"]
    plan = build_plan(VpnTunnel.from_wire(raw), psk_secret())
    assert isinstance(plan, p.TunnelPlan)
    assert plan.conn.local_addrs == ("192.0.2.77",) and plan.conn.local_id == "192.0.2.77"
    raw.pop("status")
    blocked = build_plan(VpnTunnel.from_wire(raw), psk_secret())
    assert isinstance(blocked, Blocked) and blocked.reason is Reason.PENDING


def test_secret_never_shows_in_repr() -> None:
    assert PSK not in repr(psk_secret())
    plan = build_plan(example("policy-based.yaml", {}), psk_secret())
    assert PSK not in repr(plan)


def test_ha_pair_example_gives_two_tunnels_to_the_same_networks_at_two_metrics() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "examples/ha-pair.yaml").read_text()) if d]
    tunnels = [d for d in docs if d["kind"] == "VpnTunnel"]
    plans = []
    for i, obj in enumerate(tunnels):
        obj["metadata"]["namespace"] = "prod"
        iface = {"name": f"vti{i + 1}", "type": "vti", "key": 4096 + i}
        obj["status"] = {"node": "node-a", "interface": iface}
        plan = build_plan(VpnTunnel.from_wire(obj), psk_secret())
        assert isinstance(plan, p.TunnelPlan)
        plans.append(plan)
    primary, backup = plans
    assert {r.dst for r in primary.routes} == {r.dst for r in backup.routes}
    assert {r.metric for r in primary.routes} == {100}
    assert {r.metric for r in backup.routes} == {200}
    assert primary.conn.remote_addrs != backup.conn.remote_addrs
    assert primary.conn.dpd_delay == backup.conn.dpd_delay == 2
    assert primary.conn.child.dpd_action == "restart"
