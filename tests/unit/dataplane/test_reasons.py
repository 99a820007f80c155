"""Reason mapping, replayed on log lines captured from charon 5.9.8 in tests/netns."""

from __future__ import annotations

import pytest

from routevpn.dataplane.exchanges import MAX_TRACKED, Exchanges
from routevpn.dataplane.reasons import ReasonTracker, classify
from routevpn.dataplane.vici_facts import IpsecEvent

CONN = "routevpn.site.a"

# (line exactly as charon sent it in a VICI `log` event, expected reason)
CAPTURED = [
    ("received AUTHENTICATION_FAILED notify error", "AuthenticationFailed"),
    ("received NO_PROPOSAL_CHOSEN notify error", "NoProposalChosen"),
    ("received NO_PROPOSAL_CHOSEN notify, no CHILD_SA built", "NoProposalChosen"),
    ("received TS_UNACCEPTABLE notify, no CHILD_SA built", "TrafficSelectorsUnacceptable"),
    ("giving up after 3 retransmits", "PeerUnreachable"),
    ("establishing IKE_SA failed, peer not responding", "PeerUnreachable"),
    ("unable to resolve peer.invalid, initiate aborted", "DnsResolutionFailed"),
    ("unable to install inbound and outbound IPsec SA (SAD) in kernel", "KernelSaInstallFailed"),
    ("no private key found for 'peer.example'", "PrivateKeyMissing"),
]

PROGRESS = [
    "initiating IKE_SA routevpn.site.a[1] to 192.0.2.2",
    "retransmit 1 of request with message ID 0",
    "authentication of 'peer.example' with pre-shared key successful",
    "IKE_SA routevpn.site.a[1] established between "
    "192.0.2.1[node.example]...192.0.2.2[peer.example]",
    "selected proposal: IKE:AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519",
]


@pytest.mark.parametrize(("line", "reason"), CAPTURED)
def test_captured_failure_lines_map_to_their_reason(line: str, reason: str) -> None:
    found = classify(line)
    assert found is not None and found.reason == reason
    assert len(found.message) > 30  # a sentence a person can act on, not a code


@pytest.mark.parametrize("line", PROGRESS)
def test_progress_lines_are_not_failures(line: str) -> None:
    assert classify(line) is None


def test_messages_carry_what_to_fix() -> None:
    dns = classify("unable to resolve peer.invalid, initiate aborted")
    assert dns is not None and "peer.invalid" in dns.message
    key = classify("no private key found for 'peer.example'")
    assert key is not None and "peer.example" in key.message


def log(msg: str, conn: str = CONN, uid: str = "1") -> IpsecEvent:
    return IpsecEvent(kind="log", conn=conn, message=msg, ike_uniqueid=uid)


def test_tracker_keeps_latest_reason_and_clears_when_up() -> None:
    t = ReasonTracker()
    assert t.feed(log("retransmit 1 of request with message ID 0")) is None
    got = t.feed(log("giving up after 3 retransmits"))
    assert got is not None and got[0] == CONN and got[1].reason == "PeerUnreachable"
    assert t.get(CONN) == got[1]
    t.feed(IpsecEvent(kind="ike-updown", conn=CONN, up=True, state="ESTABLISHED"))
    assert t.get(CONN) is None


def test_tracker_ignores_lines_without_a_connection() -> None:
    t = ReasonTracker()
    assert t.feed(log("received AUTHENTICATION_FAILED notify error", conn="")) is None
    assert t.feed(log("received AUTHENTICATION_FAILED notify error", conn="(unnamed)")) is None


def test_tracker_ties_unknown_peer_identity_to_the_tunnel_by_address() -> None:
    """Responder side: charon has no connection name yet, only the peer's address."""
    t = ReasonTracker(peers={"192.0.2.2": CONN})
    t.expected[CONN] = "peer.example"
    line = "looking for peer configs matching 192.0.2.1[node.example]...192.0.2.2[impostor.example]"
    assert t.feed(log(line, conn="(unnamed)", uid="7")) is None
    got = t.feed(log("no matching peer config found", conn="(unnamed)", uid="7"))
    assert got is not None and got[1].reason == "PeerIdentityMismatch"
    assert "impostor.example" in got[1].message and "peer.example" in got[1].message
    # another peer address is not ours to explain
    t2 = ReasonTracker(peers={"198.51.100.1": CONN})
    t2.feed(log(line, conn="(unnamed)", uid="8"))
    assert t2.feed(log("no matching peer config found", conn="(unnamed)", uid="8")) is None


# charon 5.9.8's lines for a peer that answers IKE_SA_INIT and then drops IKE_AUTH
# (tests/netns: the far end's namespace drops UDP packets of IKE_AUTH's size)
AUTH_SILENT = [
    "initiating IKE_SA routevpn.site.a[1] to 192.0.2.2",
    "generating IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) N(FRAG_SUP) ]",
    "sending packet: from 192.0.2.1[500] to 192.0.2.2[500] (240 bytes)",
    "received packet: from 192.0.2.2[500] to 192.0.2.1[500] (248 bytes)",
    "parsed IKE_SA_INIT response 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) N(FRAG_SUP) ]",
    "generating IKE_AUTH request 1 [ IDi N(INIT_CONTACT) IDr AUTH SA TSi TSr ]",
    "sending packet: from 192.0.2.1[500] to 192.0.2.2[500] (352 bytes)",
    "retransmit 1 of request with message ID 1",
    "sending packet: from 192.0.2.1[500] to 192.0.2.2[500] (352 bytes)",
    "retransmit 3 of request with message ID 1",
    "giving up after 3 retransmits",
    "establishing IKE_SA failed, peer not responding",
]
# the same start against an address where nothing answers
INIT_SILENT = [*AUTH_SILENT[:3], "retransmit 3 of request with message ID 0", *AUTH_SILENT[-2:]]


def replay(lines: list[str], uid: str = "1") -> ReasonTracker:
    t = ReasonTracker()
    for line in lines:
        t.feed(log(line, uid=uid))
    return t


def test_silence_during_ike_auth_is_not_reported_as_no_answer_to_ike() -> None:
    got = replay(AUTH_SILENT).get(CONN)
    assert got is not None and got.reason == "PeerUnreachable"
    assert "answered IKE_SA_INIT, then went silent during IKE_AUTH" in got.message
    assert "352-byte IKE_AUTH request to 192.0.2.2[500], sent 4 times" in got.message
    assert "does not answer" not in got.message


def test_no_answer_to_ike_sa_init_says_so() -> None:
    got = replay(INIT_SILENT).get(CONN)
    assert got is not None and got.reason == "PeerUnreachable"
    assert got.message.startswith("the peer does not answer IKE_SA_INIT (our 240-byte")
    assert "IKE_AUTH" not in got.message


def test_silence_on_an_established_sa_names_its_exchange() -> None:
    lines = [
        "generating INFORMATIONAL request 4 [ ]",
        "sending packet: from 192.0.2.1[4500] to 192.0.2.2[4500] (80 bytes)",
        "giving up after 5 retransmits",
    ]
    got = replay(lines).get(CONN)
    assert got is not None and "stopped answering (our 80-byte INFORMATIONAL" in got.message


def test_exchanges_of_two_ike_sas_are_kept_apart() -> None:
    t = ReasonTracker()
    for line in AUTH_SILENT[:7]:
        t.feed(log(line, uid="1"))
    for line in INIT_SILENT[:3]:
        t.feed(log(line, uid="2", conn="routevpn.site.b"))
    t.feed(log("giving up after 3 retransmits", uid="2", conn="routevpn.site.b"))
    t.feed(log("giving up after 3 retransmits", uid="1"))
    one, two = t.get(CONN), t.get("routevpn.site.b")
    assert one is not None and "during IKE_AUTH" in one.message
    assert two is not None and "does not answer IKE_SA_INIT" in two.message


def test_followed_ike_sas_are_bounded() -> None:
    ex = Exchanges()
    for uid in range(MAX_TRACKED + 10):
        ex.feed(str(uid), "generating IKE_SA_INIT request 0 [ SA ]")
    assert ex.get("0") is None and ex.get(str(MAX_TRACKED + 9)) is not None
    ex.feed("x", "sending packet: from a to b (1 bytes)")  # not asked anything: not kept
    assert ex.get("x") is None


def test_an_ike_sa_that_comes_up_or_goes_is_no_longer_followed() -> None:
    t = ReasonTracker()
    t.feed(log(AUTH_SILENT[1]))
    assert t.exchanges.get("1") is not None
    t.feed(IpsecEvent(kind="ike-updown", conn=CONN, up=False, ike_uniqueid="1"))
    assert t.exchanges.get("1") is None
    t.feed(log(AUTH_SILENT[1], uid="2"))
    t.feed(IpsecEvent(kind="ike-updown", conn=CONN, up=True, ike_uniqueid="2"))
    assert t.exchanges.get("2") is None
