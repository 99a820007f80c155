"""strongSwan's charon over VICI: connections, credentials, SAs and events.

The only module importing vici. vici is synchronous, so:
- commands go through one `vici.Session` guarded by a lock and run in a worker thread
  (`asyncio.to_thread`); the event loop never blocks on charon;
- events (ike-updown, child-updown, ike-rekey, child-rekey, log) are followed on a
  second session in a dedicated thread that feeds an `asyncio.Queue`, so state
  changes are seen at once rather than at the next poll.

charon never returns secrets, so "does charon already hold what the plan says" is
answered with a digest of what this adapter loaded plus charon's own list of
connection names, shared-key ids and key ids: anything charon no longer lists (after
a restart) is loaded again. When either session loses charon it reconnects, and
everything remembered is re-loaded and re-initiated before a "reconnected" event is
delivered. Logs name tunnels by `namespace/name`; no message that may hold a key is
ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import vici
from vici.exception import CommandException, SessionException

from routevpn.api import naming
from routevpn.dataplane import builders, vici_facts
from routevpn.dataplane.errors import CharonUnavailableError, IpsecError
from routevpn.dataplane.facts import Change, IkeSaFacts, IpsecFacts
from routevpn.dataplane.plan import CertAuth, PskAuth, TunnelPlan
from routevpn.dataplane.vici_facts import IpsecEvent, text, texts

log = logging.getLogger(__name__)

EVENTS = ("ike-updown", "child-updown", "ike-rekey", "child-rekey", "log")
# How long an initiation (ours, or charon's own start action on load) may stay queued in
# charon before an IKE SA shows up in list-sas. Initiating again within it would start a
# second IKE SA for the same tunnel (a pass right after a load, or the re-load after a
# charon restart, which used to initiate on top of the start action); a CONNECTING IKE SA
# is listed, so after this an SA-less connection really has none and is initiated again.
INITIATE_GRACE = 30.0


def _ref(conn: str) -> str:
    parsed = naming.parse_conn_name(conn)
    return naming.tunnel_ref(*parsed) if parsed else conn


def _connect(path: str, timeout: float) -> vici.Session:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return vici.Session(sock)


@dataclass(slots=True)
class _Loaded:
    """What this adapter last loaded for one connection (digests only, no secrets)."""

    plan: TunnelPlan
    conn_digest: str
    secret_digest: str
    key_id: str | None = None
    wants_up: bool = False


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


class ViciCommands:
    """The command session: synchronous, serialized, reconnecting. Use from a thread."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._session: vici.Session | None = None
        #: bumped on every (re)connect, so callers can tell they talk to a new charon
        self.generation = 0

    def close(self) -> None:
        """Drop the session (the next command reconnects)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._session is not None:
            with contextlib.suppress(OSError):
                self._session.transport.close()
            self._session = None

    def call(self, ref: str, what: str, fn: Any) -> Any:
        """Run `fn(session)`; reconnect once if charon went away; type the errors."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._session is None:
                        self._session = _connect(self.path, self.timeout)
                        self.generation += 1
                    return fn(self._session)
                except CommandException as e:
                    raise IpsecError(ref, f"{what}: {e}") from e
                except (OSError, SessionException) as e:
                    self._drop()
                    if attempt == 2:
                        raise CharonUnavailableError(ref, f"{what}: charon unreachable: {e}") from e
            raise AssertionError("unreachable")


class IpsecAdapter:
    """Loads, starts, stops and lists routevpn's connections in one charon."""

    def __init__(
        self,
        vici_socket: str,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.vici_socket = vici_socket
        self._clock = clock
        #: connection name → when an initiation was last asked of charon
        self._initiated: dict[str, float] = {}
        self._cmd = ViciCommands(vici_socket, timeout)
        self._loaded: dict[str, _Loaded] = {}
        self._seen_generation = 0
        self._in_pass = False
        self._listing: _Listing | None = None

    def close(self) -> None:
        """Close the command session."""
        self._cmd.close()

    async def _run(self, ref: str, what: str, fn: Any) -> Any:
        return await asyncio.to_thread(self._cmd.call, ref, what, fn)

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
        if self._listing is None or self._listing.generation != self._cmd.generation:
            self._listing = _Listing(self._cmd.generation)
        return self._listing

    def _forget_listed(self, what: str, name: str) -> None:
        """Keep the pass's listing current after unloading `name` from list `what`."""
        cache = self._cached()
        listed: set[str] | None = getattr(cache, what) if cache is not None else None
        if listed is not None:
            listed.discard(name)

    # -- what charon holds ------------------------------------------------------------

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

    async def _has_conn(self, name: str) -> bool:
        cache = self._cached()
        if cache is None:
            return name in await self._list_conns()
        if cache.conns is None:
            cache.conns = await self._list_conns()
        return name in cache.conns

    async def _shared_ids(self) -> set[str]:
        cache = self._cached()
        if cache is not None and cache.shared is not None:
            return cache.shared
        reply = await self._run("charon", "get-shared", lambda s: s.get_shared())
        ids = set(texts(reply.get("keys")))
        if cache is not None:
            cache.shared = ids
        return ids

    async def _key_ids(self) -> set[str]:
        cache = self._cached()
        if cache is not None and cache.keys is not None:
            return cache.keys
        reply = await self._run("charon", "get-keys", lambda s: s.get_keys())
        ids = set(texts(reply.get("keys")))
        if cache is not None:
            cache.keys = ids
        return ids

    async def _has_sa(self, conn: str) -> bool:
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
            _ref(conn or "charon"), "list-sas", lambda s: list(s.list_sas(filters))
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

    # -- load / unload -----------------------------------------------------------------

    async def load(self, plan: TunnelPlan) -> list[Change]:
        """Load `plan`'s credentials and connection into charon unless it already holds them."""
        await self._check_generation()
        name, ref = plan.conn.name, plan.ref
        message = builders.build_conn(plan)
        conn_digest = hashlib.sha256(json.dumps(message, sort_keys=True).encode()).hexdigest()
        secret_digest = (
            plan.auth.psk.digest() if isinstance(plan.auth, PskAuth) else plan.auth.key_pem.digest()
        )
        prev = self._loaded.get(name)
        changes: list[Change] = []
        key_id = prev.key_id if prev else None
        if isinstance(plan.auth, PskAuth):
            have = name in await self._shared_ids()
            if not have or prev is None or prev.secret_digest != secret_digest:
                shared = builders.build_shared(plan)
                await self._run(ref, "load-shared", lambda s: s.load_shared(shared))
                (await self._shared_ids()).add(name)
                changes.append(Change(ref, "secret", "loaded", f"psk {name}"))
        elif isinstance(plan.auth, CertAuth):
            have = key_id is not None and key_id in await self._key_ids()
            if not have or prev is None or prev.secret_digest != secret_digest:
                key = builders.build_key(plan)
                reply = await self._run(ref, "load-key", lambda s: s.load_key(key))
                key_id = text(reply.get("id")) or None
                if key_id is not None:
                    (await self._key_ids()).add(key_id)
                changes.append(Change(ref, "secret", "loaded", f"private key {key_id}"))
        if not await self._has_conn(name) or prev is None or prev.conn_digest != conn_digest:
            await self._run(ref, "load-conn", lambda s: s.load_conn(message))
            cache = self._cached()
            if cache is not None and cache.conns is not None:
                cache.conns.add(name)
            changes.append(Change(ref, "conn", "loaded", name))
            if plan.conn.child.start_action == "start":
                self._initiated[name] = self._clock()  # charon initiates it itself
        wants_up = prev.wants_up if prev else False
        self._loaded[name] = _Loaded(plan, conn_digest, secret_digest, key_id, wants_up)
        for change in changes:
            log.info("%s", change)
        return changes

    async def initiate(self, conn: str) -> list[Change]:
        """Start the IKE and CHILD SA of `conn` unless an IKE SA exists; never waits for IKE.

        `timeout = -1` makes charon queue the initiation and answer at once; progress
        arrives as events (`follow()`).
        """
        ref = _ref(conn)
        if conn in self._loaded:
            self._loaded[conn].wants_up = True
        if await self._has_sa(conn):
            self._initiated.pop(conn, None)
            return []
        asked = self._initiated.get(conn)
        if asked is not None and self._clock() - asked < INITIATE_GRACE:
            return []  # still queued in charon: no second IKE SA
        self._initiated[conn] = self._clock()
        request = {"child": conn, "ike": conn, "timeout": "-1", "init-limits": "no"}
        try:
            await self._run(ref, "initiate", lambda s: list(s.initiate(request)))
        except IpsecError as e:
            # Even with timeout -1 charon answers "failed" for what fails at once (an
            # unresolvable peer name). That is the tunnel's state, not an error of this
            # call: the reason arrives as a `log` event (see reasons.py).
            log.warning("tunnel %s: initiate refused at once: %s", ref, e.message)
            return []
        cache = self._cached()
        if cache is not None and cache.sa_conns is not None:
            cache.sa_conns.add(conn)  # initiating: never a second one in this pass
        change = Change(ref, "ike", "initiating", conn)
        log.info("%s", change)
        return [change]

    async def terminate(self, conn: str) -> list[Change]:
        """Close every IKE SA of `conn` (without waiting for the peer's answer)."""
        ref = _ref(conn)
        if conn in self._loaded:
            self._loaded[conn].wants_up = False
        changes: list[Change] = []
        for sa in await self.sas(conn):  # this connection's SAs only: a filtered list
            request = {"ike-id": sa.uniqueid, "timeout": "-1", "force": "yes"}
            await self._run(ref, "terminate", lambda s, r=request: list(s.terminate(r)))
            changes.append(Change(ref, "ike", "terminated", f"{conn} #{sa.uniqueid}"))
        cache = self._cached()
        if cache is not None and cache.sa_conns is not None:
            cache.sa_conns.discard(conn)
        for change in changes:
            log.info("%s", change)
        return changes

    async def unload(self, conn: str) -> list[Change]:
        """Terminate `conn`'s SAs and remove it and its credentials from charon."""
        ref = _ref(conn)
        terminated = await self.terminate(conn)  # logs its own changes
        changes: list[Change] = []
        # within a pass, charon's lists are fetched once and kept current here
        if await self._has_conn(conn):
            await self._run(ref, "unload-conn", lambda s: s.unload_conn({"name": conn}))
            self._forget_listed("conns", conn)
            changes.append(Change(ref, "conn", "unloaded", conn))
        if conn in await self._shared_ids():
            await self._run(ref, "unload-shared", lambda s: s.unload_shared({"id": conn}))
            self._forget_listed("shared", conn)
            changes.append(Change(ref, "secret", "unloaded", f"psk {conn}"))
        self._initiated.pop(conn, None)
        loaded = self._loaded.pop(conn, None)
        if loaded is not None and loaded.key_id and loaded.key_id in await self._key_ids():
            key_id = loaded.key_id
            await self._run(ref, "unload-key", lambda s: s.unload_key({"id": key_id}))
            self._forget_listed("keys", key_id)
            changes.append(Change(ref, "secret", "unloaded", f"private key {key_id}"))
        for change in changes:
            log.info("%s", change)
        return terminated + changes

    async def garbage_collect(self, desired: Iterable[str]) -> list[Change]:
        """Unload routevpn's connections (by name prefix) that are not in `desired`.

        Connections and shared keys without routevpn's prefix are never touched.
        """
        keep = set(desired)
        changes: list[Change] = []
        names = set(await self.conns()) | {sa.conn for sa in await self.sas()}
        names |= await self._shared_ids()
        for conn in sorted(names):
            if naming.parse_conn_name(conn) is not None and conn not in keep:
                changes += await self.unload(conn)
        return changes

    # -- charon restarts --------------------------------------------------------------

    async def _check_generation(self) -> None:
        if self._cmd.generation != self._seen_generation and self._seen_generation:
            await self.resync()
        self._seen_generation = max(self._cmd.generation, 1)

    async def resync(self) -> list[Change]:
        """Re-load everything remembered that charon no longer holds; re-initiate."""
        self._seen_generation = max(self._cmd.generation, 1)
        self._initiated.clear()  # a new charon holds none of the old one's initiations
        changes: list[Change] = []
        for name, loaded in list(self._loaded.items()):
            changes += await self.load(loaded.plan)
            if loaded.wants_up:
                changes += await self.initiate(name)
        return changes

    # -- events ---------------------------------------------------------------------

    async def follow(self, retry: float = 0.5) -> AsyncGenerator[IpsecEvent, None]:
        """Yield charon's events as they happen, across charon restarts.

        A dedicated thread listens on its own VICI session and hands events to this
        coroutine through a queue. After it reconnects, what charon lost is re-loaded
        (`resync`) before the "reconnected" event is yielded.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[IpsecEvent] = asyncio.Queue()
        stop = threading.Event()
        thread = threading.Thread(
            target=_listen,
            args=(self.vici_socket, loop, queue, stop, retry),
            name="routevpn-vici-events",
            daemon=True,
        )
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item.kind == "reconnected":
                    try:
                        await self.resync()
                    except CharonUnavailableError:
                        log.warning("charon went away again during re-load; will retry")
                yield item
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 5.0)


def _listen(
    path: str,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[IpsecEvent],
    stop: threading.Event,
    retry: float,
) -> None:
    """Event thread: listen, translate, hand over; reconnect until told to stop."""
    first = True
    while not stop.is_set():
        try:
            session = _connect(path, 5.0)
        except OSError:
            stop.wait(retry)
            continue
        if not first:
            loop.call_soon_threadsafe(queue.put_nowait, IpsecEvent(kind="reconnected"))
            log.info("VICI event session reconnected to charon")
        first = False
        try:
            for kind, data in session.listen(list(EVENTS), timeout=0.5):
                if stop.is_set():
                    break
                if kind is None:
                    continue
                item = vici_facts.event(text(kind), data)
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except (OSError, SessionException):
            log.warning("VICI event session lost charon; reconnecting")
        finally:
            with contextlib.suppress(OSError):
                session.transport.close()
