"""The hand-written peer's swanctl.conf and the ``--list-sas`` parsers (pure)."""

from __future__ import annotations

from support.charon import render_strongswan_conf
from support.swanctl import Child, Conn, child_states, ike_states, render

LIST_SAS = """\
site: #1, ESTABLISHED, IKEv2, 9fee99fde13f98e1_i* 968a2eb0090e09c8_r
  local  'a.test' @ 2001:db8:0:1::1[4500]
  remote 'b.test' @ 2001:db8:0:1::2[4500]
  AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519
  established 0s ago, rekeying in 13513s
  net: #1, reqid 1, INSTALLED, TUNNEL, ESP:AES_GCM_16-256/CURVE_25519
    installed 0s ago, rekeying in 3329s, expires in 3960s
    in  c5a1b2c3 (0x0000002a),      0 bytes,     0 packets
    out c6d4e5f6 (0x0000002a),      0 bytes,     0 packets
    local  0.0.0.0/0 ::/0
    remote 0.0.0.0/0 ::/0
other: #2, CONNECTING, IKEv2, 1111111111111111_i* 0000000000000000_r
"""


def test_list_sas_parsers_read_ike_and_child_states() -> None:
    assert ike_states(LIST_SAS) == {"site": "ESTABLISHED", "other": "CONNECTING"}
    assert child_states(LIST_SAS) == {"net": "INSTALLED"}


def test_render_route_based_child_carries_marks_and_secret() -> None:
    conn = Conn(
        "site",
        "192.0.2.1",
        "192.0.2.2",
        "a.test",
        "b.test",
        "p$k with spaces",
        [Child("vti", mark=42), Child("xfrm", if_id=43), Child("pol", local_ts="198.51.100.0/24")],
    )
    text = render([conn])
    assert "mark_in = 42\n" in text and "mark_out = 42\n" in text
    assert "if_id_in = 43\n" in text and "if_id_out = 43\n" in text
    assert 'secret = "p$k with spaces"' in text
    pol = text.split("pol {", 1)[1].split("}", 1)[0]
    assert "mark" not in pol and "if_id" not in pol
    assert "local_ts = 198.51.100.0/24" in pol
    # braces balance, so swanctl sees one connections and one secrets section
    assert text.count("{") == text.count("}")
    assert text.startswith("connections {") and "\nsecrets {" in text


def test_strongswan_conf_one_key_per_line_and_refuses_newlines() -> None:
    from pathlib import Path

    import pytest

    text = render_strongswan_conf(Path("/x/v.sock"), Path("/x/c.log"), extra={"a": "1"})
    assert "socket = unix:///x/v.sock\n" in text
    assert "path = /x/c.log\n" in text
    assert "install_routes = no\n" in text and "    a = 1\n" in text
    with pytest.raises(ValueError):
        render_strongswan_conf(Path("/x/v.sock"), Path("/x/c.log"), extra={"a": "1\nb = 2"})
