"""Pure translation of VICI replies and events into typed facts (no vici import).

charon returns every value as bytes (lists of bytes, nested dicts); these helpers
decode them once so nothing above this layer ever sees a raw VICI message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from routevpn.dataplane.facts import ChildSaFacts, IkeSaFacts


def text(value: Any) -> str:
    """A VICI scalar as str ("" when absent)."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def texts(value: Any) -> tuple[str, ...]:
    """A VICI list (or a lone scalar) as a tuple of str."""
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(text(v) for v in value)
    return (text(value),)


def _int(value: Any) -> int | None:
    raw = text(value)
    return int(raw) if raw.lstrip("-").isdigit() else None


def _count(value: Any) -> int:
    return _int(value) or 0


def child_sa(data: Mapping[str, Any]) -> ChildSaFacts:
    """One entry of `child-sas` in a `list-sa` event."""
    return ChildSaFacts(
        name=text(data.get("name")),
        uniqueid=text(data.get("uniqueid")),
        state=text(data.get("state")),
        mode=text(data.get("mode")),
        protocol=text(data.get("protocol")),
        spi_in=text(data.get("spi-in")),
        spi_out=text(data.get("spi-out")),
        encr_alg=text(data.get("encr-alg")),
        encr_keysize=text(data.get("encr-keysize")),
        integ_alg=text(data.get("integ-alg")),
        dh_group=text(data.get("dh-group")),
        bytes_in=_count(data.get("bytes-in")),
        bytes_out=_count(data.get("bytes-out")),
        packets_in=_count(data.get("packets-in")),
        packets_out=_count(data.get("packets-out")),
        install_time=_int(data.get("install-time")),
        rekey_time=_int(data.get("rekey-time")),
        life_time=_int(data.get("life-time")),
        encap=text(data.get("encap")) == "yes",
        local_ts=texts(data.get("local-ts")),
        remote_ts=texts(data.get("remote-ts")),
    )


def ike_sa(conn: str, data: Mapping[str, Any]) -> IkeSaFacts:
    """One IKE SA of a `list-sa` event (`{conn: {...}}` unpacked)."""
    children = data.get("child-sas") or {}
    return IkeSaFacts(
        conn=conn,
        uniqueid=text(data.get("uniqueid")),
        state=text(data.get("state")),
        version=text(data.get("version")),
        local_host=text(data.get("local-host")),
        remote_host=text(data.get("remote-host")),
        local_id=text(data.get("local-id")),
        remote_id=text(data.get("remote-id")),
        initiator=text(data.get("initiator")) == "yes",
        encr_alg=text(data.get("encr-alg")),
        encr_keysize=text(data.get("encr-keysize")),
        integ_alg=text(data.get("integ-alg")),
        prf_alg=text(data.get("prf-alg")),
        dh_group=text(data.get("dh-group")),
        established=_int(data.get("established")),
        rekey_time=_int(data.get("rekey-time")),
        reauth_time=_int(data.get("reauth-time")),
        children=tuple(child_sa(c) for c in children.values()),
    )


def ike_sas(events: list[Mapping[str, Any]]) -> list[IkeSaFacts]:
    """All IKE SAs from the `list-sa` events of one `list-sas` call."""
    return [ike_sa(conn, data) for event in events for conn, data in event.items()]


@dataclass(frozen=True, slots=True)
class IpsecEvent:
    """A state change or log line charon reported, reduced to what routevpn needs.

    `kind`: "ike-updown", "child-updown", "ike-rekey", "child-rekey", "log", or
    "reconnected" (the adapter lost charon and came back; what charon lost was
    re-loaded before this event was delivered).
    """

    kind: str
    conn: str = ""
    up: bool | None = None
    state: str = ""
    message: str = ""
    ike_uniqueid: str = ""
    facts: tuple[IkeSaFacts, ...] = field(default=())


def event(kind: str, data: Mapping[str, Any]) -> IpsecEvent:
    """Translate one VICI event (name, payload) into an `IpsecEvent`."""
    if kind == "log":
        return IpsecEvent(
            kind="log",
            conn=text(data.get("ikesa-name")),
            message=text(data.get("msg")),
            ike_uniqueid=text(data.get("ikesa-uniqueid")),
        )
    up = text(data.get("up")) == "yes" if "up" in data else None
    sas = [ike_sa(conn, sa) for conn, sa in data.items() if isinstance(sa, Mapping)]
    first = sas[0] if sas else None
    return IpsecEvent(
        kind=kind,
        conn=first.conn if first else "",
        up=up,
        state=first.state if first else "",
        ike_uniqueid=first.uniqueid if first else "",
        facts=tuple(sas),
    )
