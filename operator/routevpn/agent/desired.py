"""spec → TunnelPlan: the desired state of one tunnel on this node. Pure, no I/O.

Every default the API documents is applied here and only here (the CRD carries no
`default:` values, so a GitOps tool never sees drift). What cannot be translated yet
(no interface allocated, no secret delivered) or ever (an inconsistent object) comes
back as a `Blocked` with the condition reason and an actionable message, never as an
exception: the caller reports it and does nothing to the node.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from routevpn.api import naming
from routevpn.api.conditions import Reason, Status
from routevpn.api.durations import parse_duration
from routevpn.api.fields import AuthType, DpdAction, Encapsulation, InterfaceType, Toggle
from routevpn.api.sa import (
    CHILD_LIFETIMES,
    ESP_DEFAULT_PROPOSALS,
    IKE_DEFAULT_PROPOSALS,
    IKE_LIFETIMES,
)
from routevpn.api.status import InterfaceStatus
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane import plan as p
from routevpn.dataplane.facts import Facts

#: Documented defaults that live in no other constant (api/sa.py, api/link.py descriptions).
DEFAULT_IKE_VERSION = 2
DEFAULT_DPD_DELAY = "30s"
DEFAULT_DPD_TIMEOUT = "150s"
DEFAULT_REPLAY_WINDOW = 32
DEFAULT_MTU = 1400
ROUTE_MODE_TS = ("0.0.0.0/0", "::/0")

#: Keys of the Secret the operator delivers (see the operator's delivery contract).
PSK_KEY = "psk"
CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"
CA_KEY = "ca.crt"


@dataclass(frozen=True, slots=True)
class DeliveredMaterial:
    """The Secret the operator delivered for one tunnel: decoded data and its hash.

    `data` holds key material: never log it; the repr hides it.
    """

    data: Mapping[str, str]
    content_hash: str = ""

    def __repr__(self) -> str:
        return f"DeliveredMaterial(keys={sorted(self.data)}, content_hash={self.content_hash!r})"


@dataclass(frozen=True, slots=True)
class Blocked:
    """Why a tunnel can't be planned now: the Configured condition to report."""

    reason: Reason
    message: str
    status: Status = Status.FALSE


def _secs(text: str) -> int:
    return int(parse_duration(text))


def local_address(tunnel: VpnTunnel) -> str | None:
    """The outer local address: spec.local.address, else what the operator chose."""
    spec_local = tunnel.spec.local.address if tunnel.spec.local else None
    if spec_local:
        return spec_local
    return tunnel.status.local_address if tunnel.status else None


def interface_of(tunnel: VpnTunnel) -> InterfaceStatus | None:
    """The interface the operator allocated (status.interface), or None."""
    return tunnel.status.interface if tunnel.status else None


def link_kind(iface_type: InterfaceType, local: p.IPAddress) -> p.LinkKind:
    """vti for an IPv4 outer address, vti6 for IPv6, xfrm for an XFRM interface."""
    if iface_type is InterfaceType.XFRM:
        return "xfrm"
    return "vti" if local.version == 4 else "vti6"


def _auth(tunnel: VpnTunnel, secret: DeliveredMaterial) -> p.Auth | Blocked:
    ref = tunnel.ref
    data = secret.data
    if tunnel.spec.auth.type is AuthType.PSK:
        psk = data.get(PSK_KEY, "")
        if not psk:
            return Blocked(
                Reason.SECRET_INVALID,
                f"tunnel {ref}: the delivered secret has no `{PSK_KEY}`; check the Secret "
                "named in spec.auth.psk.secretRef",
            )
        return p.PskCredential(psk=p.Secret(psk))
    absent = [k for k in (CERT_KEY, KEY_KEY, CA_KEY) if not data.get(k)]
    if absent:
        return Blocked(
            Reason.SECRET_INVALID,
            f"tunnel {ref}: the delivered secret lacks {', '.join(absent)}; check the "
            "kubernetes.io/tls Secret (and CA) named in spec.auth.x509",
        )
    return p.CertAuth(cert_pem=data[CERT_KEY], key_pem=p.Secret(data[KEY_KEY]), ca_pem=data[CA_KEY])


def _child(tunnel: VpnTunnel, link: p.LinkPlan | None) -> p.ChildPlan:
    spec = tunnel.spec
    child = spec.child
    ike = spec.ike
    life = _secs((child.lifetime if child else None) or CHILD_LIFETIMES[0])
    margin = _secs((child.rekey_margin if child else None) or CHILD_LIFETIMES[1])
    fuzz = _secs((child.rekey_fuzz if child else None) or CHILD_LIFETIMES[2])
    dpd_api = ike.dpd.action if ike and ike.dpd and ike.dpd.action else DpdAction.RESTART
    # charon's VICI parser maps `none` and `clear` to the same action (ACTION_NONE:
    # close the CHILD SA, nothing more); `clear` is the spelling swanctl documents.
    dpd: p.DpdAction = "clear" if dpd_api is DpdAction.NONE else dpd_api.value  # type: ignore[assignment]
    ts = child.traffic_selectors if child else None
    local_ts = tuple(ts.local) if ts and link is None else ROUTE_MODE_TS
    remote_ts = tuple(ts.remote) if ts and link is None else ROUTE_MODE_TS
    mark = link.mark if link is not None and link.kind != "xfrm" else None
    if_id = link.mark if link is not None and link.kind == "xfrm" else None
    start = child.start_action.value if child and child.start_action else "start"
    return p.ChildPlan(
        esp_proposals=tuple((child.proposals if child else None) or ESP_DEFAULT_PROPOSALS),
        life_time=life,
        rekey_time=life - margin,
        rand_time=fuzz,
        replay_window=(
            child.replay_window
            if child and child.replay_window is not None
            else DEFAULT_REPLAY_WINDOW
        ),
        start_action=start,  # type: ignore[arg-type]
        dpd_action=dpd,
        local_ts=local_ts,
        remote_ts=remote_ts,
        mark_in=mark,
        mark_out=mark,
        if_id_in=if_id,
        if_id_out=if_id,
        per_family=bool(child and child.per_family and link is not None),
    )


def _conn(tunnel: VpnTunnel, local: str, auth: p.Auth, link: p.LinkPlan | None) -> p.ConnPlan:
    spec = tunnel.spec
    ike = spec.ike
    life = _secs((ike.lifetime if ike else None) or IKE_LIFETIMES[0])
    margin = _secs((ike.rekey_margin if ike else None) or IKE_LIFETIMES[1])
    dpd = ike.dpd if ike else None
    version = ike.version if ike and ike.version else DEFAULT_IKE_VERSION
    return p.ConnPlan(
        name=naming.conn_name(tunnel.metadata.namespace, tunnel.metadata.name),
        local_addrs=(local,),
        remote_addrs=(spec.remote.address,),
        # x509 without an id: charon presents the certificate's subject (as documented)
        local_id=(
            spec.local.id if spec.local and spec.local.id else _default_local_id(auth, local)
        ),
        remote_id=spec.remote.id or spec.remote.address,
        auth=auth.kind,
        version=2 if version == 2 else 1,
        proposals=tuple((ike.proposals if ike else None) or IKE_DEFAULT_PROPOSALS),
        rekey_time=life - margin,
        reauth_time=_secs(ike.reauth_time) if ike and ike.reauth_time else 0,
        over_time=margin,
        rand_time=ike_rand_time(tunnel),
        dpd_delay=_secs((dpd.delay if dpd else None) or DEFAULT_DPD_DELAY),
        dpd_timeout=_secs((dpd.timeout if dpd else None) or DEFAULT_DPD_TIMEOUT),
        encap=bool(ike and ike.encapsulation is Encapsulation.FORCE),
        mobike=bool(ike and ike.mobike is Toggle.ENABLED),
        child=_child(tunnel, link),
    )


def _default_local_id(auth: p.Auth, local: str) -> str | None:
    return None if isinstance(auth, p.CertAuth) else local


def ike_rand_time(tunnel: VpnTunnel) -> int:
    """IKE rekey fuzz in seconds (spec.ike.rekeyFuzz or its default): swanctl's
    connection-level `rand_time`, which would otherwise default to `over_time`."""
    ike = tunnel.spec.ike
    return _secs((ike.rekey_fuzz if ike else None) or IKE_LIFETIMES[2])


def _link(
    tunnel: VpnTunnel, iface: InterfaceStatus, local: p.IPAddress, underlay: str | None
) -> p.LinkPlan | Blocked:
    ref = tunnel.ref
    kind = link_kind(iface.type, local)
    spec_iface = tunnel.spec.interface
    mtu = spec_iface.mtu if spec_iface and spec_iface.mtu else DEFAULT_MTU
    alias = naming.link_alias(tunnel.metadata.namespace, tunnel.metadata.name)
    if kind == "xfrm":
        if iface.if_id is None:
            return Blocked(
                Reason.PENDING,
                f"tunnel {ref}: waiting for the operator to allocate an XFRM if_id",
                Status.UNKNOWN,
            )
        return p.LinkPlan(
            name=iface.name, kind=kind, alias=alias, mtu=mtu, if_id=iface.if_id, underlay=underlay
        )
    if iface.key is None:
        return Blocked(
            Reason.PENDING,
            f"tunnel {ref}: waiting for the operator to allocate a VTI key",
            Status.UNKNOWN,
        )
    try:
        remote = ipaddress.ip_address(tunnel.spec.remote.address)
    except ValueError:
        return Blocked(
            Reason.INVALID_SPEC,
            f"tunnel {ref}: a VTI needs the peer's IP address; spec.remote.address "
            f"{tunnel.spec.remote.address!r} is a DNS name (use interface type xfrm)",
        )
    return p.LinkPlan(name=iface.name, kind=kind, alias=alias, mtu=mtu, local=local,
                      remote=remote, key=iface.key)  # fmt: skip


def build_plan(
    tunnel: VpnTunnel, secret: DeliveredMaterial | None, underlay: str | None = None
) -> p.TunnelPlan | Blocked:
    """The TunnelPlan for `tunnel` on this node, or why there can't be one yet.

    `underlay` is the interface holding the local address (XFRM interfaces bind to it);
    the caller finds it in the node's facts.
    """
    ref = tunnel.ref
    local_text = local_address(tunnel)
    if local_text is None:
        return Blocked(
            Reason.PENDING,
            f"tunnel {ref}: no local address yet (spec.local.address is unset and the "
            "operator has not chosen one in status.localAddress)",
            Status.UNKNOWN,
        )
    link = _route_link(tunnel, ipaddress.ip_address(local_text), underlay)
    if isinstance(link, Blocked):
        return link
    auth = _delivered_auth(tunnel, secret)
    if isinstance(auth, Blocked):
        return auth
    addresses = _addresses(tunnel, link)
    routes = _routes(tunnel, link)
    try:
        conn = _conn(tunnel, local_text, auth, link)
        return p.TunnelPlan(
            ref=ref, conn=conn, auth=auth, link=link, addresses=addresses, routes=routes
        )
    except p.PlanError as e:
        return Blocked(Reason.INVALID_SPEC, str(e))


def _route_link(
    tunnel: VpnTunnel, local: p.IPAddress, underlay: str | None
) -> p.LinkPlan | Blocked | None:
    """The tunnel interface in route mode (None in policy mode), or why not yet."""
    if tunnel.spec.effective_mode.value != "route":
        return None
    iface = interface_of(tunnel)
    if iface is None:
        return Blocked(
            Reason.PENDING,
            f"tunnel {tunnel.ref}: waiting for the operator to allocate the interface "
            "(status.interface)",
            Status.UNKNOWN,
        )
    return _link(tunnel, iface, local, underlay)


def _delivered_auth(tunnel: VpnTunnel, secret: DeliveredMaterial | None) -> p.Auth | Blocked:
    """The credentials from the delivered secret, or why there are none yet."""
    if secret is None:
        return Blocked(
            Reason.SECRET_MISSING,
            f"tunnel {tunnel.ref}: the operator has not delivered the tunnel's secret "
            f"({naming.secret_name(tunnel.metadata.namespace, tunnel.metadata.name)}) yet",
            Status.UNKNOWN,
        )
    return _auth(tunnel, secret)


def _addresses(tunnel: VpnTunnel, link: p.LinkPlan | None) -> tuple[p.IPInterface, ...]:
    """The inside addresses on the tunnel interface (none without one)."""
    interface = tunnel.spec.interface
    if link is None or not interface:
        return ()
    return tuple(ipaddress.ip_interface(a) for a in interface.addresses or [])


def _routes(tunnel: VpnTunnel, link: p.LinkPlan | None) -> tuple[p.RoutePlan, ...]:
    """The routes into the tunnel interface (none without one), defaults applied."""
    if link is None:
        return ()
    return tuple(
        p.RoutePlan(
            dst=ipaddress.ip_network(r.to),
            dev=link.name,
            via=ipaddress.ip_address(r.via) if r.via else None,
            metric=r.metric or 0,
            table=r.table or p.MAIN_TABLE,
        )
        for r in tunnel.spec.routes or []
    )


def underlay_of(facts: Facts | None, local: str | None) -> str | None:
    """The interface holding the local address (what an XFRM interface binds to)."""
    if facts is None or local is None:
        return None
    want = ipaddress.ip_address(local)
    for addr in facts.netlink.addresses:
        if addr.address.ip == want:
            return addr.ifname
    return None
