"""What the node has (facts observed from netlink and charon) and what a pass changed.

Pure types shared by the netlink and VICI adapters, the driver and its fake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from routevpn.dataplane.plan import IPAddress, IPInterface, IPNetwork


@dataclass(frozen=True, slots=True)
class Change:
    """One thing a pass did to the node, e.g. ("ns/a", "route", "replaced", "::/0")."""

    ref: str
    what: str
    action: str
    detail: str = ""

    def __str__(self) -> str:
        tail = f" {self.detail}" if self.detail else ""
        return f"{self.ref}: {self.what} {self.action}{tail}"


@dataclass(frozen=True, slots=True)
class LinkFacts:
    """A network interface as the kernel reports it."""

    index: int
    name: str
    kind: str | None
    alias: str | None
    mtu: int
    up: bool
    local: IPAddress | None = None
    remote: IPAddress | None = None
    ikey: int | None = None
    okey: int | None = None
    if_id: int | None = None
    underlay_index: int | None = None
    group: int = 0  # IFLA_GROUP (naming.LINK_GROUP: created by routevpn)


@dataclass(frozen=True, slots=True)
class AddressFacts:
    """An address on an interface."""

    index: int
    ifname: str
    address: IPInterface


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """A unicast route (any table) with the fields routevpn compares."""

    dst: IPNetwork
    oif: int | None
    ifname: str | None
    via: IPAddress | None
    metric: int
    table: int
    proto: int


@dataclass(frozen=True, slots=True)
class NetlinkFacts:
    """Everything netlink shows in this namespace (links, addresses, unicast routes)."""

    links: tuple[LinkFacts, ...] = ()
    addresses: tuple[AddressFacts, ...] = ()
    routes: tuple[RouteFacts, ...] = ()


@dataclass(frozen=True, slots=True)
class ChildSaFacts:
    """One CHILD SA as charon lists it."""

    name: str
    uniqueid: str
    state: str
    mode: str = ""
    protocol: str = ""
    spi_in: str = ""
    spi_out: str = ""
    encr_alg: str = ""
    encr_keysize: str = ""
    integ_alg: str = ""
    dh_group: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    install_time: int | None = None
    rekey_time: int | None = None
    life_time: int | None = None
    #: ESP in UDP (NAT-T): charon's `encap` flag.
    encap: bool = False
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IkeSaFacts:
    """One IKE SA (with its CHILD SAs) as charon lists it."""

    conn: str
    uniqueid: str
    state: str
    version: str = ""
    local_host: str = ""
    remote_host: str = ""
    local_id: str = ""
    remote_id: str = ""
    initiator: bool = False
    encr_alg: str = ""
    encr_keysize: str = ""
    integ_alg: str = ""
    prf_alg: str = ""
    dh_group: str = ""
    established: int | None = None
    rekey_time: int | None = None
    reauth_time: int | None = None
    children: tuple[ChildSaFacts, ...] = ()


@dataclass(frozen=True, slots=True)
class IpsecFacts:
    """Connections charon holds and the SAs it has."""

    conns: tuple[str, ...] = ()
    sas: tuple[IkeSaFacts, ...] = ()


@dataclass(frozen=True, slots=True)
class Facts:
    """What the driver observes: netlink and charon together."""

    netlink: NetlinkFacts = field(default_factory=NetlinkFacts)
    ipsec: IpsecFacts = field(default_factory=IpsecFacts)
