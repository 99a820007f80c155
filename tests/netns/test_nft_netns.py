"""routevpn's nftables table (the TCP MSS clamp) on a real kernel, in a namespace the
test makes: the adapter writes, diffs and removes only `table inet routevpn`; a
foreign table beside it, in the same family and hook, is left exactly as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from routevpn.dataplane import mss
from routevpn.dataplane.facts import Change
from routevpn.dataplane.nft import NftAdapter
from support.dataplane import in_netns
from support.netns import Netns
from support.tiers import missing

# Someone else's firewall: a table in the same family and hook as ours, and one in ip.
FOREIGN = """
table inet fw {
	chain filter_forward {
		type filter hook forward priority 0; policy accept;
		iifname "vti1" tcp dport 22 counter drop
	}
}
table ip nat {
	chain post {
		type nat hook postrouting priority 100; policy accept;
		oifname "eth0" masquerade
	}
}
"""


@pytest.fixture
def nft_ns(node_ns: Netns, tmp_path: Path) -> Netns:
    if shutil.which("nft") is None:
        missing("nftables `nft`")
    (tmp_path / "foreign.nft").write_text(FOREIGN)
    node_ns.run("nft", "-f", str(tmp_path / "foreign.nft"))
    return node_ns


async def _sync(links: dict[str, int]) -> list[Change]:
    return await NftAdapter().sync(links)


def foreign(ns: Netns) -> str:
    """Everything but routevpn's table, as nft lists it (handles included)."""
    tables = json.loads(ns.run("nft", "-j", "list", "tables"))["nftables"]
    names = [(t["table"]["family"], t["table"]["name"]) for t in tables if "table" in t]
    return "\n".join(
        ns.run("nft", "-a", "list", "table", fam, name)
        for fam, name in sorted(names)
        if (fam, name) != (mss.FAMILY, mss.TABLE)
    )


def ours(ns: Netns) -> frozenset[mss.ClampRule] | None:
    out = ns.run("nft", "-j", "list", "table", mss.FAMILY, mss.TABLE, check=False)
    return mss.parse(json.loads(out)) if out.strip() else None


def test_the_table_follows_the_interfaces_and_nothing_foreign_moves(nft_ns: Netns) -> None:
    before = foreign(nft_ns)
    assert "iifname" in before and "masquerade" in before
    assert ours(nft_ns) is None

    first = in_netns(nft_ns, _sync, {"vti1": 1438})
    assert [c.action for c in first] == ["replaced"]
    assert ours(nft_ns) == mss.rules_for({"vti1": 1438})
    assert in_netns(nft_ns, _sync, {"vti1": 1438}) == []  # no difference, no write

    in_netns(nft_ns, _sync, {"vti1": 1438, "xfrm7": 1400})
    assert ours(nft_ns) == mss.rules_for({"vti1": 1438, "xfrm7": 1400})
    in_netns(nft_ns, _sync, {"xfrm7": 1380})  # one gone, one MTU changed
    assert ours(nft_ns) == mss.rules_for({"xfrm7": 1380})
    assert foreign(nft_ns) == before

    last = in_netns(nft_ns, _sync, {})
    assert [c.action for c in last] == ["deleted"]
    assert ours(nft_ns) is None
    assert in_netns(nft_ns, _sync, {}) == []
    assert foreign(nft_ns) == before


def test_drift_in_routevpns_table_is_repaired_as_a_whole(nft_ns: Netns) -> None:
    before = foreign(nft_ns)
    in_netns(nft_ns, _sync, {"vti1": 1438})
    listed = json.loads(nft_ns.run("nft", "-j", "-a", "list", "table", "inet", "routevpn"))
    handle = next(i["rule"]["handle"] for i in listed["nftables"] if "rule" in i)
    nft_ns.run("nft", "delete", "rule", "inet", "routevpn", mss.CHAIN, "handle", str(handle))
    nft_ns.run("nft", "add", "rule", "inet", "routevpn", mss.CHAIN, "counter")  # a stranger
    assert ours(nft_ns) == mss.FOREIGN_SHAPE

    repaired = in_netns(nft_ns, _sync, {"vti1": 1438})
    assert [c.action for c in repaired] == ["replaced"]
    assert ours(nft_ns) == mss.rules_for({"vti1": 1438})
    assert foreign(nft_ns) == before
    in_netns(nft_ns, _sync, {})


def test_an_empty_table_left_behind_goes_when_nothing_is_wanted(nft_ns: Netns) -> None:
    nft_ns.run("nft", "add", "table", "inet", "routevpn")
    assert ours(nft_ns) == frozenset()
    assert [c.action for c in in_netns(nft_ns, _sync, {})] == ["deleted"]
    assert ours(nft_ns) is None
