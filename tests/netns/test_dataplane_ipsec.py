"""The VICI adapter against real charon daemons in two namespaces joined by a veth.

The node side is driven only by routevpn's adapter; the peer is a hand-written
swanctl.conf loaded with `swanctl --load-all` into its own charon. This kernel has
no ESP, so CHILD SAs cannot install here: these tests assert the IKE SA only (the
CHILD SA and traffic are proved in tests/lab).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest

from routevpn.api import naming
from routevpn.dataplane.facts import IkeSaFacts
from routevpn.dataplane.ipsec import IpsecAdapter
from routevpn.dataplane.plan import (
    CertAuth,
    ChildPlan,
    ConnPlan,
    PskCredential,
    Secret,
    TunnelPlan,
)
from routevpn.dataplane.reasons import IkeFailure, ReasonTracker
from support import charon, swanctl
from support.netns import Netns, have_root, netns, veth
from support.pki import TestCA, have_openssl
from support.tiers import missing

NODE, PEER = "192.0.2.1", "192.0.2.2"
PSK = "psk-that-must-never-be-logged-7f3a9c"
CONN = naming.conn_name("site", "a")
T = TypeVar("T")


@dataclass
class Pair:
    node: Netns
    peer: Netns
    node_charon: charon.Charon
    work: Path

    def start_peer(self, conns: list[swanctl.Conn] | None = None) -> charon.Charon:
        daemon = charon.Charon(self.peer, self.work / "peer")
        daemon.start()
        self._peer = daemon
        if conns is not None:
            swanctl.write_and_load(self.peer, daemon.uri, self.work / "peer/swanctl.conf", conns)
        return daemon

    def stop_peer(self) -> None:
        peer = getattr(self, "_peer", None)
        if peer is not None:
            peer.stop()


@pytest.fixture
def pair() -> Iterator[Pair]:
    if not have_root():
        missing("root (network namespaces)")
    if not charon.CHARON.exists() or shutil.which("swanctl") is None:
        missing("strongSwan charon + swanctl (hack/apt-packages.txt)")
    # short paths: a unix socket path must fit in 108 bytes
    work = Path(tempfile.mkdtemp(prefix="rvdp-"))
    try:
        with netns("rvn") as node, netns("rvp") as peer, veth(node, "eth0", peer, "eth0"):
            node.add_address("eth0", f"{NODE}/24")
            peer.add_address("eth0", f"{PEER}/24")
            with charon.running(node, work / "node") as node_charon:
                p = Pair(node, peer, node_charon, work)
                try:
                    yield p
                finally:
                    p.stop_peer()
                    # shown by pytest only when the test failed
                    print("node charon:", node_charon.log_tail(40))
                    peer_log = work / "peer/charon.log"
                    if peer_log.exists():
                        print("peer charon:", "".join(peer_log.read_text().splitlines(True)[-40:]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def peer_conn(**kw: object) -> swanctl.Conn:
    base = swanctl.Conn(
        name="peer",
        local_addrs=PEER,
        remote_addrs=NODE,
        local_id="peer.example",
        remote_id="node.example",
        psk=PSK,
        children=[swanctl.Child("peer", mark=42)],
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def node_plan(psk: str = PSK, remote: str = PEER, **conn_kw: object) -> TunnelPlan:
    conn = ConnPlan(
        name=CONN,
        local_addrs=(NODE,),
        remote_addrs=(remote,),
        local_id="node.example",
        remote_id="peer.example",
        proposals=("aes256-sha256-x25519",),
        child=ChildPlan(esp_proposals=("aes256gcm16-x25519",)),
        **{"over_time": 600, "rand_time": 300, **conn_kw},  # type: ignore[arg-type]
    )
    auth: PskCredential | CertAuth = PskCredential(Secret(psk))
    return TunnelPlan(ref="site/a", conn=conn, auth=auth)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def wait_sa(ad: IpsecAdapter, state: str = "ESTABLISHED", within: float = 30) -> IkeSaFacts:
    deadline = time.monotonic() + within
    while True:
        sas = [sa for sa in await ad.sas(CONN) if sa.state == state]
        if sas:
            return sas[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {state} IKE SA for {CONN} after {within}s")
        await asyncio.sleep(0.1)


async def wait_reason(
    ad: IpsecAdapter,
    tracker: ReasonTracker,
    start: Callable[[], Awaitable[object]],
    within: float = 40,
) -> IkeFailure:
    """Follow charon's events (started before `start()`) until `tracker` has a reason."""
    events = ad.follow()
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.3)  # the event thread registers before we trigger anything
    await start()
    deadline = time.monotonic() + within
    pending = first
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no failure reason for {CONN} after {within}s")
            event = await asyncio.wait_for(pending, left)
            tracker.feed(event)
            reason = tracker.get(CONN)
            if reason is not None:
                return reason
            pending = asyncio.ensure_future(anext(events))
    finally:
        pending.cancel()
        await events.aclose()


def test_psk_ike_sa_establishes_and_second_pass_changes_nothing(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pair.start_peer([peer_conn()])
    plan = node_plan()

    async def body() -> tuple[list[str], list[str], IkeSaFacts, list[str]]:
        ad = IpsecAdapter(str(pair.node_charon.vici_socket))
        first = [str(c) for c in await ad.load(plan)]
        second = [str(c) for c in await ad.load(plan)]
        await ad.initiate(CONN)
        sa = await wait_sa(ad)
        again = [str(c) for c in await ad.load(plan) + await ad.initiate(CONN)]
        ad.close()
        return first, second, sa, again

    first, second, sa, again = run(body())
    assert first == [
        "site/a: secret loaded psk routevpn.site.a",
        "site/a: conn loaded routevpn.site.a",
    ]
    assert second == [] and again == []
    assert (sa.local_id, sa.remote_id, sa.remote_host) == ("node.example", "peer.example", PEER)
    assert (sa.encr_alg, sa.dh_group, sa.initiator) == ("AES_CBC", "CURVE_25519", True)
    # the PSK never reaches a log line or a repr
    assert caplog.records, "the adapter logged nothing; the check below would be empty"
    assert PSK not in caplog.text
    assert PSK not in repr(plan) and PSK not in str(plan)


@pytest.mark.parametrize(
    ("local_id", "presented"),
    [
        ("node.example", "node.example"),  # the id named in the spec (a subjectAltName)
        (None, "CN=node.example"),  # none named: charon presents the certificate's subject
    ],
)
def test_x509_ike_sa_establishes(pair: Pair, local_id: str | None, presented: str) -> None:
    if not have_openssl():
        missing("openssl (throwaway CA)")
    ca = TestCA(pair.work / "pki")
    node_cert, peer_cert = ca.issue("node.example"), ca.issue("peer.example")
    daemon = pair.start_peer()
    # swanctl loads keys only from its credential directories: lay one out by hand
    swan = pair.work / "peer-swanctl"
    for sub in ("x509", "x509ca", "private"):
        (swan / sub).mkdir(parents=True)
    shutil.copy(peer_cert.cert_path, swan / "x509/peer.pem")
    shutil.copy(ca.cert_path, swan / "x509ca/ca.pem")
    shutil.copy(peer_cert.key_path, swan / "private/peer.key")
    (swan / "swanctl.conf").write_text(
        f"""connections {{
    peer {{
        version = 2
        local_addrs = {PEER}
        remote_addrs = {NODE}
        proposals = aes256-sha256-x25519
        local {{
            auth = pubkey
            certs = peer.pem
            id = peer.example
        }}
        remote {{
            auth = pubkey
            id = "{presented}"
            cacerts = ca.pem
        }}
        children {{
            peer {{
                local_ts = 0.0.0.0/0,::/0
                remote_ts = 0.0.0.0/0,::/0
                esp_proposals = aes256gcm16-x25519
                mark_in = 42
                mark_out = 42
            }}
        }}
    }}
}}
"""
    )
    pair.peer.run(
        "env", f"SWANCTL_DIR={swan}", "swanctl", "--load-all", "--noprompt", "--uri", daemon.uri
    )
    base = node_plan()
    plan = TunnelPlan(
        ref=base.ref,
        conn=replace(base.conn, auth="pubkey", local_id=local_id),
        auth=CertAuth(node_cert.cert_pem, Secret(node_cert.key_pem), ca.cert_pem),
    )

    async def body() -> tuple[list[str], list[str], IkeSaFacts]:
        ad = IpsecAdapter(str(pair.node_charon.vici_socket))
        first = [c.what for c in await ad.load(plan)]
        second = [c.what for c in await ad.load(plan)]
        await ad.initiate(CONN)
        sa = await wait_sa(ad)
        ad.close()
        return first, second, sa

    first, second, sa = run(body())
    assert first == ["secret", "conn"] and second == []
    assert (sa.local_id, sa.remote_id) == (presented, "peer.example")


FAILURES = {
    # name: (peer conn overrides or None for a silent peer, plan overrides, reason)
    "wrong-psk": ({"psk": "another-psk"}, {}, "AuthenticationFailed"),
    "proposal-mismatch": ({"proposals": "aes128-sha1-modp1024"}, {}, "NoProposalChosen"),
    "silent-peer": (None, {}, "PeerUnreachable"),
    "dns": ({}, {"remote": "peer.invalid"}, "DnsResolutionFailed"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failure_produces_its_reason(pair: Pair, case: str) -> None:
    peer_kw, plan_kw, want = FAILURES[case]
    if peer_kw is not None:
        pair.start_peer([peer_conn(**peer_kw)])
    plan = node_plan(**plan_kw)

    async def body() -> IkeFailure:
        ad = IpsecAdapter(str(pair.node_charon.vici_socket))
        await ad.load(plan)
        try:
            return await wait_reason(ad, ReasonTracker(), lambda: ad.initiate(CONN))
        finally:
            ad.close()

    reason = run(body())
    assert reason.reason == want, reason


def test_silent_peer_is_reported_as_not_answering_ike_sa_init(pair: Pair) -> None:
    """Nothing answers at the peer's address: the message names IKE_SA_INIT."""
    reason = run(_initiate_until_reason(pair))
    assert reason.reason == "PeerUnreachable"
    assert reason.message.startswith("the peer does not answer IKE_SA_INIT"), reason


def test_peer_silent_during_ike_auth_is_told_apart(pair: Pair) -> None:
    """The peer answers IKE_SA_INIT, then its namespace drops our IKE_AUTH (UDP packets
    of IKE_AUTH's size: a path that drops large or fragmented packets looks like this)."""
    if shutil.which("iptables") is None:
        missing("iptables (the far end's packet filter)")
    pair.start_peer([peer_conn()])
    # IKE_SA_INIT is 268 bytes on the wire here, IKE_AUTH with a PSK 380
    drop = ["INPUT", "-p", "udp", "-m", "length", "--length", "320:65535", "-j", "DROP"]
    pair.peer.run("iptables", "-A", *drop)
    reason = run(_initiate_until_reason(pair))
    assert reason.reason == "PeerUnreachable"
    assert "answered IKE_SA_INIT, then went silent during IKE_AUTH" in reason.message
    assert "does not answer" not in reason.message
    assert f"IKE_AUTH request to {PEER}[" in reason.message


async def _initiate_until_reason(pair: Pair) -> IkeFailure:
    ad = IpsecAdapter(str(pair.node_charon.vici_socket))
    await ad.load(node_plan())
    try:
        return await wait_reason(ad, ReasonTracker(), lambda: ad.initiate(CONN))
    finally:
        ad.close()


def test_peer_with_unexpected_identity_is_reported(pair: Pair) -> None:
    """The peer initiates as 'impostor.example'; the node expects 'peer.example'."""
    daemon = pair.start_peer([peer_conn(local_id="impostor.example")])
    plan = node_plan()
    tracker = ReasonTracker(peers={PEER: CONN})
    tracker.expected[CONN] = "peer.example"

    async def body() -> IkeFailure:
        ad = IpsecAdapter(str(pair.node_charon.vici_socket))
        await ad.load(plan)

        async def peer_initiates() -> None:
            argv = ["--initiate", "--child", "peer", "--timeout", "3", "--uri", daemon.uri]
            await asyncio.to_thread(pair.peer.run, "swanctl", *argv, check=False)

        try:
            return await wait_reason(ad, tracker, peer_initiates)
        finally:
            ad.close()

    reason = run(body())
    assert reason.reason == "PeerIdentityMismatch"
    assert "impostor.example" in reason.message and "peer.example" in reason.message


def test_initiating_twice_starts_one_ike_sa(pair: Pair) -> None:
    """A second initiate before charon lists the first IKE SA must not start another
    (charon may hold a queued initiation for a while when many tunnels start at once)."""
    pair.start_peer([peer_conn()])
    base = node_plan()
    plan = replace(base, conn=replace(base.conn, child=replace(base.conn.child,
                                                               start_action="none")))  # fmt: skip

    async def body() -> tuple[list[str], list[str], list[str], int]:
        ad = IpsecAdapter(str(pair.node_charon.vici_socket))
        await ad.load(plan)  # start_action none: charon waits for us
        first = [c.what for c in await ad.initiate(CONN)]
        second = [c.what for c in await ad.initiate(CONN)]
        await wait_sa(ad)
        third = [c.what for c in await ad.initiate(CONN)]
        await asyncio.sleep(2)  # room for a second IKE SA to show up, were one started
        count = len(await ad.sas(CONN))
        ad.close()
        return first, second, third, count

    first, second, third, count = run(body())
    assert (first, second, third) == (["ike"], [], [])
    assert count == 1


def test_charon_restart_is_survived(pair: Pair) -> None:
    pair.start_peer([peer_conn()])
    plan = node_plan()

    async def body() -> tuple[list[str], IkeSaFacts]:
        ad = IpsecAdapter(str(pair.node_charon.vici_socket))
        await ad.load(plan)
        await ad.initiate(CONN)
        before = await wait_sa(ad)
        events = ad.follow()
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(pair.node_charon.restart)
        kinds: list[str] = []
        pending = first
        deadline = time.monotonic() + 30
        try:
            while "reconnected" not in kinds:
                event = await asyncio.wait_for(pending, max(0.1, deadline - time.monotonic()))
                kinds.append(event.kind)
                pending = asyncio.ensure_future(anext(events))
        finally:
            pending.cancel()
            await events.aclose()
        # the adapter re-loaded the connection and started it again on its own
        after = await wait_sa(ad)
        assert after.uniqueid == "1" and before.uniqueid == "1"  # a fresh charon's first SA
        conns = await ad.conns()
        ad.close()
        return conns, after

    conns, after = run(body())
    assert conns == [CONN]
    assert after.remote_id == "peer.example"


def test_garbage_collect_unloads_only_routevpn_connections(pair: Pair) -> None:
    uri = pair.node_charon.uri
    foreign = swanctl.Conn(
        name="manual",
        local_addrs=NODE,
        remote_addrs="198.51.100.7",
        local_id="node.example",
        remote_id="manual.example",
        psk="manual-psk",
        children=[swanctl.Child("manual")],
    )
    swanctl.write_and_load(pair.node, uri, pair.work / "node-manual.conf", [foreign])
    a = node_plan()
    b_base = node_plan()
    b = TunnelPlan(
        ref="site/b",
        conn=replace(
            b_base.conn, name=naming.conn_name("site", "b"), remote_addrs=("198.51.100.8",)
        ),
        auth=b_base.auth,
    )

    async def body() -> tuple[list[str], list[str], list[str], set[str]]:
        ad = IpsecAdapter(str(pair.node_charon.vici_socket))
        await ad.load(a)
        await ad.load(b)
        changes = [str(c) for c in await ad.garbage_collect([a.conn.name])]
        again = [str(c) for c in await ad.garbage_collect([a.conn.name])]
        conns = sorted(await ad.conns())
        shared = await ad._listing.shared_ids()
        ad.close()
        return changes, again, conns, shared

    changes, again, conns, shared = run(body())
    assert changes == [
        "site/b: conn unloaded routevpn.site.b",
        "site/b: secret unloaded psk routevpn.site.b",
    ]
    assert again == []
    assert conns == ["manual", CONN]
    assert shared == {"ike-manual", CONN}
