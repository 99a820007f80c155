"""docs/metrics.md is what the code exports, and the metrics follow Prometheus' naming
conventions (https://prometheus.io/docs/practices/naming/), checked over the registries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from routevpn.metricsdoc import MetricDoc, all_docs, render

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
#: Labels a series may carry: the tunnel and its node, and small fixed sets of values.
#: Anything else (an address, an SPI, a reason, a message) has unbounded values.
IDENTITY = {"namespace", "name", "node"}
BOUNDED = {"state", "ready", "result", "kind", "what", "sa", "condition"}
#: A BGP session's peer address: an address, but at most two per tunnel (spec.bgp allows
#: one peer per IP family), so a tunnel's series stay bounded; issue 16's contract names it.
PER_TUNNEL = {"peer"}
BASE_UNITS = ("seconds", "bytes", "packets")
NON_BASE = re.compile(
    r"_(milli|micro|nano)?(ms|us|ns|minutes?|hours?|days?|kb|mb|gb|kib|mib|gib)(_|$)"
)


def test_the_doc_is_generated_from_the_code() -> None:
    assert DOC.read_text() == render(), "run hack/generate.sh"


def test_every_metric_has_a_sentence_of_help() -> None:
    for d in all_docs():
        assert d.help.endswith((".", ")")) and len(d.help) > 15, d


@pytest.mark.parametrize("d", all_docs(), ids=lambda d: d.name)
def test_naming_conventions(d: MetricDoc) -> None:
    assert re.fullmatch(r"routevpn_[a-z][a-z0-9_]*[a-z0-9]", d.name), d.name
    assert (d.type == "counter") == d.name.endswith("_total"), "_total is for counters only"
    stem = d.name.removesuffix("_total").removesuffix("_timestamp_seconds")
    assert not NON_BASE.search(d.name), f"{d.name}: use base units (seconds, bytes)"
    for unit in BASE_UNITS:
        # a unit is the last word of the name (before _total), never in the middle
        assert f"_{unit}_" not in stem + "_" or stem.endswith(f"_{unit}"), d.name
    if d.type == "histogram":
        assert d.name.endswith(("_seconds", "_bytes")), f"{d.name}: a histogram has a unit"


@pytest.mark.parametrize("d", all_docs(), ids=lambda d: d.name)
def test_labels_are_bounded(d: MetricDoc) -> None:
    labels = set(d.labels)
    allowed = (
        IDENTITY | BOUNDED | (PER_TUNNEL if d.name.startswith("routevpn_tunnel_bgp_") else set())
    )
    assert labels <= allowed, f"{d.name}: {labels - allowed}"
    assert len(labels & BOUNDED) <= 1, f"{d.name}: one bounded label at most"
    if {"namespace", "name"} & labels:
        assert {"namespace", "name", "node"} <= labels, f"{d.name}: a tunnel with its node"


def test_the_convention_check_can_fail() -> None:
    """The checks above refuse what they are meant to refuse."""
    bad = MetricDoc("agent", "routevpn_tunnel_bytes_in", "gauge", ("namespace", "name"), "x.")
    with pytest.raises(AssertionError):
        test_naming_conventions(
            MetricDoc("agent", "routevpn_tunnel_bytes_total_x", "gauge", (), "Bytes.")
        )
    with pytest.raises(AssertionError):
        test_naming_conventions(bad)
    with pytest.raises(AssertionError):
        test_labels_are_bounded(MetricDoc("agent", "routevpn_x", "gauge", ("spi",), "x."))
    with pytest.raises(AssertionError):
        test_labels_are_bounded(bad)
