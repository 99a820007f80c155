"""The API server refuses each user mistake with a message that names the field.

One row per mistake a person writing a VpnTunnel makes. Each is sent to the real
apiserver (``kubectl create --dry-run=server``: full validation and admission, nothing
stored) and must be rejected with a message that contains the field's path and the
words of the rule — the CEL messages come from the CRD (crds/*.yaml), the others from
the API server's OpenAPI validation. A valid base manifest is accepted by the same
command, so a rejection is the mistake's doing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from support.cluster import Kubectl

Manifest = dict[str, Any]


def base() -> Manifest:
    """A valid route-mode IPv6 tunnel: the seed's case."""
    return {
        "apiVersion": "routevpn.io/v1alpha1",
        "kind": "VpnTunnel",
        "metadata": {"name": "t"},
        "spec": {
            "nodeName": "node-a",
            "local": {"address": "2001:db8:0:1::1"},
            "remote": {"address": "2001:db8:0:2::1"},
            "auth": {"type": "psk", "psk": {"secretRef": {"name": "site-b-psk"}}},
            "interface": {"type": "vti", "name": "vti1", "addresses": ["2001:db8:100::/127"]},
            "routes": [{"to": "::/0", "via": "2001:db8:100::1"}],
        },
    }


def policy_base() -> Manifest:
    """A valid policy-mode tunnel."""
    m = base()
    spec = m["spec"]
    del spec["interface"], spec["routes"]
    spec["mode"] = "policy"
    spec["local"]["address"] = "192.0.2.1"
    spec["remote"]["address"] = "198.51.100.1"
    spec["child"] = {
        "trafficSelectors": {"local": ["192.0.2.128/25"], "remote": ["203.0.113.0/24"]}
    }
    return m


@dataclass(frozen=True)
class Mistake:
    """A user mistake: how it changes a valid manifest, what the server must say."""

    id: str
    change: Callable[[Manifest], None]
    says: tuple[str, ...]
    start: Callable[[], Manifest] = base


def spec_set(path: str, value: Any) -> Callable[[Manifest], None]:
    """Set spec.<dotted path> (list indices as numbers), creating dicts on the way."""

    def change(m: Manifest) -> None:
        node: Any = m["spec"]
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
        last = keys[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return change


def spec_del(*paths: str) -> Callable[[Manifest], None]:
    """Delete spec.<dotted path> for each path."""

    def change(m: Manifest) -> None:
        for path in paths:
            node: Any = m["spec"]
            keys = path.split(".")
            for k in keys[:-1]:
                node = node[k]
            del node[keys[-1]]

    return change


def both(*changes: Callable[[Manifest], None]) -> Callable[[Manifest], None]:
    """Apply several changes in order."""

    def change(m: Manifest) -> None:
        for c in changes:
            c(m)

    return change


def set_name(name: str) -> Callable[[Manifest], None]:
    def change(m: Manifest) -> None:
        m["metadata"]["name"] = name

    return change


MISTAKES: list[Mistake] = [
    # --- where it runs
    Mistake(
        "both-placements",
        spec_set("nodeSelector", {"routevpn.io/gateway": "true"}),
        ("spec: set exactly one of nodeName or nodeSelector",),
    ),
    Mistake(
        "no-placement",
        spec_del("nodeName"),
        ("spec: set exactly one of nodeName or nodeSelector",),
    ),
    Mistake(
        "node-selector-too-many-labels",
        spec_set("nodeSelector", {f"l{i}": "x" for i in range(17)}),
        ("spec.nodeSelector", "must have at most 16 items"),
        start=lambda: _without("nodeName"),
    ),
    Mistake("empty-node-name", spec_set("nodeName", ""), ("spec.nodeName", "at least 1 chars")),
    # --- the endpoints
    Mistake(
        "wrong-family",
        spec_set("remote.address", "198.51.100.1"),
        ("spec.remote.address: must be of the same IP family as spec.local.address",),
    ),
    Mistake(
        "local-address-not-ip",
        spec_set("local.address", "gw-a.example.org"),
        ("spec.local.address: must be an IP address",),
    ),
    Mistake(
        "remote-address-garbage",
        spec_set("remote.address", "not a host!"),
        ("spec.remote.address: must be an IP address or a DNS name",),
    ),
    Mistake("missing-remote", spec_del("remote"), ("spec.remote: Required value",)),
    Mistake(
        "missing-remote-address", spec_set("remote", {}), ("spec.remote.address: Required value",)
    ),
    # --- authentication
    Mistake("missing-auth", spec_del("auth"), ("spec.auth: Required value",)),
    Mistake(
        "psk-without-secret-ref",
        spec_set("auth", {"type": "psk"}),
        ("spec.auth.psk: required when spec.auth.type is psk",),
    ),
    Mistake(
        "psk-block-without-secret-ref",
        spec_set("auth", {"type": "psk", "psk": {}}),
        ("spec.auth.psk.secretRef: Required value",),
    ),
    Mistake(
        "secret-ref-empty-name",
        spec_set("auth.psk.secretRef.name", ""),
        ("spec.auth.psk.secretRef.name", "at least 1 chars"),
    ),
    Mistake(
        "x509-without-block",
        spec_set("auth", {"type": "x509"}),
        ("spec.auth.x509: required when spec.auth.type is x509",),
    ),
    Mistake(
        "psk-and-x509-blocks",
        spec_set("auth.x509", {"secretRef": {"name": "tls"}}),
        ("spec.auth: set only the block that spec.auth.type names (psk or x509)",),
    ),
    Mistake(
        "unknown-auth-type",
        spec_set("auth.type", "rsa"),
        ('spec.auth.type: Unsupported value: "rsa"', '"psk"', '"x509"'),
    ),
    # --- the interface
    Mistake(
        "interface-name-too-long",
        spec_set("interface.name", "vti-far-too-long"),
        ("spec.interface.name", "may not be more than 15 bytes"),
    ),
    Mistake(
        "interface-name-with-space",
        spec_set("interface.name", "vti 1"),
        ("spec.interface.name", "should match"),
    ),
    Mistake(
        "vti-key-zero",
        spec_set("interface.key", 0),
        ("spec.interface.key: 0 is not allowed",),
    ),
    Mistake(
        "if-id-zero",
        both(spec_set("interface.type", "xfrm"), spec_set("interface.ifId", 0)),
        ("spec.interface.ifId: 0 is not allowed",),
    ),
    Mistake(
        "vti-key-too-large",
        spec_set("interface.key", 2**32),
        ("spec.interface.key", "less than or equal to 4294967295"),
    ),
    Mistake(
        "key-on-xfrm",
        both(spec_set("interface.type", "xfrm"), spec_set("interface.key", 42)),
        ("spec.interface.key: only for type vti",),
    ),
    Mistake(
        "if-id-on-vti",
        spec_set("interface.ifId", 42),
        ("spec.interface.ifId: only for type xfrm",),
    ),
    Mistake(
        "unknown-interface-type",
        spec_set("interface.type", "gre"),
        ('spec.interface.type: Unsupported value: "gre"',),
    ),
    Mistake(
        "mtu-too-small-for-ipv6",
        spec_set("interface.mtu", 1000),
        ("spec.interface.mtu: must be at least 1280 when the interface has an IPv6 address",),
    ),
    Mistake(
        "mtu-below-minimum",
        spec_set("interface.mtu", 500),
        ("spec.interface.mtu", "greater than or equal to 576"),
    ),
    Mistake(
        "bad-inside-cidr",
        spec_set("interface.addresses", ["2001:db8:100::/129"]),
        ("spec.interface.addresses[0]", "must be a CIDR"),
    ),
    Mistake(
        "inside-network-too-wide",
        spec_set("interface.addresses", ["2001:db8::/32"]),
        ("spec.interface.addresses[0]", "inside networks are small"),
    ),
    Mistake(
        "duplicate-inside-address",
        spec_set("interface.addresses", ["2001:db8:100::/127", "2001:db8:100::/127"]),
        ("spec.interface.addresses[1]: Duplicate value",),
    ),
    # --- routes
    Mistake(
        "bad-route-cidr",
        spec_set("routes.0.to", "2001:db8:200::/200"),
        ("spec.routes[0].to", "must be a CIDR"),
    ),
    Mistake(
        "route-host-bits",
        spec_set("routes.0.to", "2001:db8:200::1/48"),
        ("spec.routes[0]", "host bits are set"),
    ),
    Mistake(
        "route-via-not-ip",
        spec_set("routes.0.via", "far-end"),
        ("spec.routes[0].via", "must be an IP address"),
    ),
    Mistake(
        "route-via-other-family",
        spec_set("routes.0.via", "169.254.10.2"),
        ("spec.routes[0]", "must be of the same IP family as spec.routes[].to"),
    ),
    Mistake(
        "route-via-without-inside-address",
        spec_set("routes.0", {"to": "203.0.113.0/24", "via": "169.254.10.2"}),
        ("spec.routes[].via: the interface has no inside address of the next hop's family",),
    ),
    Mistake(
        "route-table-zero",
        spec_set("routes.0.table", 0),
        ("spec.routes[0].table", "greater than or equal to 1"),
    ),
    Mistake(
        "route-metric-negative",
        spec_set("routes.0.metric", -1),
        ("spec.routes[0].metric", "greater than or equal to 0"),
    ),
    # --- mode
    Mistake(
        "unknown-mode",
        spec_set("mode", "tunnel"),
        ('spec.mode: Unsupported value: "tunnel"', '"route"', '"policy"'),
    ),
    Mistake(
        "routes-in-policy-mode",
        spec_set("routes", [{"to": "203.0.113.0/24"}]),
        ("spec.interface, spec.routes: not allowed in policy mode",),
        start=policy_base,
    ),
    Mistake(
        "interface-in-policy-mode",
        spec_set("interface", {"type": "vti"}),
        ("spec.interface, spec.routes: not allowed in policy mode",),
        start=policy_base,
    ),
    Mistake(
        "policy-mode-without-selectors",
        spec_del("child"),
        ("spec.child.trafficSelectors: required in policy mode",),
        start=policy_base,
    ),
    Mistake(
        "traffic-selector-not-cidr",
        spec_set("child.trafficSelectors.local", ["192.0.2.300/25"]),
        ("spec.child.trafficSelectors.local[0]", "must be a CIDR"),
        start=policy_base,
    ),
    Mistake(
        "empty-traffic-selector",
        spec_set("child.trafficSelectors.remote", []),
        ("spec.child.trafficSelectors.remote", "at least 1 items"),
        start=policy_base,
    ),
    # --- IKE and CHILD SA settings
    Mistake(
        "child-rekey-not-before-lifetime",
        spec_set("child", {"lifetime": "1h", "rekeyMargin": "50m", "rekeyFuzz": "10m"}),
        ("spec.child: rekeyMargin + rekeyFuzz must be shorter than lifetime",),
    ),
    Mistake(
        "ike-lifetime-shorter-than-default-rekey",
        spec_set("ike", {"lifetime": "30m"}),
        ("spec.ike: rekeyMargin + rekeyFuzz must be shorter than lifetime",),
    ),
    Mistake(
        "duration-in-words",
        spec_set("child", {"lifetime": "1 hour"}),
        ("spec.child.lifetime", "should match"),
    ),
    Mistake(
        "ike-version-3",
        spec_set("ike", {"version": 3}),
        ("spec.ike.version", "less than or equal to 2"),
    ),
    Mistake(
        "proposal-with-spaces",
        spec_set("ike", {"proposals": ["AES256 GCM"]}),
        ("spec.ike.proposals[0]", "should match"),
    ),
    Mistake(
        "unknown-dpd-action",
        spec_set("ike", {"dpd": {"action": "reboot"}}),
        ('spec.ike.dpd.action: Unsupported value: "reboot"',),
    ),
    Mistake(
        "unknown-start-action",
        spec_set("child", {"startAction": "always"}),
        ('spec.child.startAction: Unsupported value: "always"',),
    ),
    Mistake(
        "replay-window-too-large",
        spec_set("child", {"replayWindow": 100000}),
        ("spec.child.replayWindow", "less than or equal to 4096"),
    ),
    # --- structure
    Mistake("unknown-field", spec_set("foo", 1), ('unknown field "spec.foo"',)),
    Mistake(
        "unknown-nested-field",
        spec_set("interface.vlan", 7),
        ('unknown field "spec.interface.vlan"',),
    ),
    Mistake(
        "misspelled-field",
        both(spec_del("nodeName"), spec_set("node_name", "node-a")),
        ('unknown field "spec.node_name"',),
    ),
    Mistake(
        "wrong-type",
        spec_set("interface.mtu", "1400"),
        ("spec.interface.mtu", "must be of type integer"),
    ),
    Mistake(
        "tunnel-name-too-long",
        set_name("t" * 254),
        ("metadata.name", "must be no more than 253 characters"),
    ),
    Mistake(
        "tunnel-name-uppercase",
        set_name("Site-B"),
        ("metadata.name", "a lowercase RFC 1123 subdomain"),
    ),
]


def _without(*keys: str) -> Manifest:
    m = base()
    for k in keys:
        del m["spec"][k]
    return m


def create_dry_run(kubectl: Kubectl, namespace: str, manifest: Manifest) -> Any:
    """``kubectl create --dry-run=server`` with strict field validation."""
    return kubectl(
        "create",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(manifest),
        check=False,
    )


def test_table_is_big_enough() -> None:
    assert len(MISTAKES) >= 30
    assert len({m.id for m in MISTAKES}) == len(MISTAKES)


@pytest.mark.parametrize("start", [base, policy_base], ids=["route", "policy"])
def test_bases_are_accepted(
    crd: list[str], kubectl: Kubectl, namespace: str, start: Callable[[], Manifest]
) -> None:
    res = create_dry_run(kubectl, namespace, start())
    assert res.returncode == 0, res.stderr
    assert "created (server dry run)" in res.stdout


def bgp_base() -> Manifest:
    """A valid dual-stack BGP tunnel: every optional field of spec.bgp set, at its edge."""
    m = base()
    spec = m["spec"]
    spec["interface"]["addresses"] = ["169.254.10.1/30", "2001:db8:100::/127"]
    spec["bgp"] = {
        "peerASN": 4294967295,
        "localASN": 1,
        "peerAddresses": ["169.254.10.2", "2001:db8:100::1"],
        "holdTime": 3,
        "bfd": True,
        "advertise": ["192.0.2.0/24", "2001:db8:300::/48"],
        "accept": ["0.0.0.0/0", "2001:db8:200::/48"],
        "maxPrefixes": 10000,
        "table": 4294967295,
    }
    return m


def test_bgp_tunnel_is_accepted_as_written(
    crd: list[str], kubectl: Kubectl, namespace: str
) -> None:
    """The BGP rules refuse mistakes (tests/data/invalid-vpntunnels.yaml), not this."""
    manifest = bgp_base()
    res = kubectl(
        "create", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-",
        "-o", "yaml", input=yaml.safe_dump(manifest), check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["spec"]["bgp"] == manifest["spec"]["bgp"]  # no defaults


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_mistake_is_rejected_naming_the_field(
    crd: list[str], kubectl: Kubectl, namespace: str, mistake: Mistake
) -> None:
    manifest = copy.deepcopy(mistake.start())
    mistake.change(manifest)
    res = create_dry_run(kubectl, namespace, manifest)
    assert res.returncode != 0, f"accepted:\n{yaml.safe_dump(manifest)}"
    for text in mistake.says:
        assert text in res.stderr, f"{text!r} not in the server's message:\n{res.stderr}"
