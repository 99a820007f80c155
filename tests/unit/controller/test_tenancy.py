"""Tenancy policy (pure): protected networks, grants, several policies, and the claims
(routes, IKE identity pairs) one tunnel holds on a node, with messages that name nothing
of another namespace."""

from __future__ import annotations

from typing import Any

import pytest

from routevpn.api.conditions import Reason
from routevpn.api.policy import VpnTunnelPolicySpec
from routevpn.api.spec import VpnTunnelSpec, parse_spec
from routevpn.controller.allocation import Holder, claim_conflict, holder_for
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


def spec(routes: list[dict[str, Any]] | None = None, **extra: Any) -> VpnTunnelSpec:
    body: dict[str, Any] = {
        "nodeName": "n1",
        "remote": {"address": "203.0.113.1"},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "s"}}},
        "interface": {"addresses": ["169.254.10.1/30"]},
        "routes": routes if routes is not None else [{"to": "203.0.113.128/25"}],
        **extra,
    }
    return parse_spec(body)


def grant(**fields: Any) -> VpnTunnelPolicySpec:
    return VpnTunnelPolicySpec.model_validate(fields)


def view(*grants: tuple[str, VpnTunnelPolicySpec], without: str = "deny") -> PolicyView:
    return PolicyView(PROTECTED, grants, without, {"team-a": {"tenant": "a"}})


@pytest.mark.parametrize(
    ("routes", "inside", "fragment"),
    [
        ([{"to": "192.0.2.10/32"}], None, "the API server's address 192.0.2.10/32"),
        ([{"to": "192.0.2.0/31"}], None, "a node's address 192.0.2.1/32"),
        ([{"to": "198.51.100.64/26"}], None, "the pod network"),
        ([{"to": "2001:db8:96::/120"}], None, "the service network"),
        ([{"to": "127.0.0.0/8"}], None, "loopback"),
        ([{"to": "224.0.0.0/4"}], None, "multicast"),
        ([{"to": "169.254.169.254/32"}], None, "link-local"),
        ([], ["192.0.2.1/32"], "a node's address"),
        ([], ["198.51.100.1/30"], "the pod network"),
    ],
)
def test_protected_networks_are_refused_even_without_any_policy(
    routes: list[dict[str, Any]], inside: list[str] | None, fragment: str
) -> None:
    extra = {"interface": {"addresses": inside}} if inside else {}
    got = evaluate(spec(routes, **extra), "team-a", view(without="allow"))
    assert not got.admitted and fragment in got.message


def test_default_route_is_the_policys_to_grant() -> None:
    default = spec([{"to": "0.0.0.0/0"}])
    assert evaluate(default, "team-a", view(without="allow")).admitted
    refused = evaluate(default, "team-a", view(("p", grant())))
    assert "default route and defaultRoute is not allowed" in refused.message
    assert evaluate(default, "team-a", view(("p", grant(defaultRoute="allowed")))).admitted


def test_no_policy_means_deny_by_default() -> None:
    got = evaluate(spec(), "team-a", view())
    assert not got.admitted and "no VpnTunnelPolicy grants tunnels to namespace team-a" in (
        got.message
    )


@pytest.mark.parametrize(
    ("fields", "tunnel", "fragment"),
    [
        ({"allowedDestinations": ["203.0.113.0/26"]}, {}, "outside allowedDestinations"),
        ({"allowedInsideRanges": ["169.254.20.0/24"]}, {}, "outside allowedInsideRanges"),
        ({}, {"routes": [{"to": "203.0.113.128/25", "table": 100}]}, "table 100"),
        ({"allowedTables": [100]}, {}, "table 254 is not in allowedTables"),
        ({"allowedProposals": ["aes256gcm16"]}, {}, "spec.ike.proposals"),
    ],
)
def test_a_grant_narrows(fields: dict[str, Any], tunnel: dict[str, Any], fragment: str) -> None:
    got = evaluate(
        spec(tunnel.pop("routes", None), **tunnel), "team-a", view(("p", grant(**fields)))
    )
    assert not got.admitted and "VpnTunnelPolicy p: " in got.message and fragment in got.message


def test_policy_mode_remote_selectors_are_destinations() -> None:
    body = {
        "nodeName": "n1",
        "mode": "policy",
        "remote": {"address": "203.0.113.1"},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "s"}}},
        "child": {"trafficSelectors": {"local": ["203.0.113.0/28"], "remote": ["192.0.2.10/32"]}},
    }
    got = evaluate(parse_spec(body), "team-a", view(without="allow"))
    assert not got.admitted and "spec.child.trafficSelectors.remote[0]" in got.message


def test_several_policies_add_up_and_bound_nodes() -> None:
    narrow = grant(allowedDestinations=["198.51.100.200/29"], nodeSelector={"gw": "a"})
    wide = grant(
        namespaceSelector={"matchLabels": {"tenant": "a"}},
        allowedDestinations=["203.0.113.0/24"],
        nodeSelector={"gw": "b"},
    )
    other = grant(namespaceSelector={"matchLabels": {"tenant": "z"}})
    got = evaluate(spec(), "team-a", view(("narrow", narrow), ("wide", wide), ("z", other)))
    assert got.admitted and got.node_selectors == ({"gw": "b"},)
    assert got.node_allowed({"gw": "b"}) and not got.node_allowed({"gw": "a"})
    # Another namespace: only `narrow` selects it, and it does not admit the route.
    got = evaluate(spec(), "team-b", view(("narrow", narrow), ("wide", wide)))
    assert not got.admitted and "VpnTunnelPolicy narrow" in got.message
    assert "wide" not in got.message


# --- claims on a node -------------------------------------------------------------------


def holder(ref: str, second: int, s: VpnTunnelSpec, placed: bool = False) -> Holder:
    ns, name = ref.split("/")
    held = {"name": "vti1", "type": "vti", "key": 4096} if placed else None
    return holder_for(ref, (f"2026-01-01T00:00:{second:02d}Z", ns, name), s, held, "192.0.2.1")


def test_route_claim_first_come_and_anonymous_across_namespaces() -> None:
    first = holder("team-a/x", 1, spec([{"to": "203.0.113.128/25"}]), placed=True)
    me = holder(
        "team-b/y", 0, spec([{"to": "203.0.113.128/25"}], remote={"address": "203.0.113.9"})
    )
    got = claim_conflict(me, [first])
    assert got is not None and got.reason == Reason.ROUTE_IN_USE
    assert "team-a" not in got.message and "x" not in got.message.split("by")[1]
    assert "a tunnel of another namespace" in got.message
    # Different metric or table: another route as the kernel sees it.
    other = spec([{"to": "203.0.113.128/25", "metric": 10}], remote={"address": "203.0.113.9"})
    assert claim_conflict(holder("team-b/y", 0, other), [first]) is None


def test_identity_pair_claim_names_a_same_namespace_winner() -> None:
    first = holder("team-a/x", 1, spec([{"to": "203.0.113.0/26"}]))
    me = holder("team-a/y", 2, spec([{"to": "203.0.113.64/26"}]))
    got = claim_conflict(me, [first])
    assert got is not None and got.reason == Reason.IDENTITY_IN_USE
    assert "192.0.2.1 - 203.0.113.1" in got.message and "team-a/x" in got.message
