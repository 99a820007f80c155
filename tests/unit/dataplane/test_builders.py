"""Golden tests: the exact messages routevpn sends to charon and netlink, written out."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from routevpn.api import naming
from routevpn.dataplane import builders
from routevpn.dataplane.plan import (
    CertAuth,
    ChildPlan,
    ConnPlan,
    LinkPlan,
    PlanError,
    PskCredential,
    RoutePlan,
    Secret,
    SysctlPlan,
    TunnelPlan,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network
iface = ipaddress.ip_interface

CONN = ConnPlan(
    name="routevpn.prod.site-b",
    local_addrs=("192.0.2.1",),
    remote_addrs=("198.51.100.2",),
    local_id="node-a.example",
    remote_id="site-b.example",
)
VTI = LinkPlan(
    name="vti4096",
    kind="vti",
    alias="routevpn:prod/site-b",
    local=ip("192.0.2.1"),
    remote=ip("198.51.100.2"),
    key=4096,
)
XFRM = LinkPlan(
    name="xfrm4097", kind="xfrm", alias="routevpn:prod/site-b", if_id=4097, underlay="eth0"
)


def plan(**kw: object) -> TunnelPlan:
    base: dict[str, object] = {
        "ref": "prod/site-b",
        "conn": CONN,
        "auth": PskCredential(Secret("s3cret")),
        "link": VTI,
    }
    base.update(kw)
    return TunnelPlan(**base)  # type: ignore[arg-type]


GOLDEN_VTI_CONN = {
    "routevpn.prod.site-b": {
        "version": "2",
        "local_addrs": ["192.0.2.1"],
        "remote_addrs": ["198.51.100.2"],
        "proposals": ["aes256-sha256-modp2048", "aes256gcm16-prfsha256-ecp256"],
        "rekey_time": "14400s",
        "reauth_time": "0s",
        "dpd_delay": "30s",
        "encap": "no",
        "mobike": "no",
        "keyingtries": "1",
        "unique": "replace",
        "local": {"auth": "psk", "id": "node-a.example"},
        "remote": {"auth": "psk", "id": "site-b.example"},
        "children": {
            "routevpn.prod.site-b": {
                "mode": "tunnel",
                "esp_proposals": ["aes256gcm16-modp2048", "aes256gcm16"],
                "life_time": "3600s",
                "rekey_time": "3240s",
                "rand_time": "324s",
                "replay_window": "32",
                "start_action": "none",
                "dpd_action": "restart",
                "close_action": "none",
                "local_ts": ["0.0.0.0/0", "::/0"],
                "remote_ts": ["0.0.0.0/0", "::/0"],
                "mark_in": "4096",
                "mark_out": "4096",
            }
        },
    }
}


def test_route_mode_vti_conn_is_golden() -> None:
    assert builders.build_conn(plan()) == GOLDEN_VTI_CONN


def test_route_mode_xfrm_conn_uses_if_ids_and_wide_selectors_regardless_of_child_ts() -> None:
    conn = replace(CONN, child=ChildPlan(local_ts=("203.0.113.0/24",)))
    child = builders.build_conn(plan(conn=conn, link=XFRM))["routevpn.prod.site-b"]["children"]
    assert child["routevpn.prod.site-b"] == {
        "mode": "tunnel",
        "esp_proposals": ["aes256gcm16-modp2048", "aes256gcm16"],
        "life_time": "3600s",
        "rekey_time": "3240s",
        "rand_time": "324s",
        "replay_window": "32",
        "start_action": "none",
        "dpd_action": "restart",
        "close_action": "none",
        "local_ts": ["0.0.0.0/0", "::/0"],
        "remote_ts": ["0.0.0.0/0", "::/0"],
        "if_id_in": "4097",
        "if_id_out": "4097",
    }


def test_policy_mode_ikev1_x509_conn_is_golden() -> None:
    conn = ConnPlan(
        name="routevpn.prod.legacy",
        local_addrs=("192.0.2.1",),
        remote_addrs=("203.0.113.9",),
        local_id="node-a.example",
        remote_id="legacy.example",
        auth="pubkey",
        version=1,
        proposals=("aes128-sha1-modp2048",),
        rekey_time=3600,
        reauth_time=7200,
        over_time=600,
        rand_time=300,
        dpd_delay=10,
        dpd_timeout=60,
        encap=True,
        mobike=False,
        keyingtries=0,
        remote_port=4500,
        child=ChildPlan(
            esp_proposals=("aes128-sha1",),
            life_time=1800,
            rekey_time=1500,
            rand_time=60,
            replay_window=64,
            start_action="trap",
            dpd_action="clear",
            close_action="trap",
            local_ts=("192.0.2.0/25",),
            remote_ts=("203.0.113.0/25", "2001:db8:9::/48"),
        ),
    )
    auth = CertAuth("CERT-PEM", Secret("KEY-PEM"), "CA-PEM")
    assert builders.build_conn(TunnelPlan(ref="prod/legacy", conn=conn, auth=auth)) == {
        "routevpn.prod.legacy": {
            "version": "1",
            "local_addrs": ["192.0.2.1"],
            "remote_addrs": ["203.0.113.9"],
            "proposals": ["aes128-sha1-modp2048"],
            "rekey_time": "3600s",
            "reauth_time": "7200s",
            "over_time": "600s",
            "rand_time": "300s",
            "dpd_delay": "10s",
            "dpd_timeout": "60s",
            "encap": "yes",
            "mobike": "no",
            "keyingtries": "0",
            "unique": "replace",
            "remote_port": "4500",
            "local": {"auth": "pubkey", "id": "node-a.example", "certs": ["CERT-PEM"]},
            "remote": {"auth": "pubkey", "id": "legacy.example", "cacerts": ["CA-PEM"]},
            "children": {
                "routevpn.prod.legacy": {
                    "mode": "tunnel",
                    "esp_proposals": ["aes128-sha1"],
                    "life_time": "1800s",
                    "rekey_time": "1500s",
                    "rand_time": "60s",
                    "replay_window": "64",
                    "start_action": "trap",
                    "dpd_action": "clear",
                    "close_action": "trap",
                    "local_ts": ["192.0.2.0/25"],
                    "remote_ts": ["203.0.113.0/25", "2001:db8:9::/48"],
                }
            },
        }
    }
    assert builders.build_key(TunnelPlan(ref="prod/legacy", conn=conn, auth=auth)) == {
        "type": "any",
        "data": "KEY-PEM",
    }


def test_every_vici_scalar_is_a_string() -> None:
    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            assert isinstance(value, str), value

    walk(builders.build_conn(plan(link=XFRM)))
    walk(builders.build_shared(plan()))


def test_shared_secret_message() -> None:
    assert builders.build_shared(plan()) == {
        "id": "routevpn.prod.site-b",
        "type": "IKE",
        "data": "s3cret",
        "owners": ["node-a.example", "site-b.example"],
    }
    assert builders.build_key(plan()) is None


def test_link_builders_are_golden() -> None:
    assert builders.build_link(VTI) == {
        "ifname": "vti4096",
        "kind": "vti",
        "mtu": 1400,
        "group": 157,  # naming.LINK_GROUP: routevpn's before the alias is set
        "vti_local": "192.0.2.1",
        "vti_remote": "198.51.100.2",
        "vti_ikey": 4096,
        "vti_okey": 4096,
    }
    vti6 = LinkPlan(
        name="vti6x",
        kind="vti6",
        alias="routevpn:prod/v6",
        mtu=1380,
        local=ip("2001:db8::1"),
        remote=ip("2001:db8::2"),
        key=7,
    )
    assert builders.build_link(vti6) == {
        "ifname": "vti6x",
        "kind": "vti6",
        "mtu": 1380,
        "group": 157,  # naming.LINK_GROUP: routevpn's before the alias is set
        "vti_local": "2001:db8::1",
        "vti_remote": "2001:db8::2",
        "vti_ikey": 7,
        "vti_okey": 7,
    }
    assert builders.build_link(XFRM, underlay_index=3) == {
        "ifname": "xfrm4097",
        "kind": "xfrm",
        "mtu": 1400,
        "group": 157,  # naming.LINK_GROUP: routevpn's before the alias is set
        "xfrm_if_id": 4097,
        "xfrm_link": 3,
    }
    assert builders.build_link_settings(VTI) == {
        "ifalias": "routevpn:prod/site-b",
        "mtu": 1400,
        "state": "up",
    }


def test_address_and_route_builders_are_golden() -> None:
    assert builders.build_address(5, iface("2001:db8:100::/127")) == {
        "index": 5,
        "address": "2001:db8:100::",
        "prefixlen": 127,
    }
    route = RoutePlan(net("::/0"), "vti4096", via=ip("2001:db8:100::1"), metric=10, table=100)
    assert builders.build_route(route, 5) == {
        "dst": "::/0",
        "oif": 5,
        "table": 100,
        "priority": 10,
        "proto": naming.ROUTE_PROTOCOL,
        "family": 10,
        "gateway": "2001:db8:100::1",
    }
    assert builders.build_route(RoutePlan(net("198.51.100.0/24"), "vti4096"), 5) == {
        "dst": "198.51.100.0/24",
        "oif": 5,
        "table": 254,
        "priority": 0,
        "proto": naming.ROUTE_PROTOCOL,
        "family": 2,
    }


def test_sysctls_vti_with_ipv6_inside_and_plan_override() -> None:
    p = plan(
        addresses=(iface("2001:db8:100::/127"),),
        sysctls=(SysctlPlan("net/ipv4/conf/vti4096/rp_filter", "0"),),
    )
    assert builders.build_sysctls(p) == (
        SysctlPlan("net/ipv4/conf/vti4096/disable_policy", "1"),
        SysctlPlan("net/ipv4/conf/vti4096/rp_filter", "0"),
        SysctlPlan("net/ipv6/conf/vti4096/disable_ipv6", "0"),
        # no router solicitations: they would reach the far end as "received traffic"
        SysctlPlan("net/ipv6/conf/vti4096/router_solicitations", "0"),
    )


def test_sysctls_xfrm_and_policy_mode() -> None:
    assert builders.build_sysctls(plan(link=XFRM)) == (
        SysctlPlan("net/ipv4/conf/xfrm4097/rp_filter", "2"),
    )
    assert builders.build_sysctls(plan(link=None)) == ()


def test_secrets_never_show_in_repr_or_str() -> None:
    p = plan(auth=PskCredential(Secret("hunter2-psk")))
    for text in (repr(p), str(p), f"{p.auth}", repr(CertAuth("c", Secret("PRIVATE"), "ca"))):
        assert "hunter2-psk" not in text and "PRIVATE" not in text
    assert "***" in repr(p)
    assert PskCredential(Secret("a")) == PskCredential(Secret("a")) != PskCredential(Secret("b"))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"conn": replace(CONN, child=ChildPlan(mark_in=1))}, "differ from the interface"),
        ({"link": None, "routes": (RoutePlan(net("::/0"), "x"),)}, "need an interface"),
        ({"routes": (RoutePlan(net("::/0"), "eth0"),)}, "not the tunnel interface"),
    ],
)
def test_inconsistent_plans_are_refused(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(PlanError, match=fragment):
        plan(**kwargs)


def test_link_validation() -> None:
    with pytest.raises(PlanError, match="not a valid Linux name"):
        replace(VTI, name="a-name-longer-than-15")
    with pytest.raises(PlanError, match="IPv4 endpoints"):
        replace(VTI, local=ip("2001:db8::1"))
    with pytest.raises(PlanError, match="needs if_id"):
        LinkPlan(name="x", kind="xfrm", alias="routevpn:a/b")
    with pytest.raises(PlanError, match="outside"):
        replace(XFRM, if_id=0)
    with pytest.raises(PlanError, match="not routevpn's"):
        replace(VTI, alias="someone-else")
    with pytest.raises(PlanError, match="prefix"):
        replace(CONN, name="manual")
