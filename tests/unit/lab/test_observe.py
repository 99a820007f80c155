"""Parsers of `ip xfrm` output and tcpdump text (samples from the lab guest)."""

from __future__ import annotations

from support.observe import (
    classify,
    merge,
    parse_policies,
    parse_states,
    parse_xfrm_stat,
    xfrm_stat_delta,
)

STATES = """\
src 192.0.2.1 dst 192.0.2.2
\tproto esp spi 0xc1234567(3240314215) reqid 1(0x00000001) mode tunnel
\treplay-window 0 seq 0x00000000 flag af-unspec (0x00100000)
\tmark 0x2a/0xffffffff
\taead rfc4106(gcm(aes)) 0x00112233445566778899aabbccddeeff0011223344 (288 bits) 128
\tlifetime current:
\t  504(bytes), 6(packets)
\t  add 2025-11-25 12:00:00 use 2025-11-25 12:00:01
src 192.0.2.2 dst 192.0.2.1
\tproto esp spi 0xc7654321(3345302305) reqid 1(0x00000001) mode tunnel
\tif_id 0x2b
\tlifetime current:
\t  0(bytes), 0(packets)
"""

POLICIES = """\
src 198.51.100.0/24 dst 203.0.113.0/24
\tdir out priority 375423 ptype main
\ttmpl src 192.0.2.1 dst 192.0.2.2
\t\tproto esp spi 0xc7654321 reqid 1 mode tunnel
src 0.0.0.0/0 dst 0.0.0.0/0
\tdir in priority 399999 ptype main
\tmark 0x2a/0xffffffff
\ttmpl src 192.0.2.2 dst 192.0.2.1
\t\tproto esp reqid 1 mode tunnel
src ::/0 dst ::/0
\tsocket in priority 0 ptype main
"""


def test_states_parse_counters_marks_and_never_keep_the_key() -> None:
    a, b = parse_states(STATES)
    assert (a.src, a.dst, a.spi, a.mode, a.mark, a.if_id) == (
        "192.0.2.1",
        "192.0.2.2",
        "0xc1234567",
        "tunnel",
        "0x2a/0xffffffff",
        None,
    )
    assert (a.bytes, a.packets) == (504, 6)
    assert (b.if_id, b.mark, b.bytes) == ("0x2b", None, 0)
    assert "00112233" not in repr(a)


def test_policies_parse_direction_template_and_mark() -> None:
    out, wide = parse_policies(POLICIES)  # the socket policy has no "dir": skipped
    assert (out.dir, out.src, out.dst, out.tmpl_proto, out.tmpl_mode, out.mark) == (
        "out",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "esp",
        "tunnel",
        None,
    )
    assert (wide.dir, wide.mark) == ("in", "0x2a/0xffffffff")


def test_classify_counts_esp_and_clear_pings_only() -> None:
    lines = [
        "12:00:00.1 IP 192.0.2.1 > 192.0.2.2: ESP(spi=0xc1234567,seq=0x1), length 120",
        "12:00:00.2 IP6 2001:db8:0:1::1 > 2001:db8:0:2::1: ESP(spi=0xc7654321,seq=0x1), length 140",
        "12:00:00.3 IP6 fe80::1 > ff02::1:ff00:1: ICMP6, neighbor solicitation, who has x",
        "12:00:00.4 IP 198.51.100.1 > 203.0.113.1: ICMP echo request, id 6, seq 2, length 64",
        "12:00:00.5 IP6 2001:db8:a::1 > 2001:db8:b::1: ICMP6, echo reply, id 7, seq 1, length 64",
    ]
    got = classify(lines)
    assert (got.esp, got.clear_echo, got.total) == (2, 2, 5)
    both = merge(got, classify(lines[:1]))
    assert (both.esp, both.clear_echo, both.total) == (3, 2, 6)


def test_xfrm_stat_parses_and_reports_only_what_moved() -> None:
    before = parse_xfrm_stat("XfrmInError             \t0\nXfrmInNoStates          \t3\n")
    assert before == {"XfrmInError": 0, "XfrmInNoStates": 3}
    after = parse_xfrm_stat("XfrmInError 0\nXfrmInNoStates 5\nXfrmInStateInvalid 2\n")
    assert xfrm_stat_delta(before, after) == {"XfrmInNoStates": 2, "XfrmInStateInvalid": 2}
