"""The inner MTU arithmetic against published figures and the kernel's own formula."""

from __future__ import annotations

import pytest

from routevpn.dataplane.mtu import overhead

# (encryption, integrity, outer family, NAT-T, outer MTU, inner MTU)
KNOWN = [
    # Cisco's and Juniper's figure for ESP-AES(-256)/SHA1 tunnel mode over 1500: 1438
    ("AES_CBC", "HMAC_SHA1_96", 4, False, 1500, 1438),
    # the same with NAT-T: 8 bytes of UDP, then rounded down to the 16-byte block
    ("AES_CBC", "HMAC_SHA1_96", 4, True, 1500, 1422),
    # SHA-256's 16-byte ICV is absorbed by the padding: still 1438
    ("AES_CBC", "HMAC_SHA2_256_128", 4, False, 1500, 1438),
    ("AES_CBC", "HMAC_SHA2_512_256", 4, False, 1500, 1422),
    # 3DES: 8-byte IV and block
    ("3DES_CBC", "HMAC_SHA1_96", 4, False, 1500, 1446),
    # AEAD: 8-byte IV, 16-byte ICV, 4-byte alignment: 20 + 8 + 8 + 16 + 2 = 54
    ("AES_GCM_16", "", 4, False, 1500, 1446),
    ("AES_GCM_16", "", 6, False, 1500, 1426),
    ("AES_GCM_16", "", 4, True, 1500, 1438),
    ("AES_GCM_12", "", 4, False, 1500, 1450),
    ("CHACHA20_POLY1305", "", 6, False, 1500, 1426),
    # a 1400-byte underlay (the MSS clamp's test path)
    ("AES_GCM_16", "", 4, False, 1400, 1346),
    ("AES_CBC", "HMAC_SHA2_256_128", 6, False, 1400, 1310),
]


@pytest.mark.parametrize(("encr", "integ", "family", "natt", "outer", "inner"), KNOWN)
def test_inner_mtu_of_known_proposals(
    encr: str, integ: str, family: int, natt: bool, outer: int, inner: int
) -> None:
    o = overhead(encr, integ, family, natt)
    assert o is not None and o.inner_mtu(outer) == inner


def kernel_esp_mtu(mtu: int, header_len: int, authsize: int, blksize: int) -> int:
    """Linux's esp4_get_mtu()/esp6_get_mtu() in tunnel mode (net_adj 0)."""
    blksize = (blksize + 3) & ~3
    return ((mtu - header_len - authsize) & ~(blksize - 1)) - 2


@pytest.mark.parametrize("outer", [576, 1280, 1399, 1400, 1436, 1492, 1500, 9000])
def test_agrees_with_the_kernels_formula(outer: int) -> None:
    cbc = overhead("AES_CBC", "HMAC_SHA2_256_128", 4, True)
    assert cbc is not None
    # header_len: outer IPv4 + UDP encap + ESP header + IV
    assert cbc.inner_mtu(outer) == kernel_esp_mtu(outer, 20 + 8 + 8 + 16, 16, 16)
    gcm = overhead("AES_GCM_16", "", 6, False)
    assert gcm is not None
    assert gcm.inner_mtu(outer) == kernel_esp_mtu(outer, 40 + 8 + 8, 16, 1)


def test_unknown_algorithms_give_no_figure() -> None:
    assert overhead("SERPENT_XTS", "HMAC_SHA1_96", 4, False) is None
    assert overhead("AES_CBC", "HMAC_WHIRLPOOL", 4, False) is None
    assert overhead("AES_GCM_16", "", 5, False) is None
