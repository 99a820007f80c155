"""The MSS clamp's pure parts: the rules wanted, the `nft -f` script, and the listing
read back (nft's own JSON of a table `render` wrote, recorded from nftables 1.0.6)."""

from __future__ import annotations

import json

import pytest

from routevpn.dataplane import mss
from routevpn.dataplane.mss import ClampError, ClampRule


def test_each_interface_gets_both_directions_and_families_below_its_mtu() -> None:
    rules = mss.rules_for({"vti1": 1438})
    assert sorted(rules) == [
        ClampRule("vti1", "iifname", "ipv4", 1398),
        ClampRule("vti1", "iifname", "ipv6", 1378),
        ClampRule("vti1", "oifname", "ipv4", 1398),
        ClampRule("vti1", "oifname", "ipv6", 1378),
    ]


def test_the_script_replaces_routevpns_table_as_a_whole() -> None:
    script = mss.render(mss.rules_for({"vti1": 1400}))
    lines = script.splitlines()
    # create-if-missing, delete, create: one transaction, valid with or without the table
    assert lines[:3] == [
        "table inet routevpn",
        "delete table inet routevpn",
        "table inet routevpn {",
    ]
    assert "\t\ttype filter hook forward priority -150; policy accept;" in lines
    assert (
        '\t\toifname "vti1" meta nfproto ipv4 tcp flags & (syn | rst) == syn '
        "tcp option maxseg size > 1360 tcp option maxseg size set 1360" in lines
    )
    assert sum("maxseg size set" in ln for ln in lines) == 4
    # nothing but routevpn's own table is ever named
    assert all("table inet routevpn" in ln for ln in lines if "table" in ln)


def test_no_interface_means_the_table_is_deleted() -> None:
    assert mss.render(frozenset()) == "table inet routevpn\ndelete table inet routevpn\n"


@pytest.mark.parametrize("name", ['vti1"; flush ruleset; "', "a b", "", "x" * 16, "vti\n1"])
def test_a_name_that_could_escape_the_rule_is_refused(name: str) -> None:
    with pytest.raises(ClampError):
        mss.rules_for({name: 1400})


def test_an_mtu_too_small_for_a_segment_is_refused() -> None:
    with pytest.raises(ClampError):
        mss.rules_for({"vti1": 60})


def _rule(direction: str, ifname: str, family: str, value: int) -> dict[str, object]:
    tcp_mss = {"tcp option": {"name": "maxseg", "field": "size"}}
    syn = {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "rst"]]}
    return {
        "rule": {
            "family": "inet",
            "table": "routevpn",
            "chain": "mss-clamp",
            "handle": 2,
            "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": direction}}, "right": ifname}},
                {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": family}},
                {"match": {"op": "==", "left": syn, "right": "syn"}},
                {"match": {"op": ">", "left": tcp_mss, "right": value}},
                {"mangle": {"key": tcp_mss, "value": value}},
            ],
        }
    }


def _listing(*items: dict[str, object]) -> dict[str, object]:
    chain = {"family": "inet", "table": "routevpn", "name": "mss-clamp", "handle": 1,
             "type": "filter", "hook": "forward", "prio": -150, "policy": "accept"}  # fmt: skip
    return {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "routevpn", "handle": 2}},
            {"chain": chain},
            *items,
        ]
    }


def test_a_listing_of_what_render_wrote_reads_back_as_the_same_rules() -> None:
    want = mss.rules_for({"vti1": 1438})
    listing = _listing(*(_rule(r.direction, r.ifname, r.family, r.mss) for r in want))
    assert mss.parse(json.loads(json.dumps(listing))) == want


def test_anything_else_in_the_table_reads_as_foreign_so_the_table_is_replaced() -> None:
    want = mss.rules_for({"vti1": 1438})
    odd = _rule("oifname", "vti1", "ipv4", 1398)
    odd["rule"]["expr"].append({"counter": {"packets": 0, "bytes": 0}})  # type: ignore[index]
    assert mss.parse(_listing(odd)) == mss.FOREIGN_SHAPE != want
    other_chain = _listing()
    other_chain["nftables"][2]["chain"]["hook"] = "output"  # type: ignore[index]
    assert mss.parse(other_chain) == mss.FOREIGN_SHAPE
    changed = _rule("oifname", "vti1", "ipv4", 1300)
    assert mss.parse(_listing(changed)) != want
