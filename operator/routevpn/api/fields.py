"""Scalar types, enums and shared checks of the VpnTunnel spec.

Rules live twice, on purpose and side by side: as CEL for the CRD and as pydantic
validators; both say the same words (tests/data/invalid-vpntunnels.yaml checks it).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Annotated, Final

from pydantic import Field

from routevpn.api import naming
from routevpn.api.base import cel
from routevpn.api.durations import parse_duration

# --- scalar types ---------------------------------------------------------------------

# RE2-compatible (CEL's matches() is RE2: no look-ahead); length is bounded by maxLength.
# The last label starts with a letter, so a mistyped IPv4 address is not taken for a name.
DNS_NAME: Final = re.compile(
    r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
)
#: A Kubernetes object name (DNS-1123 subdomain), as Node names are.
DNS_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A label key (optional DNS prefix, then a name) and a label value, as Kubernetes checks them.
LABEL_KEY: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE: Final = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
#: CEL: an outer (IKE/ESP) address must be unicast: not unspecified, loopback or multicast.
UNICAST_CEL: Final = "ip(self).isGlobalUnicast() || ip(self).isLinkLocalUnicast()"
UNICAST_MSG: Final = "must be a unicast address (not unspecified, loopback or multicast)"
IFNAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
DURATION_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"
PROPOSAL_PATTERN: Final = r"^[a-z0-9_]+(-[a-z0-9_]+)*$"

#: Algorithm tokens no tenant may ask for: no encryption or integrity at all (null), and
#: ciphers, hashes and DH groups that are broken or within reach of a well-funded attacker
#: (DES/3DES: 64-bit blocks, Sweet32; MD5: collisions; modp768/modp1024: Logjam-class).
WEAK_ALGORITHMS: Final = (
    "null", "des", "3des", "md5", "md5_128", "prfmd5", "modp768", "modp1024", "modp1024s160",
)  # fmt: skip
WEAK_PROPOSAL_RE: Final = "(^|-)(" + "|".join(WEAK_ALGORITHMS) + ")(-|$)"
WEAK_PROPOSAL_MSG: Final = (
    "null encryption and broken algorithms are not allowed (" + ", ".join(WEAK_ALGORITHMS) + ")"
)

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
Proposal = Annotated[str, Field(pattern=PROPOSAL_PATTERN, max_length=128)]
Identity = Annotated[str, Field(min_length=1, max_length=255)]
Id32 = Annotated[int, Field(ge=0, le=naming.ID_MAX)]
#: Long enough for any IPv6 CIDR; bounded so the API server can cost the CEL rules.
Cidr = Annotated[str, Field(max_length=49)]


def ip_family(text: str) -> int:
    return ipaddress.ip_interface(text).version


def check_ip(value: str, field: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{field}: must be an IP address (got {value!r})") from None
    return value


def check_unicast(value: str, field: str) -> str:
    """An outer endpoint address: an IP that can terminate IKE (as UNICAST_CEL)."""
    addr = ipaddress.ip_address(check_ip(value, field))
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast:
        raise ValueError(f"{field}: {UNICAST_MSG} (got {value!r})")
    return value


def check_cidr(value: str, field: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """A CIDR with an explicit prefix length (a bare address is refused, as CEL's isCIDR does)."""
    try:
        if "/" not in value:
            raise ValueError(value)
        return ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(
            f"{field}: must be a CIDR such as 169.254.10.1/30 or 2001:db8:100::/127 (got {value!r})"
        ) from None


def weak_proposal_rule(path: str) -> dict[str, str]:
    """CEL, per proposal: none of its tokens is a broken algorithm."""
    return cel(f"!self.matches('{WEAK_PROPOSAL_RE}')", f"{path}: {WEAK_PROPOSAL_MSG}")


def check_proposals(path: str, proposals: list[str] | None) -> list[str] | None:
    """The pydantic twin of `weak_proposal_rule`: names the proposal at fault."""
    for proposal in proposals or []:
        if re.search(WEAK_PROPOSAL_RE, proposal):
            raise ValueError(f"{path}: {proposal}: {WEAK_PROPOSAL_MSG}")
    return proposals


def cel_or_default(field: str, default: str) -> str:
    """CEL: the field's value, or its documented default when unset."""
    return f"(has(self.{field}) ? self.{field} : '{default}')"


def lifetime_rule(path: str, life: str, margin: str, fuzz: str) -> dict[str, str]:
    lifetime = cel_or_default("lifetime", life)
    margin_fuzz = (
        f"duration({cel_or_default('rekeyMargin', margin)}) + "
        f"duration({cel_or_default('rekeyFuzz', fuzz)})"
    )
    rule = f"duration({lifetime}) > {margin_fuzz}"
    return cel(
        rule,
        f"{path}: rekeyMargin + rekeyFuzz must be shorter than lifetime (rekey happens "
        f"rekeyMargin..rekeyMargin+rekeyFuzz before expiry; defaults: lifetime {life}, "
        f"rekeyMargin {margin}, rekeyFuzz {fuzz})",
    )


def check_lifetimes(
    path: str, lifetime: str | None, margin: str | None, fuzz: str | None, defaults: tuple[str, ...]
) -> None:
    life_s = parse_duration(lifetime or defaults[0])
    margin_s = parse_duration(margin or defaults[1])
    fuzz_s = parse_duration(fuzz or defaults[2])
    if not margin_s + fuzz_s < life_s:
        raise ValueError(
            f"{path}: rekeyMargin + rekeyFuzz must be shorter than lifetime "
            f"({margin_s + fuzz_s:g}s >= {life_s:g}s)"
        )


# --- enums ----------------------------------------------------------------------------


class Mode(enum.StrEnum):
    """Route-based (a tunnel interface) or policy-based (kernel policies per subnet)."""

    ROUTE = "route"
    POLICY = "policy"


class InterfaceType(enum.StrEnum):
    """The kind of tunnel interface."""

    VTI = "vti"
    XFRM = "xfrm"


class AuthType(enum.StrEnum):
    """How the two IKE peers authenticate each other."""

    PSK = "psk"
    X509 = "x509"


class DpdAction(enum.StrEnum):
    """What charon does with the CHILD SA when the peer stops answering DPD."""

    RESTART = "restart"
    CLEAR = "clear"
    TRAP = "trap"
    NONE = "none"


class StartAction(enum.StrEnum):
    """When the CHILD SA is brought up."""

    START = "start"
    TRAP = "trap"
    NONE = "none"


class Encapsulation(enum.StrEnum):
    """UDP encapsulation of ESP (NAT traversal)."""

    AUTO = "auto"
    FORCE = "force"


class Toggle(enum.StrEnum):
    """A feature switch (string enum rather than a boolean, per API conventions)."""

    ENABLED = "enabled"
    DISABLED = "disabled"
