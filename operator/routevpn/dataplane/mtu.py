"""The inner MTU of an ESP tunnel: the largest inner packet that leaves in one outer
packet. Pure: charon's algorithm names in, bytes out.

In tunnel mode the whole inner IP packet (P bytes) is the ESP payload. On the wire:

    outer IP (IPv4 20, IPv6 40) · UDP (8, only with NAT-T encapsulation)
    · ESP header (SPI 4 + sequence number 4 = 8) · IV
    · payload P · padding · pad length 1 + next header 1 (trailer 2) · ICV

P + padding + 2 must be a multiple of the cipher's block size, at least 4 (RFC 4303
§2.4: ESP aligns to 4 bytes; a CBC cipher to its block). So, for an outer MTU M:

    inner = floor((M - outer IP - UDP - 8 - IV - ICV) / block) * block - 2

which is how the kernel computes it (`esp4_get_mtu` / `esp6_get_mtu`). Figures for
M = 1500 over IPv4: AES-CBC + HMAC-SHA1-96 1438 (Cisco's and Juniper's published
figure for ESP-AES/SHA in tunnel mode), 1422 with NAT-T; AES-GCM-16 1446; over IPv6
20 less before rounding.

AEAD ciphers (AES-GCM, AES-CCM, ChaCha20-Poly1305) carry an 8-byte IV and their own
ICV (the number after GCM/CCM is the ICV in bytes) and need no integrity algorithm.
CBC ciphers carry a block-sized IV and the integrity algorithm's truncated ICV (the
last number of charon's name, in bits: HMAC_SHA2_256_128 is 16 bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ESP_HEADER = 8  # SPI + sequence number
ESP_TRAILER = 2  # pad length + next header
UDP_ENCAP = 8  # NAT-T (RFC 3948)
OUTER_IP = {4: 20, 6: 40}
MIN_ALIGN = 4

#: charon's encryption algorithm name → (IV bytes, block bytes, ICV bytes for AEAD)
_CIPHERS: dict[str, tuple[int, int, int]] = {
    "AES_CBC": (16, 16, 0),
    "CAMELLIA_CBC": (16, 16, 0),
    "3DES_CBC": (8, 8, 0),
    "BLOWFISH_CBC": (8, 8, 0),
    "AES_CTR": (8, 1, 0),
    "CAMELLIA_CTR": (8, 1, 0),
    "CHACHA20_POLY1305": (8, 1, 16),
    "NULL": (0, 1, 0),
}
_AEAD = re.compile(r"^(?:AES|CAMELLIA)_(?:GCM|CCM)_(?P<icv>8|12|16)$")
_INTEG = re.compile(r"_(?P<bits>\d+)$")


@dataclass(frozen=True, slots=True)
class Overhead:
    """What ESP puts around an inner packet, in bytes (padding aside)."""

    outer_ip: int
    udp: int
    iv: int
    icv: int
    block: int

    def inner_mtu(self, outer_mtu: int) -> int:
        """The largest inner packet that fits one outer packet of `outer_mtu` bytes."""
        room = outer_mtu - self.outer_ip - self.udp - ESP_HEADER - self.iv - self.icv
        return max(0, room // self.block * self.block - ESP_TRAILER)


def overhead(encr_alg: str, integ_alg: str, outer_family: int, udp_encap: bool) -> Overhead | None:
    """The overhead of a negotiated proposal (charon's names), None for one not known."""
    aead = _AEAD.match(encr_alg)
    if aead is not None:
        iv, block, icv = 8, 1, int(aead["icv"])
    elif encr_alg in _CIPHERS:
        iv, block, icv = _CIPHERS[encr_alg]
    else:
        return None
    if icv == 0 and integ_alg:
        bits = _INTEG.search(integ_alg)
        if bits is None:
            return None
        icv = int(bits["bits"]) // 8
    if outer_family not in OUTER_IP:
        return None
    return Overhead(
        outer_ip=OUTER_IP[outer_family],
        udp=UDP_ENCAP if udp_encap else 0,
        iv=iv,
        icv=icv,
        block=max(block, MIN_ALIGN),
    )
