"""spec.bgp: the example round-trips, defaults stay out of the object, the wire is camelCase.

Each rule's refusals are in the shared mistake table (tests/data/invalid-vpntunnels.yaml,
the `bgp-` cases), which the models (test_spec.py) and the API server (tests/cluster) run.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from routevpn.api.bgp import Bgp
from routevpn.api.tunnel import VpnTunnel

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples" / "bgp").glob("*.yaml"))
DOC_RANGES = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "169.254.0.0/16",
              "2001:db8::/32")
]  # fmt: skip


def tunnels(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "VpnTunnel"]


def test_there_is_a_bgp_example() -> None:
    assert EXAMPLES and all(tunnels(p) for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_bgp_example_is_valid_round_trips_and_uses_documentation_addresses(path: Path) -> None:
    for doc in tunnels(path):
        tunnel = VpnTunnel.from_wire({**doc, "metadata": {**doc["metadata"], "namespace": "t"}})
        assert tunnel.spec.bgp is not None
        assert tunnel.spec.to_wire() == doc["spec"]  # no defaults sneak in
        bgp = doc["spec"]["bgp"]
        texts = [*bgp["peerAddresses"], *bgp["accept"], *bgp.get("advertise", [])]
        for text in texts:
            network = ipaddress.ip_network(text)
            assert any(
                network.version == r.version and network.subnet_of(r)  # type: ignore[arg-type]
                for r in DOC_RANGES
            ), text


def minimal(**extra: Any) -> dict[str, Any]:
    return {"peerASN": 65001, "peerAddresses": ["169.254.10.2"], "accept": ["198.51.100.0/24"],
            **extra}  # fmt: skip


def test_defaults_are_applied_in_code_not_written_to_the_object() -> None:
    bgp = Bgp.model_validate(minimal())
    assert (bgp.effective_hold_time, bgp.effective_max_prefixes) == (30, 100)
    assert bgp.bfd is None and bgp.local_asn is None and bgp.table is None
    assert bgp.to_wire() == minimal()


def test_wire_names_are_the_contract() -> None:
    wire = Bgp.model_validate(
        minimal(
            localASN=4200000000,
            holdTime=90,
            bfd=True,
            advertise=["192.0.2.0/24"],
            maxPrefixes=10000,
            table=100,
        )
    ).to_wire()
    assert set(wire) == {"peerASN", "localASN", "peerAddresses", "holdTime", "bfd",
                         "advertise", "accept", "maxPrefixes", "table"}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"accept": ["198.51.100.0/24", "198.51.100.0/24"]}, "spec.bgp.accept: duplicate"),
        ({"advertise": ["192.0.2.0/24", "192.0.2.0/24"]}, "spec.bgp.advertise: duplicate"),
        ({"advertise": ["192.0.2.1"]}, "spec.bgp.advertise[]: must be a CIDR"),
        ({"localASN": 23456}, "spec.bgp.localASN: must be an AS number"),
        ({"peerAddresses": ["169.254.10.2", "169.254.10.3"]}, "at most one IPv4 and one IPv6"),
    ],
)
def test_model_refusals_name_the_field(extra: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says.replace("[", r"\[").replace("]", r"\]")):
        Bgp.model_validate(minimal(**extra))
