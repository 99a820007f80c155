"""`spec.healthCheck`: an ICMP echo through the tunnel to the far end's inside address.

charon's DPD proves only that the peer's IKE daemon answers; ESP dropped on the far side
while IKE still passes leaves the CHILD SA installed and the traffic lost. The probe is
what an IP SLA track is: answered, the tunnel carries; `failures` misses in a row, it is
counted as not carrying for failover (docs/ha.md).

Hostile tenants: the address must be inside one of the tunnel's own interface subnets
(checked here, by CEL and again by the agent), the agent binds the probe socket to the
tunnel's interface, and the interval has a floor and the failures a bound, so a tunnel
can neither aim the probe anywhere else nor make the agent flood.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from pydantic import Field, field_validator

from routevpn.api.base import ApiModel, cel, rules
from routevpn.api.durations import parse_duration
from routevpn.api.fields import Duration

INTERVAL_MIN_S: Final = 1.0
INTERVAL_MAX_S: Final = 60.0
INTERVAL_DEFAULT_S: Final = 1.0
FAILURES_MAX: Final = 10
FAILURES_DEFAULT: Final = 3
_IN_SUBNET_MSG: Final = (
    "spec.healthCheck.address: must be inside one of spec.interface.addresses (the far "
    "end's inside address) and not this end's own address"
)
#: CEL (at the spec): the address is in one of the interface's subnets, and not ours.
#: (Equality of two computed IPs or strings is beyond the API server's cost budget; the
#: address as a /32 or /128 not holding ours is within it.)
IN_SUBNET_RULE: Final = cel(
    "!has(self.healthCheck) || (has(self.interface) && has(self.interface.addresses) && "
    "isIP(self.healthCheck.address) && self.interface.addresses.exists(a, isCIDR(a) && "
    "cidr(a).containsIP(self.healthCheck.address) && "
    "!cidr(self.healthCheck.address + "
    "(ip(self.healthCheck.address).family() == 4 ? '/32' : '/128')).containsIP(cidr(a).ip())))",
    _IN_SUBNET_MSG,
    field_path=".healthCheck.address",
)


class HealthCheck(ApiModel):
    """An ICMP echo through the tunnel; the tunnel fails over when it goes unanswered."""

    address: str = Field(
        max_length=45,
        description=(
            "The far end's inside address to ping through the tunnel (ICMP echo, or ICMPv6 "
            "for an IPv6 address), e.g. 169.254.10.2. Must be inside one of "
            "spec.interface.addresses and not this end's own address; the probe is sent "
            "from that interface address, bound to the tunnel interface."
        ),
        json_schema_extra=rules(
            cel("isIP(self)", "spec.healthCheck.address: must be an IP address")
        ),
    )
    interval: Duration | None = Field(
        default=None,
        description=(
            f"Time between probes, and how long one waits for its answer: "
            f"{INTERVAL_MIN_S:g}s to {INTERVAL_MAX_S:g}s. Default: {INTERVAL_DEFAULT_S:g}s."
        ),
        json_schema_extra=rules(
            cel(
                f"duration(self) >= duration('{INTERVAL_MIN_S:g}s') && "
                f"duration(self) <= duration('{INTERVAL_MAX_S:g}s')",
                f"spec.healthCheck.interval: must be {INTERVAL_MIN_S:g}s to {INTERVAL_MAX_S:g}s",
            )
        ),
    )
    failures: int | None = Field(
        default=None,
        ge=1,
        le=FAILURES_MAX,
        description=(
            "Unanswered probes in a row after which the tunnel counts as not carrying "
            "traffic: while its CHILD SA is installed and another tunnel of the node to the "
            "same destination is up, its routes are demoted (reason ProbeFailed), as if its "
            "SA were down. The first answered probe brings them back (the promoted route is "
            f"added before the demoted one goes). 1..{FAILURES_MAX}. Default: "
            f"{FAILURES_DEFAULT}. Failover takes about interval times failures."
        ),
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"spec.healthCheck.address: {v!r} must be an IP address") from None
        return v

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str | None) -> str | None:
        if v is not None and not INTERVAL_MIN_S <= parse_duration(v) <= INTERVAL_MAX_S:
            raise ValueError(
                f"spec.healthCheck.interval: {v}: must be {INTERVAL_MIN_S:g}s to "
                f"{INTERVAL_MAX_S:g}s"
            )
        return v

    @property
    def interval_s(self) -> float:
        """The interval in seconds, its default applied."""
        return parse_duration(self.interval) if self.interval else INTERVAL_DEFAULT_S

    @property
    def effective_failures(self) -> int:
        """`failures`, its default applied."""
        return self.failures or FAILURES_DEFAULT


def source_for(
    address: str, interfaces: list[str]
) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
    """The interface address whose subnet holds `address` (and is not it), or None."""
    target = ipaddress.ip_address(address)
    for text in interfaces:
        iface = ipaddress.ip_interface(text)
        if iface.version == target.version and target in iface.network and iface.ip != target:
            return iface
    return None


def check_in_subnet(address: str, interfaces: list[str]) -> None:
    """Raise the message of IN_SUBNET_RULE unless `address` is inside an interface subnet."""
    if source_for(address, interfaces) is None:
        raise ValueError(f"{_IN_SUBNET_MSG} (got {address})")
