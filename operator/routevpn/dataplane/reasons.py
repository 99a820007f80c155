"""Why a tunnel is not up: charon's log lines and notifies → CamelCase reason + message.

Every pattern below was seen from charon 5.9.8 (tests/netns captured them; the unit
tests replay those exact lines), except where a comment says it comes from charon's
source. Messages tell a person what to check, not what the daemon did.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from routevpn.dataplane.exchanges import Exchanges, unanswered
from routevpn.dataplane.vici_facts import IpsecEvent


@dataclass(frozen=True, slots=True)
class IkeFailure:
    """A condition reason (one CamelCase word) and a message a person can act on."""

    reason: str
    message: str


_Rule = tuple[re.Pattern[str], str, Callable[[re.Match[str]], str]]


def _rule(pattern: str, reason: str, message: str | Callable[[re.Match[str]], str]) -> _Rule:
    build = message if callable(message) else (lambda m, text=message: text.format(**m.groupdict()))
    return re.compile(pattern), reason, build


_AUTH = (
    "the peer rejected our authentication: check that both ends use the same pre-shared "
    "key (or that the peer trusts our certificate's CA) and that the peer expects our "
    "local identity"
)

RULES: tuple[_Rule, ...] = (
    _rule(r"received AUTHENTICATION_FAILED notify", "AuthenticationFailed", _AUTH),
    # responder side, from charon's source (pre-shared key MAC check)
    _rule(
        r"tried \d+ shared keys? for '(?P<me>[^']*)' - '(?P<peer>[^']*)', but MAC mismatched",
        "AuthenticationFailed",
        "the peer '{peer}' authenticated with a different pre-shared key than ours",
    ),
    _rule(
        r"no shared key found for '(?P<me>[^']*)' - '(?P<peer>[^']*)'",
        "AuthenticationFailed",
        "charon holds no pre-shared key for '{me}' - '{peer}': the tunnel's secret is "
        "missing or its identities differ",
    ),
    _rule(
        r"no trusted (?:\w+ )?public key found for '(?P<peer>[^']*)'",
        "AuthenticationFailed",
        "the peer's certificate for '{peer}' is not signed by the tunnel's CA, or does "
        "not carry that identity",
    ),
    _rule(
        r"no private key found for '(?P<me>[^']*)'",
        "PrivateKeyMissing",
        "charon has no private key matching our certificate for '{me}': check the "
        "tunnel's TLS Secret holds the key that belongs to its certificate",
    ),
    _rule(
        r"received NO_PROPOSAL_CHOSEN notify error",
        "NoProposalChosen",
        "the peer accepts none of our IKE proposals: align spec.ike.proposals with the "
        "peer's (encryption, integrity, DH group)",
    ),
    _rule(
        r"received NO_PROPOSAL_CHOSEN notify, no CHILD_SA built",
        "NoProposalChosen",
        "IKE is up but the peer refused the CHILD SA: align spec.esp proposals (and PFS "
        "group) with the peer's, or the peer could not install the SA in its kernel",
    ),
    _rule(
        r"no acceptable proposal found|no matching proposal found",
        "NoProposalChosen",
        "the peer's proposals match none of ours: compare both ends' proposals",
    ),
    _rule(
        r"received TS_UNACCEPTABLE notify",
        "TrafficSelectorsUnacceptable",
        "IKE is up but the peer refused our traffic selectors: in policy mode make the "
        "local/remote subnets mirror the peer's; in route mode the peer must accept "
        "0.0.0.0/0,::/0",
    ),
    _rule(
        r"no acceptable traffic selectors found",
        "TrafficSelectorsUnacceptable",
        "the peer proposed traffic selectors that ours do not cover",
    ),
    # initiator side, from charon's source (auth_cfg_t.complies)
    _rule(
        r"constraint check failed: identity '(?P<want>[^']*)' required",
        "PeerIdentityMismatch",
        "the peer authenticated with another identity than the expected '{want}': check "
        "spec.remote.id against the peer's local identity",
    ),
    _rule(
        r"giving up after \d+ retransmits|establishing IKE_SA failed, peer not responding",
        "PeerUnreachable",
        # the tracker names the exchange that went unanswered when it followed it
        "the peer does not answer IKE (UDP 500/4500): check the remote address, "
        "firewalls on the path, and that the peer's IKE daemon is running",
    ),
    _rule(
        r"unable to resolve (?P<host>\S+), initiate aborted",
        "DnsResolutionFailed",
        "the peer address '{host}' does not resolve: fix spec.remote.address or DNS",
    ),
    _rule(
        r"unable to install inbound and outbound IPsec SA \(SAD\) in kernel",
        "KernelSaInstallFailed",
        "the node's kernel refused the IPsec SA (is ESP supported, are the algorithms "
        "available in the kernel?)",
    ),
    _rule(
        r"unable to install IPsec policies \(SPD\) in kernel",
        "KernelPolicyInstallFailed",
        "the node's kernel refused the IPsec policies (a clashing policy or mark?)",
    ),
)


def classify(line: str) -> IkeFailure | None:
    """The reason a charon log line stands for, or None for ordinary progress."""
    for pattern, reason, build in RULES:
        match = pattern.search(line)
        if match:
            return IkeFailure(reason, build(match))
    return None


_LOOKING = re.compile(
    r"looking for peer configs matching (?P<me_host>\S+?)\[(?P<me>[^\]]*)\]\.\.\."
    r"(?P<peer_host>\S+?)\[(?P<peer>[^\]]*)\]"
)
_NO_CONFIG = "no matching peer config found"
_GAVE_UP_FOR_GOOD = "establishing IKE_SA failed"


class ReasonTracker:
    """Keeps the latest failure reason of each connection from charon's events.

    `peers` maps a peer address to our connection name: when a peer initiates with an
    identity no connection accepts, charon has no connection name yet ("(unnamed)"),
    and the peer's address is what ties the failure to a tunnel.
    """

    def __init__(self, peers: Mapping[str, str] | None = None) -> None:
        self.peers: dict[str, str] = dict(peers or {})
        self.expected: dict[str, str] = {}
        self._reasons: dict[str, IkeFailure] = {}
        self._pending: dict[str, tuple[str, str]] = {}
        self.exchanges = Exchanges()

    def get(self, conn: str) -> IkeFailure | None:
        """The latest reason `conn` is not up, or None."""
        return self._reasons.get(conn)

    def feed(self, event: IpsecEvent) -> tuple[str, IkeFailure] | None:
        """Account for one event; returns (conn, reason) when it set a new reason."""
        if event.kind == "ike-updown":  # up, or gone: its requests are answered or moot
            self.exchanges.forget(event.ike_uniqueid)
        if event.kind in ("ike-updown", "child-updown") and event.up:
            self._reasons.pop(event.conn, None)
            return None
        if event.kind != "log":
            return None
        self.exchanges.feed(event.ike_uniqueid, event.message)
        looking = _LOOKING.search(event.message)
        if looking and event.ike_uniqueid:
            self._pending[event.ike_uniqueid] = (looking["peer_host"], looking["peer"])
            return None
        if _NO_CONFIG in event.message and event.ike_uniqueid in self._pending:
            host, identity = self._pending.pop(event.ike_uniqueid)
            conn = self.peers.get(host)
            if conn is None:
                return None
            want = self.expected.get(conn, "the configured remote identity")
            reason = IkeFailure(
                "PeerIdentityMismatch",
                f"the peer {host} identified as '{identity}', but the tunnel expects "
                f"'{want}': check spec.remote.id against the peer's local identity",
            )
            self._reasons[conn] = reason
            return conn, reason
        found = classify(event.message)
        if found is None or not event.conn or event.conn == "(unnamed)":
            return None
        if found.reason == "PeerUnreachable":
            exact = unanswered(self.exchanges.get(event.ike_uniqueid))
            found = IkeFailure(found.reason, exact or found.message)
            if _GAVE_UP_FOR_GOOD in event.message:
                self.exchanges.forget(event.ike_uniqueid)
        self._reasons[event.conn] = found
        return event.conn, found
