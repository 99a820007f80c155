"""Tenancy policy for spec.bgp (pure): `accept` and `advertise` are judged like routes, with
the one documented difference that an accept may hold a protected network (the node's
BIRD refuses the protected part of what it learns) but not lie inside one."""

from __future__ import annotations

from typing import Any

import pytest

from routevpn.api.policy import VpnTunnelPolicySpec
from routevpn.api.spec import VpnTunnelSpec, parse_spec
from routevpn.controller.policy import PolicyView, evaluate, protected_networks

pytestmark = pytest.mark.unit

PROTECTED = protected_networks(
    [
        ("the pod network", "198.51.100.0/25"),
        ("the service network", "2001:db8:96::/112"),
        ("the API server's address", "192.0.2.10/32"),
    ],
    ["192.0.2.1", "2001:db8:0:1::1"],
)
GRANT = VpnTunnelPolicySpec.model_validate(
    {"allowedDestinations": ["203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32"],
     "allowedTables": [254, 100]}
)  # fmt: skip


def spec(**bgp: Any) -> VpnTunnelSpec:
    return parse_spec(
        {
            "nodeName": "n1",
            "remote": {"address": "203.0.113.1"},
            "auth": {"type": "psk", "psk": {"secretRef": {"name": "s"}}},
            "interface": {"addresses": ["169.254.10.1/30"]},
            "bgp": {
                "peerASN": 65001,
                "peerAddresses": ["169.254.10.2"],
                "accept": ["203.0.113.128/25"],
                **bgp,
            },
        }
    )


def evaluated(tunnel: VpnTunnelSpec, grant: VpnTunnelPolicySpec | None = GRANT) -> str | None:
    """None when admitted, else the refusal's message."""
    grants = [("p", grant)] if grant is not None else []
    got = evaluate(
        tunnel, "team-a", PolicyView(PROTECTED, grants, "allow" if not grants else "deny")
    )
    return None if got.admitted else got.message


def test_a_plain_bgp_tunnel_is_admitted() -> None:
    assert evaluated(spec(advertise=["203.0.113.0/26"])) is None


@pytest.mark.parametrize(
    ("bgp", "fragment"),
    [
        ({"accept": ["198.51.100.0/26"]}, "spec.bgp.accept[0] 198.51.100.0/26 lies inside the pod"),
        ({"accept": ["192.0.2.10/32"]}, "spec.bgp.accept[0] 192.0.2.10/32 lies inside the API"),
        ({"accept": ["127.0.0.0/16"]}, "lies inside loopback"),
        ({"accept": ["169.254.169.254/32"]}, "lies inside link-local"),
        (
            {"advertise": ["198.51.100.0/24"]},
            "spec.bgp.advertise[0] 198.51.100.0/24 overlaps the pod",
        ),
        ({"advertise": ["192.0.2.0/30"]}, "spec.bgp.advertise[0] 192.0.2.0/30 overlaps a node's"),
    ],
)
def test_protected_networks_are_refused_even_without_any_policy(
    bgp: dict[str, Any], fragment: str
) -> None:
    message = evaluated(spec(**bgp), grant=None)
    assert message is not None and fragment in message


def test_an_accept_holding_a_protected_network_is_admitted() -> None:
    # 198.51.100.0/24 holds the pod network /25: the node's import filter removes that part.
    assert evaluated(spec(accept=["198.51.100.0/24"])) is None
    assert evaluated(spec(accept=["198.51.100.0/24"]), grant=None) is None


@pytest.mark.parametrize(
    ("bgp", "fragment"),
    [
        (
            {"accept": ["192.0.2.128/25"]},
            "spec.bgp.accept[0] 192.0.2.128/25 is outside allowedDest",
        ),
        ({"advertise": ["192.0.2.128/25"]}, "spec.bgp.advertise[0] 192.0.2.128/25 is outside"),
        ({"accept": ["0.0.0.0/0"]}, "spec.bgp.accept[0] 0.0.0.0/0 is a default route and"),
        ({"advertise": ["0.0.0.0/0"]}, "spec.bgp.advertise[0] 0.0.0.0/0 is a default route"),
        ({"table": 200}, "spec.bgp.accept[0]: table 200 is not in allowedTables"),
    ],
)
def test_the_grant_bounds_accept_advertise_and_table(bgp: dict[str, Any], fragment: str) -> None:
    message = evaluated(spec(**bgp))
    assert message is not None and fragment in message


def test_a_granted_default_route_and_table_are_admitted() -> None:
    wide = VpnTunnelPolicySpec.model_validate({"defaultRoute": "allowed", "allowedTables": [100]})
    assert evaluated(spec(accept=["0.0.0.0/0"], table=100), wide) is None
    assert evaluated(spec(accept=["0.0.0.0/0"]), wide) is not None  # table 254 not granted
