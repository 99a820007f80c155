"""IpsecAdapter on a rotated secret: re-authenticate the established IKE SAs, once.

An in-memory charon stands in for VICI here; tests/lab/test_faults_lab.py's PSK
rotation proves the same against real charons under traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from routevpn.dataplane.ipsec import IpsecAdapter
from routevpn.dataplane.plan import ConnPlan, PskCredential, Secret, TunnelPlan

CONN = "routevpn.prod.site-b"


class FakeCharon:
    """Connections, shared keys and IKE SAs, and the rekey requests it was sent."""

    def __init__(self) -> None:
        self.conns: set[str] = set()
        self.shared: set[str] = set()
        self.sas: dict[str, str] = {}  # unique id → state
        self.rekeys: list[dict[str, str]] = []

    def load_shared(self, msg: dict[str, Any]) -> None:
        self.shared.add(str(msg["id"]))

    def load_conn(self, msg: dict[str, Any]) -> None:
        self.conns.update(msg)

    def get_conns(self) -> dict[str, Any]:
        return {"conns": [c.encode() for c in self.conns]}

    def get_shared(self) -> dict[str, Any]:
        return {"keys": [k.encode() for k in self.shared]}

    def list_sas(self, filters: dict[str, str] | None) -> Iterator[dict[str, Any]]:
        for uid, state in self.sas.items():
            yield {CONN: {"uniqueid": uid.encode(), "state": state.encode()}}

    def rekey(self, msg: dict[str, str]) -> dict[str, Any]:
        self.rekeys.append(msg)
        return {"success": b"yes"}


class FakeCommands:
    """ViciCommands' interface over the fake charon."""

    generation = 1

    def __init__(self, charon: FakeCharon) -> None:
        self.charon = charon

    def call(self, ref: str, what: str, fn: Any) -> Any:
        return fn(self.charon)

    def close(self) -> None:
        pass


def plan(psk: str) -> TunnelPlan:
    conn = ConnPlan(
        name=CONN,
        local_addrs=("192.0.2.1",),
        remote_addrs=("198.51.100.2",),
        local_id="node-a.example",
        remote_id="site-b.example",
    )
    return TunnelPlan(ref="prod/site-b", conn=conn, auth=PskCredential(Secret(psk)))


def adapter(charon: FakeCharon) -> IpsecAdapter:
    ad = IpsecAdapter("/nonexistent/charon.vici")
    ad._cmd = FakeCommands(charon)  # type: ignore[assignment]
    return ad


def test_a_rotated_psk_reauthenticates_each_established_ike_sa_once() -> None:
    charon = FakeCharon()
    ad = adapter(charon)

    async def body() -> tuple[list[str], list[str], list[str]]:
        first = [str(c) for c in await ad.load(plan("old-key"))]
        charon.sas = {"3": "ESTABLISHED", "4": "CONNECTING"}
        same = [str(c) for c in await ad.load(plan("old-key"))]
        rotated = [str(c) for c in await ad.load(plan("new-key"))]
        return first, same, rotated

    first, same, rotated = asyncio.run(body())
    assert not any("reauth" in c for c in first + same), (first, same)
    assert rotated == [
        f"prod/site-b: secret loaded psk {CONN}",
        f"prod/site-b: ike reauthenticating {CONN} #3",
    ]
    # only the established SA: one still connecting authenticates with the new key anyway
    assert charon.rekeys == [{"ike-id": "3", "reauth": "yes"}]
    assert "new-key" not in " ".join(rotated)
