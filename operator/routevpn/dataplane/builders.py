"""Pure builders: a `TunnelPlan` in, the exact messages for charon and netlink out.

No I/O here. tests/unit/dataplane pins every builder against golden dicts written out
by hand, so a change to what goes on the wire is always a visible diff.

VICI wants every scalar as a string; time values carry an explicit unit ("3600s").
"""

from __future__ import annotations

from typing import Any

from routevpn.api import naming
from routevpn.dataplane.plan import (
    CertAuth,
    ChildPlan,
    IPInterface,
    LinkPlan,
    PskCredential,
    RoutePlan,
    SysctlPlan,
    TunnelPlan,
)

#: Traffic selectors of a route-based child: everything, the interface decides.
ROUTE_MODE_TS = ["0.0.0.0/0", "::/0"]
#: The same, one family per CHILD SA (`ChildPlan.per_family`), in `naming.child_names`' order.
PER_FAMILY_TS = (["0.0.0.0/0"], ["::/0"])

#: `unique = replace`: a peer that re-establishes (after a reboot) replaces its old IKE
#: SA instead of piling up duplicates that keep stale CHILD SAs bound to the same mark.
UNIQUE_POLICY = "replace"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _secs(value: int) -> str:
    return f"{value}s"


def child_names(plan: TunnelPlan) -> tuple[str, ...]:
    """The names of `plan`'s CHILD SAs (one per family only in route mode)."""
    per_family = plan.conn.child.per_family and plan.link is not None
    return naming.child_names(plan.conn.name, per_family)


def _children(plan: TunnelPlan) -> dict[str, Any]:
    """`children` of the connection: one, or one per family with the same mark."""
    child = plan.conn.child
    names = child_names(plan)
    if len(names) == 1:
        return {names[0]: _child(plan, child)}
    out: dict[str, Any] = {}
    for name, ts in zip(names, PER_FAMILY_TS, strict=True):
        out[name] = _child(plan, child) | {"local_ts": list(ts), "remote_ts": list(ts)}
    return out


def _child(plan: TunnelPlan, child: ChildPlan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mode": child.mode,
        "esp_proposals": list(child.esp_proposals),
        "life_time": _secs(child.life_time),
        "rekey_time": _secs(child.rekey_time),
        "rand_time": _secs(child.rand_time),
        "replay_window": str(child.replay_window),
        "start_action": child.start_action,
        "dpd_action": child.dpd_action,
        "close_action": child.close_action,
    }
    link = plan.link
    if link is None:
        out["local_ts"] = list(child.local_ts)
        out["remote_ts"] = list(child.remote_ts)
        return out
    # Route mode: the interface, not the selectors, decides what is protected.
    out["local_ts"] = list(ROUTE_MODE_TS)
    out["remote_ts"] = list(ROUTE_MODE_TS)
    mark = str(link.mark)
    if link.kind == "xfrm":
        out["if_id_in"] = mark
        out["if_id_out"] = mark
    else:
        out["mark_in"] = mark
        out["mark_out"] = mark
    return out


def build_conn(plan: TunnelPlan) -> dict[str, Any]:
    """The VICI `load-conn` message for `plan`: `{conn_name: {...}}`.

    Certificates travel as PEM data inside the message (`certs`, `cacerts`), so charon
    needs no files; the private key goes separately through `build_key`.
    """
    conn = plan.conn
    local: dict[str, Any] = {"auth": conn.auth}
    if conn.local_id is not None:  # else charon takes the certificate's subject
        local["id"] = conn.local_id
    remote: dict[str, Any] = {"auth": conn.auth, "id": conn.remote_id}
    if isinstance(plan.auth, CertAuth):
        local["certs"] = [plan.auth.cert_pem]
        remote["cacerts"] = [plan.auth.ca_pem]
    body: dict[str, Any] = {
        "version": str(conn.version),
        "local_addrs": list(conn.local_addrs),
        "remote_addrs": list(conn.remote_addrs),
        "proposals": list(conn.proposals),
        "rekey_time": _secs(conn.rekey_time),
        "reauth_time": _secs(conn.reauth_time),
        "dpd_delay": _secs(conn.dpd_delay),
        "encap": _yes(conn.encap),
        "mobike": _yes(conn.mobike),
        "keyingtries": str(conn.keyingtries),
        "unique": UNIQUE_POLICY,
        "local": local,
        "remote": remote,
        "children": _children(plan),
    }
    if conn.version == 1:
        # IKEv2 has no DPD timeout: a silent peer is declared dead by retransmits.
        body["dpd_timeout"] = _secs(conn.dpd_timeout)
    if conn.over_time is not None:
        body["over_time"] = _secs(conn.over_time)
    if conn.rand_time is not None:
        body["rand_time"] = _secs(conn.rand_time)
    if conn.local_port is not None:
        body["local_port"] = str(conn.local_port)
    if conn.remote_port is not None:
        body["remote_port"] = str(conn.remote_port)
    return {conn.name: body}


def build_shared(plan: TunnelPlan) -> dict[str, Any] | None:
    """The VICI `load-shared` message (holds the PSK: never log it), or None for X.509.

    The id is the connection name, so one tunnel's key can be replaced or removed
    without touching any other, and `get-shared` tells whether charon still holds it.
    """
    if not isinstance(plan.auth, PskCredential):
        return None
    return {
        "id": plan.conn.name,
        "type": "IKE",
        "data": plan.auth.psk.reveal(),
        "owners": [i for i in (plan.conn.local_id, plan.conn.remote_id) if i is not None],
    }


def build_key(plan: TunnelPlan) -> dict[str, Any] | None:
    """The VICI `load-key` message (holds the private key: never log it), or None."""
    if not isinstance(plan.auth, CertAuth):
        return None
    return {"type": "any", "data": plan.auth.key_pem.reveal()}


def build_link(link: LinkPlan, underlay_index: int | None = None) -> dict[str, Any]:
    """pyroute2 `link("add", **kwargs)` arguments creating `link` (down, no alias yet).

    The kernel ignores IFLA_IFALIAS on RTM_NEWLINK with NLM_F_CREATE, so the alias and
    the up state are set by `build_link_settings` right after creation; the link is
    created in routevpn's device group, which marks it routevpn's in between
    (`naming.LINK_GROUP`).
    """
    out: dict[str, Any] = {
        "ifname": link.name,
        "kind": link.kind,
        "mtu": link.mtu,
        "group": naming.LINK_GROUP,
    }
    if link.kind in ("vti", "vti6"):
        out["vti_local"] = str(link.local)
        out["vti_remote"] = str(link.remote)
        out["vti_ikey"] = link.key
        out["vti_okey"] = link.key
    else:
        out["xfrm_if_id"] = link.if_id
        if underlay_index is not None:
            out["xfrm_link"] = underlay_index
    return out


def build_link_settings(link: LinkPlan) -> dict[str, Any]:
    """pyroute2 `link("set", index=…, **kwargs)` for the mutable attributes."""
    return {"ifalias": link.alias, "mtu": link.mtu, "state": "up"}


def build_address(index: int, address: IPInterface) -> dict[str, Any]:
    """pyroute2 `addr("add", **kwargs)` for one inside address."""
    return {
        "index": index,
        "address": str(address.ip),
        "prefixlen": address.network.prefixlen,
    }


def build_route(route: RoutePlan, oif: int) -> dict[str, Any]:
    """pyroute2 `route("replace", **kwargs)`: marked with routevpn's protocol number."""
    out: dict[str, Any] = {
        "dst": str(route.dst),
        "oif": oif,
        "table": route.table,
        "priority": route.metric,
        "proto": naming.ROUTE_PROTOCOL,
        "family": 2 if route.family == 4 else 10,  # AF_INET / AF_INET6
    }
    if route.via is not None:
        out["gateway"] = str(route.via)
    return out


def build_sysctls(plan: TunnelPlan) -> tuple[SysctlPlan, ...]:
    """Sysctls the tunnel interface needs, then the plan's own (which win on a clash).

    - vti/vti6: `disable_policy=1`, or the kernel's inbound policy check drops the
      decrypted packets arriving on the interface (their mark matches no policy there).
    - `rp_filter=2` (loose) on the interface: the effective value is max(all, iface),
      so loose here still works when the node runs strict (1) globally, where strict
      would drop inside traffic whose source is routed elsewhere (asymmetric, ECMP).
    - IPv6 inside addresses or routes: `disable_ipv6=0`, since nodes that turn IPv6 off
      by default (`default.disable_ipv6=1`) would refuse the address; and
      `router_solicitations=0`: a tunnel has no router to discover, and the kernel's
      solicitations (unlimited since Linux 4.9, backing off to one an hour) are packets
      the far end counts as received on an otherwise idle tunnel. The link-local
      address stays (routing daemons peer over it), and so do MLD and DAD, which a
      tunnel interface (NOARP) mostly skips anyway: only this interface is touched.
    `disable_xfrm` stays untouched: VTI and XFRM interfaces do their own marked lookup on
    transmit, and the lab proved traffic flows without it.
    """
    link = plan.link
    wanted: dict[str, str] = {}
    if link is not None:
        conf4 = f"net/ipv4/conf/{link.name}"
        if link.kind in ("vti", "vti6"):
            wanted[f"{conf4}/disable_policy"] = "1"
        wanted[f"{conf4}/rp_filter"] = "2"
        v6 = any(a.version == 6 for a in plan.addresses) or any(r.family == 6 for r in plan.routes)
        if v6:
            conf6 = f"net/ipv6/conf/{link.name}"
            wanted[f"{conf6}/disable_ipv6"] = "0"
            wanted[f"{conf6}/router_solicitations"] = "0"
    for extra in plan.sysctls:
        wanted[extra.path] = extra.value
    return tuple(SysctlPlan(path, value) for path, value in wanted.items())
