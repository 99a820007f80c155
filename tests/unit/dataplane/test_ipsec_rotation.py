"""IpsecAdapter on a rotated secret: re-authenticate the established IKE SAs, once.

An in-memory charon stands in for VICI here; tests/lab/test_faults_lab.py's PSK
rotation proves the same against real charons under traffic.
"""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from routevpn.dataplane.ipsec import IpsecAdapter
from routevpn.dataplane.plan import ConnPlan, PskCredential, Secret, TunnelPlan
from routevpn.dataplane.secret_record import FILE, SecretRecord

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

    def unload_conn(self, msg: dict[str, str]) -> None:
        self.conns.discard(msg["name"])

    def unload_shared(self, msg: dict[str, str]) -> None:
        self.shared.discard(msg["id"])

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


def _restarted(charon: FakeCharon, record_dir: Path | None) -> IpsecAdapter:
    """A new adapter (the agent restarted) in front of the same charon."""
    ad = IpsecAdapter(
        "/nonexistent/charon.vici", record=SecretRecord(record_dir) if record_dir else None
    )
    ad._cmd = FakeCommands(charon)  # type: ignore[assignment]
    return ad


def _load(ad: IpsecAdapter, psk: str) -> list[str]:
    return [str(c) for c in asyncio.run(ad.load(plan(psk)))]


def test_a_psk_rotated_while_no_agent_ran_reauthenticates_at_the_next_start(
    tmp_path: Path,
) -> None:
    charon = FakeCharon()
    _load(_restarted(charon, tmp_path), "old-key")
    charon.sas = {"3": "ESTABLISHED"}
    # restarted with the same secret: nothing to do (the agent-kill lab case: no re-key)
    assert not any("reauth" in c for c in _load(_restarted(charon, tmp_path), "old-key"))
    assert charon.rekeys == []
    # restarted after the Secret changed: re-authenticated once, then recorded
    rotated = _load(_restarted(charon, tmp_path), "new-key")
    assert f"prod/site-b: ike reauthenticating {CONN} #3" in rotated
    assert charon.rekeys == [{"ike-id": "3", "reauth": "yes"}]
    assert not any("reauth" in c for c in _load(_restarted(charon, tmp_path), "new-key"))
    assert len(charon.rekeys) == 1


def test_without_a_record_a_restart_cannot_tell_and_reauthenticates_nothing(
    tmp_path: Path,
) -> None:
    charon = FakeCharon()
    _load(_restarted(charon, None), "old-key")
    charon.sas = {"3": "ESTABLISHED"}
    _load(_restarted(charon, None), "new-key")
    (tmp_path / FILE).write_text("{not json")  # unreadable: started afresh, not trusted
    _load(_restarted(charon, tmp_path), "newer-key")
    assert charon.rekeys == []


def test_the_record_is_root_only_holds_no_secret_and_forgets_unloaded_conns(
    tmp_path: Path,
) -> None:
    charon = FakeCharon()
    ad = _restarted(charon, tmp_path)
    _load(ad, "the-psk")
    path = tmp_path / FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    digest = PskCredential(Secret("the-psk")).psk.digest()
    assert "the-psk" not in text and digest not in text
    assert CONN in json.loads(text)["conns"]
    asyncio.run(ad.unload(CONN))
    assert CONN not in json.loads(path.read_text())["conns"]
