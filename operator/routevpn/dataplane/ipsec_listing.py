"""What charon holds: its connections, shared keys, private keys and SAs, read over VICI.

Within a pass (`begin_pass` … `end_pass`) each list is fetched from charon at most
once and kept current by the adapter's own commands (`note`, `forget`), so a pass over
many tunnels asks charon a handful of questions instead of a few per tunnel. Outside a
pass every question goes to charon.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from routevpn.dataplane import vici_facts
from routevpn.dataplane.facts import IkeSaFacts, IpsecFacts
from routevpn.dataplane.ipsec_session import tunnel_ref
from routevpn.dataplane.vici_facts import texts

#: Runs one VICI command: `run(ref, what, fn)` calls `fn(session)` on the command session.
Run = Callable[[str, str, Any], Awaitable[Any]]
#: The lists a pass keeps; `note`/`forget` name one.
Listed = Literal["conns", "shared", "keys", "sa_conns"]


@dataclass(slots=True)
class _Listing:
    """charon's lists, fetched at most once per pass and kept current with our commands.

    Each field is filled on first use; `generation` tells a listing taken from a charon
    that has since restarted (then everything is fetched again).
    """

    generation: int
    conns: set[str] | None = None
    shared: set[str] | None = None
    keys: set[str] | None = None
    sa_conns: set[str] | None = None


class CharonListing:
    """Answers "does charon hold …?", from one listing per pass."""

    def __init__(self, run: Run, generation: Callable[[], int]) -> None:
        self._run = run
        #: the command session's generation now (a new one means charon restarted)
        self._generation = generation
        self._in_pass = False
        self._listing: _Listing | None = None

    # -- passes ---------------------------------------------------------------------

    def begin_pass(self) -> None:
        """Until `end_pass`, list charon's conns, keys and SAs at most once."""
        self._in_pass = True
        self._listing = None

    def end_pass(self) -> None:
        """Forget the pass's listing: every later question asks charon again."""
        self._in_pass = False
        self._listing = None

    def _cached(self) -> _Listing | None:
        """The pass's listing, or None outside a pass (then ask charon every time)."""
        if not self._in_pass:
            return None
        if self._listing is None or self._listing.generation != self._generation():
            self._listing = _Listing(self._generation())
        return self._listing

    def note(self, what: Listed, name: str) -> None:
        """Keep the pass's listing current after loading or initiating `name`."""
        cache = self._cached()
        listed: set[str] | None = getattr(cache, what) if cache is not None else None
        if listed is not None:
            listed.add(name)

    def forget(self, what: Listed, name: str) -> None:
        """Keep the pass's listing current after unloading or terminating `name`."""
        cache = self._cached()
        listed: set[str] | None = getattr(cache, what) if cache is not None else None
        if listed is not None:
            listed.discard(name)

    # -- questions ------------------------------------------------------------------

    async def _list_conns(self) -> set[str]:
        reply = await self._run("charon", "get-conns", lambda s: s.get_conns())
        return set(texts(reply.get("conns")))

    async def conns(self) -> list[str]:
        """Names of every connection charon has loaded (routevpn's and others')."""
        cache = self._cached()
        if cache is None:
            return sorted(await self._list_conns())
        if cache.conns is None:
            cache.conns = await self._list_conns()
        return sorted(cache.conns)

    async def has_conn(self, name: str) -> bool:
        """Whether charon has loaded connection `name`."""
        cache = self._cached()
        if cache is None:
            return name in await self._list_conns()
        if cache.conns is None:
            cache.conns = await self._list_conns()
        return name in cache.conns

    async def shared_ids(self) -> set[str]:
        """The ids of the shared keys charon holds (in a pass: the pass's own set)."""
        cache = self._cached()
        if cache is not None and cache.shared is not None:
            return cache.shared
        reply = await self._run("charon", "get-shared", lambda s: s.get_shared())
        ids = set(texts(reply.get("keys")))
        if cache is not None:
            cache.shared = ids
        return ids

    async def key_ids(self) -> set[str]:
        """The ids of the private keys charon holds (in a pass: the pass's own set)."""
        cache = self._cached()
        if cache is not None and cache.keys is not None:
            return cache.keys
        reply = await self._run("charon", "get-keys", lambda s: s.get_keys())
        ids = set(texts(reply.get("keys")))
        if cache is not None:
            cache.keys = ids
        return ids

    async def has_sa(self, conn: str) -> bool:
        """Whether `conn` has an IKE SA (in a pass: from one listing of all SAs)."""
        cache = self._cached()
        if cache is None:
            return bool(await self.sas(conn))
        if cache.sa_conns is None:
            cache.sa_conns = {sa.conn for sa in await self.sas()}
        return conn in cache.sa_conns

    async def sas(self, conn: str | None = None) -> list[IkeSaFacts]:
        """IKE SAs (with CHILD SAs), of one connection or all."""
        filters = {"ike": conn} if conn else None
        events = await self._run(
            tunnel_ref(conn or "charon"), "list-sas", lambda s: list(s.list_sas(filters))
        )
        return vici_facts.ike_sas(events)

    async def observe(self) -> IpsecFacts:
        """Connections and SAs charon has (in a pass: also the pass's listing)."""
        conns = await self._list_conns()
        sas = await self.sas()
        cache = self._cached()
        if cache is not None:
            cache.conns, cache.sa_conns = set(conns), {sa.conn for sa in sas}
        return IpsecFacts(conns=tuple(sorted(conns)), sas=tuple(sas))
