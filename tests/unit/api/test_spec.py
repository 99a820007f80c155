"""The VpnTunnel models: every example is valid, every listed mistake is refused by name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from routevpn.api.fields import InterfaceType, Mode
from routevpn.api.spec import VpnTunnelSpec, parse_spec
from routevpn.api.tunnel import VpnTunnel
from support.mistakes import apply_set, load_table

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
TABLE = load_table()


def tunnels_in(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "VpnTunnel"]


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = "spec"
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _norm(text: str) -> str:
    return re.sub(r"\[\d+\]", "[]", text)


def test_examples_exist_for_each_kind_of_tunnel() -> None:
    specs = [parse_spec(t["spec"]) for p in EXAMPLES for t in tunnels_in(p)]
    kinds = {
        (s.effective_mode, s.interface.type if s.interface else None, s.auth.type) for s in specs
    }
    assert (Mode.ROUTE, InterfaceType.VTI, "psk") in kinds
    assert (Mode.ROUTE, InterfaceType.XFRM, "psk") in kinds
    assert (Mode.POLICY, None, "psk") in kinds
    assert any(s.auth.type == "x509" for s in specs)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_and_round_trips(path: Path) -> None:
    docs = tunnels_in(path)
    assert docs, f"{path.name} holds no VpnTunnel"
    for doc in docs:
        tunnel = VpnTunnel.from_wire({**doc, "metadata": {**doc["metadata"], "namespace": "t"}})
        # What we'd write back is exactly what the user wrote: no defaults sneak in.
        assert tunnel.spec.to_wire() == doc["spec"]


def test_seed_example_matches_the_seed() -> None:
    (doc,) = tunnels_in(ROOT / "examples/seed-ipv6-vti.yaml")
    spec = parse_spec(doc["spec"])
    assert spec.local is not None and spec.local.address == "2001:db8:0:1::1"
    assert spec.remote.address == "2001:db8:0:2::1"
    assert spec.interface is not None and spec.interface.name == "vti1"
    assert spec.interface.addresses == ["2001:db8:100::/127"]
    assert spec.routes is not None and (spec.routes[0].to, spec.routes[0].via) == (
        "::/0",
        "2001:db8:100::1",
    )


def test_base_of_the_invalid_table_is_valid() -> None:
    parse_spec(TABLE["base"])


def test_invalid_table_is_large_enough() -> None:
    assert len(TABLE["cases"]) >= 30
    assert len({c["name"] for c in TABLE["cases"]}) == len(TABLE["cases"])


@pytest.mark.parametrize("case", TABLE["cases"], ids=lambda c: c["name"])
def test_invalid_spec_is_refused_naming_the_field(case: dict[str, Any]) -> None:
    spec = apply_set(TABLE["base"], case["set"])
    with pytest.raises(ValidationError) as info:
        VpnTunnelSpec.model_validate(spec)
    texts = [f"{_dotted(e['loc'])}: {e['msg']}" for e in info.value.errors()]
    field = _norm(case["field"])
    assert any(field in _norm(t) for t in texts), f"{case['field']} not named in {texts}"
    if "message" in case:
        # The models say what the CRD's CEL rule says, in the same words.
        assert any(case["message"] in t for t in texts), (case["message"], texts)


def test_defaults_are_not_written_into_the_spec() -> None:
    spec = parse_spec(TABLE["base"])
    assert spec.mode is None and spec.effective_mode is Mode.ROUTE
    assert "mode" not in spec.to_wire()


def test_spec_is_immutable() -> None:
    spec = parse_spec(TABLE["base"])
    with pytest.raises(ValidationError):
        spec.node_name = "other"  # type: ignore[misc]
