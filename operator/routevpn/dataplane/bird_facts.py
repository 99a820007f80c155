"""BIRD's BGP sessions as `show protocols all` prints them (BIRD 2.0.12): pure parsing.

Each protocol starts with a 1002 row (``name proto table state since info``) followed
by 1006 detail lines. For a BGP protocol the details hold ``BGP state:``, ``Neighbor
address:``, ``Last error:`` (when there was one), and per channel ``Routes: 2 imported,
2 filtered, 1 exported, 2 preferred`` (``filtered`` only with ``import keep filtered``)
and ``Import limit: 5 [HIT]`` once the limit stopped the session. A session stopped by
its import limit reads ``down``, BGP state ``Down``, last error ``Automatic shutdown:
Route limit exceeded``.

``Since`` is printed as BIRD's ``timeformat protocol`` says: ``iso long`` (date and
time, what routevpn's configuration sets) parses to a datetime; BIRD's default, a time
of day only, doesn't say which day and gives None.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

#: BGP states of RFC 4271 as BIRD names them, plus BIRD's Down (protocol stopped).
BGP_STATES: Final = ("Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established")
ESTABLISHED: Final = "Established"
#: The reason a session stopped by its import limit shows (and `limit_hit` says).
LIMIT_ERROR: Final = "Route limit exceeded"
PROTOCOL_ROW: Final = 1002
_ISO_SINCE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?"
_ROW = re.compile(
    rf"^(?P<name>\S+)\s+(?P<proto>\S+)\s+(?P<table>\S+)\s+(?P<state>\S+)\s+"
    rf"(?P<since>{_ISO_SINCE}|\S+)\s*(?P<info>.*?)\s*$"
)
_COUNT = re.compile(r"(\d+) (imported|filtered|exported|preferred)")


@dataclass(frozen=True, slots=True)
class BgpSessionFacts:
    """One BIRD BGP protocol: its session state and route counts (all channels summed).

    `imported` are the routes the import filter accepted, `filtered` the ones it refused
    (kept and counted only with ``import keep filtered on``), `exported` what goes to the
    peer.
    """

    protocol: str
    state: str
    bgp_state: str
    since: datetime | None
    since_text: str
    info: str = ""
    last_error: str = ""
    neighbor: str = ""
    imported: int = 0
    filtered: int = 0
    exported: int = 0
    limit_hit: bool = False

    @property
    def established(self) -> bool:
        """True when the BGP session is up."""
        return self.bgp_state == ESTABLISHED

    @property
    def received(self) -> int:
        """Prefixes the peer sent that BIRD holds: accepted plus refused."""
        return self.imported + self.filtered

    @property
    def accepted(self) -> int:
        """Prefixes the import filter accepted."""
        return self.imported

    @property
    def refused(self) -> int:
        """Prefixes the import filter refused (received - accepted)."""
        return self.filtered

    @property
    def advertised(self) -> int:
        """Prefixes sent to the peer."""
        return self.exported

    @property
    def prefix_limit(self) -> bool:
        """True when the import limit stopped the session.

        ``[HIT]`` shows a moment before the session goes down: only a session that is not
        Established counts as stopped by it.
        """
        return not self.established and (self.limit_hit or LIMIT_ERROR in self.last_error)


def parse_since(text: str) -> datetime | None:
    """BIRD's ``since`` column as a local-time datetime, or None without a date in it."""
    if not re.fullmatch(_ISO_SINCE, text):
        return None
    return datetime.fromisoformat(text).astimezone()


def _row(text: str) -> BgpSessionFacts | None:
    match = _ROW.match(text)
    if match is None or match["proto"] != "BGP":
        return None
    info = match["info"]
    # The info column is the BGP state (up or starting), then the last error if any;
    # a protocol that is down shows only the error.
    first, _, rest = info.partition(" ")
    state = first if first in BGP_STATES else "Down"
    error = rest.strip() if first in BGP_STATES else info
    return BgpSessionFacts(
        protocol=match["name"],
        state=match["state"],
        bgp_state=state,
        since=parse_since(match["since"]),
        since_text=match["since"],
        info=info,
        last_error=error,
    )


def _detail(facts: BgpSessionFacts, text: str) -> BgpSessionFacts:
    key, sep, value = text.strip().partition(":")
    value = value.strip()
    if not sep:
        return facts
    if key == "BGP state":
        return replace(facts, bgp_state=value)
    if key == "Neighbor address":
        return replace(facts, neighbor=value)
    if key == "Last error":
        return replace(facts, last_error=value)
    if key == "Import limit" and "[HIT]" in value:
        return replace(facts, limit_hit=True)
    if key == "Routes":
        counts = {kind: int(n) for n, kind in _COUNT.findall(value)}
        return replace(
            facts,
            imported=facts.imported + counts.get("imported", 0),
            filtered=facts.filtered + counts.get("filtered", 0),
            exported=facts.exported + counts.get("exported", 0),
        )
    return facts


def parse_protocols(lines: Iterable[tuple[int, str]]) -> list[BgpSessionFacts]:
    """The BGP protocols of a `show protocols all` reply, given as (code, text) lines.

    Other protocols (device, kernel, static, pipe, bfd) are skipped. Lines that are not
    understood are ignored, so a newer BIRD adding details breaks nothing.
    """
    sessions: list[BgpSessionFacts] = []
    current: BgpSessionFacts | None = None
    for code, text in lines:
        if code == PROTOCOL_ROW:
            if current is not None:
                sessions.append(current)
            current = _row(text)
        elif current is not None and code == 1006:
            current = _detail(current, text)
    if current is not None:
        sessions.append(current)
    return sessions


def by_protocol(sessions: Sequence[BgpSessionFacts]) -> dict[str, BgpSessionFacts]:
    """Sessions keyed by their BIRD protocol name."""
    return {s.protocol: s for s in sessions}
