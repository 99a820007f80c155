"""Delivered Secret names: unique for every (namespace, name), valid for every legal length."""

from __future__ import annotations

import re
import string

import pytest

from routevpn.api import naming

# A DNS-1123 subdomain, which Secret names must be.
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _valid(name: str) -> bool:
    return len(name) <= 253 and bool(SUBDOMAIN.match(name))


def test_the_old_collision_is_gone() -> None:
    # Both were `tunnel-a-b-c`: one tunnel could be keyed with the other's PSK.
    assert naming.secret_name("a", "b-c") != naming.secret_name("a-b", "c")


LONG_NS = "n" * 62 + "1"
PAIRS = [
    ("a", "b-c"),
    ("a-b", "c"),
    ("prod", "site-b"),
    ("prod", "x.y.z"),
    (LONG_NS, "t" * 253),
    (LONG_NS, "t" * 252 + "u"),
    (LONG_NS, "t" * 180 + "-" * 20 + "t" * 53),
    (LONG_NS, "t" * 100 + "." + "t" * 152),
    ("a", "t" * 253),
    ("b", "t" * 253),
    ("ab", "t" * 252),
    (LONG_NS, "t" * 240),
]


@pytest.mark.parametrize(("ns", "name"), PAIRS)
def test_every_legal_length_gives_a_valid_name(ns: str, name: str) -> None:
    got = naming.secret_name(ns, name)
    assert _valid(got), got
    assert got.startswith(("tunnel.", "tunnel-h."))


def test_names_are_unique_over_many_pairs_and_both_forms() -> None:
    pairs = set(PAIRS)
    letters = string.ascii_lowercase[:4]
    for ns in ("a", "a-b", "b", LONG_NS):
        for n in (1, 60, 180, 189, 190, 253):
            for c in letters:
                pairs.add((ns, c * n))
                pairs.add((ns, "x" * (n - 1) + c))
    names = {naming.secret_name(ns, n) for ns, n in pairs}
    assert len(names) == len(pairs)


def test_a_crafted_plain_name_never_equals_a_hashed_one() -> None:
    long_name = "t" * 253
    hashed = naming.secret_name("a", long_name)
    assert hashed.startswith("tunnel-h.a.")
    # The hashed name's tail as another tunnel's own name, in the same namespace:
    crafted = hashed[len("tunnel-h.a.") :]
    assert naming.secret_name("a", crafted) != hashed


def test_current_delivered_accepts_only_the_current_name() -> None:
    ann = naming.delivered_annotations("a-b", "c")
    current = {"name": naming.secret_name("a-b", "c"), "annotations": ann}
    assert naming.current_delivered(current) == ("a-b", "c")
    # The name an older release gave it, and another tunnel's name: both stale.
    assert naming.current_delivered({"name": "tunnel-a-b-c", "annotations": ann}) is None
    other = {"name": naming.secret_name("a", "b-c"), "annotations": ann}
    assert naming.current_delivered(other) is None
    assert naming.current_delivered({"name": naming.secret_name("a-b", "c")}) is None


def test_agent_lease_name_is_plain_for_every_usual_node_name() -> None:
    assert naming.agent_lease_name("node-a") == "routevpn-agent-node-a"
    assert naming.agent_lease_name("gw-1.example.com") == "routevpn-agent-gw-1.example.com"


@pytest.mark.parametrize("length", [237, 238, 239, 240, 253])
def test_agent_lease_name_is_valid_and_unique_at_every_node_name_length(length: int) -> None:
    node = ("n" * (length - 1)) + "x"
    other = ("n" * (length - 1)) + "y"
    got = naming.agent_lease_name(node)
    assert _valid(got), got
    assert got != naming.agent_lease_name(other)
    hashed = len(naming.AGENT_LEASE_PREFIX) + length > 253
    assert got.startswith(naming.AGENT_LEASE_HASHED_PREFIX if hashed else naming.AGENT_LEASE_PREFIX)


def test_agent_lease_hashed_name_never_equals_a_plain_one() -> None:
    long_node = "n" * 250
    hashed = naming.agent_lease_name(long_node)
    # A node named after the hashed form's tail gets a plain name with a dash there.
    crafted = hashed[len(naming.AGENT_LEASE_HASHED_PREFIX) :]
    assert naming.agent_lease_name(crafted) != hashed
