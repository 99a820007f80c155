"""Desired state of one tunnel on one node: pure, frozen, typed.

The agent translates a VpnTunnel into a `TunnelPlan`; the data plane only ever sees
plans. Every type is immutable and hashable so plans can be compared and diffed, and
no secret ever shows in a repr, a log line or an exception message.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from routevpn.api import naming

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

LinkKind = Literal["vti", "vti6", "xfrm"]
StartAction = Literal["none", "trap", "start"]
DpdAction = Literal["clear", "trap", "restart"]
CloseAction = Literal["none", "trap", "start"]
AuthKind = Literal["psk", "pubkey"]

#: The main routing table (RT_TABLE_MAIN); routes go there unless the spec says otherwise.
MAIN_TABLE = 254


class PlanError(ValueError):
    """A plan that can never be applied (inconsistent fields); names the tunnel."""


class Secret:
    """A secret string (PSK, PEM private key) that never shows in repr/str/format.

    Equality and hashing use a digest so two plans with the same secret compare equal
    without the value taking part in anything printable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call only where it is handed to charon."""
        return self._value

    def digest(self) -> str:
        """SHA-256 of the secret, for change detection (charon never returns secrets)."""
        return hashlib.sha256(self._value.encode()).hexdigest()

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.digest() == self.digest()

    def __hash__(self) -> int:
        return hash(self.digest())

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # Plans cross process boundaries in tests (fork into a netns); keep them picklable.
        return (Secret, (self._value,))


@dataclass(frozen=True, slots=True)
class LinkPlan:
    """The tunnel interface: VTI (IPv4 outer), VTI6 (IPv6 outer) or XFRM interface.

    `local`/`remote`/`key` apply to vti/vti6; `if_id`/`underlay` to xfrm. The alias marks
    the link as routevpn's own (see `naming.link_alias`).
    """

    name: str
    kind: LinkKind
    alias: str
    mtu: int = 1400
    local: IPAddress | None = None
    remote: IPAddress | None = None
    key: int | None = None
    if_id: int | None = None
    underlay: str | None = None

    def __post_init__(self) -> None:
        if not 0 < len(self.name) <= naming.IFNAME_MAX or "/" in self.name:
            raise PlanError(f"interface name {self.name!r} is not a valid Linux name")
        if naming.parse_link_alias(self.alias) is None:
            raise PlanError(f"interface {self.name}: alias {self.alias!r} is not routevpn's")
        if not 68 <= self.mtu <= 65535:
            raise PlanError(f"interface {self.name}: MTU {self.mtu} out of range")
        if self.kind in ("vti", "vti6"):
            want = 4 if self.kind == "vti" else 6
            if self.local is None or self.remote is None or self.key is None:
                raise PlanError(f"interface {self.name}: {self.kind} needs local, remote, key")
            if self.local.version != want or self.remote.version != want:
                raise PlanError(f"interface {self.name}: {self.kind} needs IPv{want} endpoints")
            _check_id(self.name, "key", self.key)
        else:
            if self.if_id is None:
                raise PlanError(f"interface {self.name}: xfrm needs if_id")
            _check_id(self.name, "if_id", self.if_id)

    @property
    def mark(self) -> int:
        """The number binding the link to its CHILD SA (VTI key or XFRM if_id)."""
        value = self.key if self.kind in ("vti", "vti6") else self.if_id
        assert value is not None  # guaranteed by __post_init__
        return value


def _check_id(ifname: str, what: str, value: int) -> None:
    if not 1 <= value <= naming.ID_MAX:
        raise PlanError(f"interface {ifname}: {what} {value} outside [1, {naming.ID_MAX}]")


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """One route routevpn owns: replace semantics keyed by (dst, table, metric)."""

    dst: IPNetwork
    dev: str
    via: IPAddress | None = None
    metric: int = 0
    table: int = MAIN_TABLE

    def __post_init__(self) -> None:
        if self.via is not None and self.via.version != self.dst.version:
            raise PlanError(f"route {self.dst}: next hop {self.via} is another family")

    @property
    def family(self) -> int:
        """4 or 6."""
        return self.dst.version


@dataclass(frozen=True, slots=True)
class SysctlPlan:
    """A value under /proc/sys, as a slash path (interface names may contain dots)."""

    path: str
    value: str

    def __post_init__(self) -> None:
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise PlanError(f"sysctl {self.path!r}: must be relative to /proc/sys")


@dataclass(frozen=True, slots=True)
class PskCredential:
    """Pre-shared key authentication (both ends use the same key)."""

    psk: Secret
    kind: Literal["psk"] = "psk"


@dataclass(frozen=True, slots=True)
class CertAuth:
    """X.509 authentication: our certificate and key, and the CA that signs the peer's."""

    cert_pem: str
    key_pem: Secret
    ca_pem: str
    kind: Literal["pubkey"] = "pubkey"


Auth = PskCredential | CertAuth


@dataclass(frozen=True, slots=True)
class ChildPlan:
    """The CHILD SA of a tunnel (swanctl `children.<name>`), or with `per_family` the
    settings both of its CHILD SAs share."""

    esp_proposals: tuple[str, ...] = ("aes256gcm16-modp2048", "aes256gcm16")
    life_time: int = 3600
    rekey_time: int = 3240
    rand_time: int = 324
    replay_window: int = 32
    start_action: StartAction = "none"
    dpd_action: DpdAction = "restart"
    close_action: CloseAction = "none"
    local_ts: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    remote_ts: tuple[str, ...] = ("0.0.0.0/0", "::/0")
    mark_in: int | None = None
    mark_out: int | None = None
    if_id_in: int | None = None
    if_id_out: int | None = None
    mode: Literal["tunnel"] = "tunnel"
    #: Route mode: one CHILD SA per family (0.0.0.0/0 and ::/0 each), for a peer that
    #: narrows a dual-family proposal to one family (`builders.build_conn`).
    per_family: bool = False


@dataclass(frozen=True, slots=True)
class ConnPlan:
    """Everything swanctl needs for one connection with one child."""

    name: str
    local_addrs: tuple[str, ...]
    remote_addrs: tuple[str, ...]
    #: None: charon's default, the certificate's subject (X.509 only; PSK always has one)
    local_id: str | None
    remote_id: str
    auth: AuthKind = "psk"
    version: Literal[1, 2] = 2
    proposals: tuple[str, ...] = ("aes256-sha256-modp2048", "aes256gcm16-prfsha256-ecp256")
    rekey_time: int = 14400
    reauth_time: int = 0
    over_time: int | None = None
    rand_time: int | None = None
    dpd_delay: int = 30
    dpd_timeout: int = 150
    encap: bool = False
    mobike: bool = False
    keyingtries: int = 1
    local_port: int | None = None
    remote_port: int | None = None
    child: ChildPlan = field(default_factory=ChildPlan)

    def __post_init__(self) -> None:
        if naming.parse_conn_name(self.name) is None:
            raise PlanError(f"connection {self.name!r} does not carry routevpn's prefix")
        if self.local_id is None and self.auth != "pubkey":
            raise PlanError(f"connection {self.name!r}: a PSK connection needs a local id")


@dataclass(frozen=True, slots=True)
class TunnelPlan:
    """All a node needs for one tunnel. `link` is None in policy mode."""

    ref: str
    conn: ConnPlan
    auth: Auth
    link: LinkPlan | None = None
    addresses: tuple[IPInterface, ...] = ()
    routes: tuple[RoutePlan, ...] = ()
    sysctls: tuple[SysctlPlan, ...] = ()

    def __post_init__(self) -> None:
        if self.conn.auth != self.auth.kind:
            raise PlanError(f"tunnel {self.ref}: conn auth {self.conn.auth} vs {self.auth.kind}")
        if self.link is None and (self.addresses or self.routes):
            raise PlanError(f"tunnel {self.ref}: addresses/routes need an interface")
        marks = (self.conn.child.mark_in, self.conn.child.mark_out)
        if_ids = (self.conn.child.if_id_in, self.conn.child.if_id_out)
        if self.link is None and any(v is not None for v in (*marks, *if_ids)):
            raise PlanError(f"tunnel {self.ref}: policy mode takes no marks or if_ids")
        if self.link is not None:
            given = marks if self.link.kind in ("vti", "vti6") else if_ids
            if any(v is not None and v != self.link.mark for v in given):
                raise PlanError(
                    f"tunnel {self.ref}: child marks {given} differ from the interface's "
                    f"{self.link.mark}"
                )
            for route in self.routes:
                if route.dev != self.link.name:
                    raise PlanError(
                        f"tunnel {self.ref}: route {route.dst} on {route.dev}, "
                        f"not the tunnel interface {self.link.name}"
                    )

    @property
    def mode(self) -> Literal["route", "policy"]:
        """Route-based (an interface) or policy-based (narrow TS, no interface)."""
        return "policy" if self.link is None else "route"


#: The BGP session's hold time (seconds) when the spec leaves it out; keepalive is a third.
BGP_HOLD_TIME = 30
#: Accepted prefixes above which a session stops (BIRD import limit, action disable).
BGP_MAX_PREFIXES = 100
#: A namespace/name as Kubernetes allows them (DNS labels / subdomains): nothing else may
#: reach the comment BIRD's config carries for each session.
_REF = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


@dataclass(frozen=True, slots=True)
class BgpPlan:
    """One BGP session over a tunnel's interface: one peer address, its family only.

    Every field is a parsed value (ints, ip objects, checked names): BIRD's configuration
    is rendered from these alone (`dataplane.bird_config`), never from a tenant's string.
    `forbidden` is what the import filter refuses whatever `accept` says: the networks the
    agent protects (loopback, multicast, link-local, 0.0.0.0/8, the node's addresses, the
    cluster's networks it was told about).
    """

    ref: str
    protocol: str
    interface: str
    local_address: IPAddress
    peer_address: IPAddress
    local_asn: int
    peer_asn: int
    accept: tuple[IPNetwork, ...]
    advertise: tuple[IPNetwork, ...] = ()
    forbidden: tuple[IPNetwork, ...] = ()
    hold_time: int = BGP_HOLD_TIME
    bfd: bool = False
    max_prefixes: int = BGP_MAX_PREFIXES
    table: int = MAIN_TABLE

    def __post_init__(self) -> None:
        where = f"tunnel {self.ref!r}: BGP session"
        if not _REF.match(self.ref):
            raise PlanError(f"{where}: the reference is not namespace/name")
        if not _IFNAME.match(self.interface):
            raise PlanError(f"{where}: interface name {self.interface!r} is not valid")
        if self.protocol != naming.bgp_protocol(self.interface, self.family):
            raise PlanError(f"{where}: protocol name {self.protocol!r} is not derived")
        if self.local_address.version != self.family or self.local_address == self.peer_address:
            raise PlanError(f"{where}: local {self.local_address} vs peer {self.peer_address}")
        for asn in (self.local_asn, self.peer_asn):
            if not 1 <= asn <= naming.ASN_MAX or asn == naming.AS_TRANS:
                raise PlanError(f"{where}: ASN {asn} is not a usable AS number")
        nets = (*self.accept, *self.advertise, *self.forbidden)
        if any(n.version != self.family for n in nets):
            raise PlanError(f"{where}: a prefix of another family than {self.peer_address}")
        if not 3 <= self.hold_time <= 65535 or not 1 <= self.max_prefixes <= 10000:
            raise PlanError(f"{where}: hold time or max prefixes out of range")
        if self.table in naming.RESERVED_TABLES or not 1 <= self.table <= naming.ID_MAX:
            raise PlanError(f"{where}: table {self.table} is not one a tunnel may use")

    @property
    def family(self) -> int:
        """4 or 6: the peer address's, and the only family the session carries."""
        return self.peer_address.version
