"""Which IKE exchange went unanswered: charon's progress lines per IKE SA. Pure.

charon says "giving up after 3 retransmits" whatever it was waiting for. A peer that
never answers IKE_SA_INIT (nothing listens, UDP 500 filtered) and one that answered
IKE_SA_INIT and then went silent during IKE_AUTH (a path that drops the larger,
possibly fragmented IKE_AUTH packet or UDP 4500, a peer that drops an authentication
it dislikes without a word) need different fixes. charon's own lines tell them apart;
these were seen from charon 5.9.8 over VICI (tests/netns captures them):

    generating IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) ... ]
    sending packet: from 192.0.2.1[500] to 192.0.2.2[500] (240 bytes)
    parsed IKE_SA_INIT response 0 [ SA KE No ... ]
    generating IKE_AUTH request 1 [ IDi N(INIT_CONTACT) IDr AUTH SA TSi TSr ... ]
    retransmit 3 of request with message ID 1
    giving up after 3 retransmits
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_GENERATING = re.compile(r"generating (?P<exchange>[A-Z_]+) request (?P<mid>\d+)")
_SENDING = re.compile(r"sending packet: from \S+ to (?P<to>\S+) \((?P<size>\d+) bytes\)")
_PARSED = re.compile(r"parsed (?P<exchange>[A-Z_]+) response (?P<mid>\d+)")
_GAVE_UP = re.compile(r"giving up after (?P<tries>\d+) retransmits")

#: IKE SAs followed at once; the oldest is forgotten beyond this (a failed IKE SA
#: gets no down event, so nothing else would ever drop it).
MAX_TRACKED = 4096


@dataclass(slots=True)
class Progress:
    """What one IKE SA last asked the peer, and which exchanges the peer answered."""

    request: str = ""
    sent_to: str = ""
    size: int = 0
    tries: int = 0
    answered: set[str] = field(default_factory=set)


class Exchanges:
    """Follows charon's progress lines, keyed by the IKE SA's unique id."""

    def __init__(self) -> None:
        self._sas: dict[str, Progress] = {}

    def feed(self, uid: str, line: str) -> None:
        """Account for one log line of IKE SA `uid`."""
        if not uid:
            return
        progress = self._sas.get(uid)
        if progress is None:
            if _GENERATING.search(line) is None:
                return  # only an IKE SA we saw ask something is worth following
            progress = self._sas[uid] = Progress()
            while len(self._sas) > MAX_TRACKED:
                del self._sas[next(iter(self._sas))]
        if m := _GENERATING.search(line):
            progress.request, progress.sent_to, progress.size = m["exchange"], "", 0
        elif m := _SENDING.search(line):
            progress.sent_to, progress.size = m["to"], int(m["size"])
        elif m := _PARSED.search(line):
            progress.answered.add(m["exchange"])
        elif m := _GAVE_UP.search(line):
            progress.tries = int(m["tries"])

    def get(self, uid: str) -> Progress | None:
        """What is known of IKE SA `uid`, or None."""
        return self._sas.get(uid)

    def forget(self, uid: str) -> None:
        """Drop IKE SA `uid` (it is up, or gone)."""
        self._sas.pop(uid, None)


def unanswered(progress: Progress | None) -> str | None:
    """The message for a peer that stopped answering, or None when nothing is known."""
    if progress is None or not progress.request:
        return None
    to = f" to {progress.sent_to}" if progress.sent_to else ""
    size = f"{progress.size}-byte " if progress.size else ""
    sent = f", sent {progress.tries + 1} times" if progress.tries else ""
    asked = f"our {size}{progress.request} request{to}{sent}"
    if progress.request == "IKE_SA_INIT":
        return (
            f"the peer does not answer IKE_SA_INIT ({asked}, got no reply): check the "
            "remote address, firewalls on the path (UDP 500 and 4500), and that the "
            "peer's IKE daemon is running"
        )
    if progress.request == "IKE_AUTH" and "IKE_SA_INIT" in progress.answered:
        return (
            f"the peer answered IKE_SA_INIT, then went silent during IKE_AUTH ({asked}, "
            "got no reply): the path may drop larger or fragmented UDP packets (check the "
            "path MTU, enable IKE fragmentation on the peer) or UDP 4500, or the peer "
            "drops our authentication without a word (check its log for our identity)"
        )
    return (
        f"the peer stopped answering ({asked}, got no reply): the peer or the path to it "
        "went down after the IKE SA was set up"
    )
