"""strongSwan's charon over VICI: loading, starting, stopping and removing connections.

The adapter's parts, one job each:
- `ipsec_session`: the command session (serialized, reconnecting, typed errors); vici is
  synchronous, so commands run in a worker thread (`asyncio.to_thread`) and the event
  loop never blocks on charon;
- `ipsec_listing`: what charon holds, listed at most once per pass;
- `ipsec_events`: charon's events, followed on a second session in a dedicated thread,
  so state changes are seen at once rather than at the next poll;
- this module: what to load, initiate, terminate and unload, and the re-load after a
  charon restart.

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
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from routevpn.api import naming
from routevpn.dataplane import builders, ipsec_events
from routevpn.dataplane.errors import IpsecError
from routevpn.dataplane.facts import Change, IkeSaFacts, IpsecFacts
from routevpn.dataplane.ipsec_listing import CharonListing
from routevpn.dataplane.ipsec_session import ViciCommands, tunnel_ref
from routevpn.dataplane.plan import CertAuth, PskCredential, TunnelPlan
from routevpn.dataplane.secret_record import SecretRecord
from routevpn.dataplane.vici_facts import IpsecEvent, text

log = logging.getLogger(__name__)

# How long an initiation (ours, or charon's own start action on load) may stay queued in
# charon before an IKE SA shows up in list-sas. Initiating again within it would start a
# second IKE SA for the same tunnel (a pass right after a load, or the re-load after a
# charon restart, which used to initiate on top of the start action); a CONNECTING IKE SA
# is listed, so after this an SA-less connection really has none and is initiated again.
INITIATE_GRACE = 30.0


@dataclass(slots=True)
class _Loaded:
    """What this adapter last loaded for one connection (digests only, no secrets)."""

    plan: TunnelPlan
    conn_digest: str
    secret_digest: str
    key_id: str | None = None
    wants_up: bool = False


def _digest(message: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(message, sort_keys=True).encode()).hexdigest()


class IpsecAdapter:
    """Loads, starts, stops and lists routevpn's connections in one charon."""

    def __init__(
        self,
        vici_socket: str,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        record: SecretRecord | None = None,
    ) -> None:
        self.vici_socket = vici_socket
        #: the secrets loaded before this adapter started (see secret_record), if kept
        self._record = record
        self._clock = clock
        #: connection name → when an initiation was last asked of charon
        self._initiated: dict[str, float] = {}
        self._cmd = ViciCommands(vici_socket, timeout)
        self._loaded: dict[str, _Loaded] = {}
        self._seen_generation = 0
        # `self._cmd` is read at each call (not bound here): tests swap in a fake session.
        self._listing = CharonListing(self._run, lambda: self._cmd.generation)

    def close(self) -> None:
        """Close the command session."""
        self._cmd.close()

    async def _run(self, ref: str, what: str, fn: Any) -> Any:
        return await asyncio.to_thread(self._cmd.call, ref, what, fn)

    # -- passes and what charon holds (see ipsec_listing) -----------------------------

    def begin_pass(self) -> None:
        """Until `end_pass`, list charon's conns, keys and SAs at most once."""
        self._listing.begin_pass()

    def end_pass(self) -> None:
        """Forget the pass's listing: every later question asks charon again."""
        self._listing.end_pass()

    async def conns(self) -> list[str]:
        """Names of every connection charon has loaded (routevpn's and others')."""
        return await self._listing.conns()

    async def sas(self, conn: str | None = None) -> list[IkeSaFacts]:
        """IKE SAs (with CHILD SAs), of one connection or all."""
        return await self._listing.sas(conn)

    async def observe(self) -> IpsecFacts:
        """Connections and SAs charon has (in a pass: also the pass's listing)."""
        return await self._listing.observe()

    # -- load / unload -----------------------------------------------------------------

    async def load(self, plan: TunnelPlan) -> list[Change]:
        """Load `plan`'s credentials and connection into charon unless it already holds them."""
        await self._check_generation()
        name = plan.conn.name
        message = builders.build_conn(plan)
        conn_digest = _digest(message)
        secret_digest = (
            plan.auth.psk.digest()
            if isinstance(plan.auth, PskCredential)
            else plan.auth.key_pem.digest()
        )
        prev = self._loaded.get(name)
        secret_stale = prev is None or prev.secret_digest != secret_digest
        key_id = prev.key_id if prev else None
        changes: list[Change] = []
        if isinstance(plan.auth, PskCredential):
            changes += await self._load_psk(plan, secret_stale)
        elif isinstance(plan.auth, CertAuth):
            key_id, changes = await self._load_key(plan, key_id, secret_stale)
        conn_stale = prev is None or prev.conn_digest != conn_digest
        changes += await self._load_conn(plan, message, conn_stale)
        if self._rotated(name, prev, secret_digest):
            changes += await self._reauthenticate(plan.ref, name)
        if self._record is not None:
            self._record.put(name, secret_digest)
        wants_up = prev.wants_up if prev else False
        self._loaded[name] = _Loaded(plan, conn_digest, secret_digest, key_id, wants_up)
        for change in changes:
            log.info("%s", change)
        return changes

    def _rotated(self, conn: str, prev: _Loaded | None, secret_digest: str) -> bool:
        """Was `conn` loaded with another secret: by this adapter, or (first load
        since the agent started) by the agent before it, as its record says."""
        if prev is not None:
            return prev.secret_digest != secret_digest
        return self._record is not None and self._record.differs(conn, secret_digest)

    async def _load_psk(self, plan: TunnelPlan, stale: bool) -> list[Change]:
        """Load the shared key unless charon lists it and it is the one we loaded."""
        name = plan.conn.name
        have = name in await self._listing.shared_ids()
        if have and not stale:
            return []
        shared = builders.build_shared(plan)
        await self._run(plan.ref, "load-shared", lambda s: s.load_shared(shared))
        (await self._listing.shared_ids()).add(name)
        return [Change(plan.ref, "secret", "loaded", f"psk {name}")]

    async def _reauthenticate(self, ref: str, conn: str) -> list[Change]:
        """Re-authenticate `conn`'s established IKE SAs: its secret was rotated.

        An IKE SA authenticated with the old PSK or key would otherwise live on until its
        own re-authentication (hours away, or never: a rekey keeps the old authentication).
        charon runs IKE_SA_INIT + IKE_AUTH with the credentials loaded now; with its
        `make_before_break` the new IKE and CHILD SAs are up before the old ones go.
        """
        changes: list[Change] = []
        for sa in await self.sas(conn):
            if sa.state != "ESTABLISHED":
                continue
            request = {"ike-id": sa.uniqueid, "reauth": "yes"}
            await self._run(ref, "rekey", lambda s, r=request: s.rekey(r))
            changes.append(Change(ref, "ike", "reauthenticating", f"{conn} #{sa.uniqueid}"))
        return changes

    async def _load_key(
        self, plan: TunnelPlan, key_id: str | None, stale: bool
    ) -> tuple[str | None, list[Change]]:
        """Load the private key unless charon lists it and it is the one we loaded.

        Returns the key's id in charon (charon names keys by their public key's hash).
        """
        have = key_id is not None and key_id in await self._listing.key_ids()
        if have and not stale:
            return key_id, []
        key = builders.build_key(plan)
        reply = await self._run(plan.ref, "load-key", lambda s: s.load_key(key))
        key_id = text(reply.get("id")) or None
        if key_id is not None:
            (await self._listing.key_ids()).add(key_id)
        return key_id, [Change(plan.ref, "secret", "loaded", f"private key {key_id}")]

    async def _load_conn(
        self, plan: TunnelPlan, message: dict[str, Any], stale: bool
    ) -> list[Change]:
        """Load the connection unless charon lists it and it is the one we loaded."""
        name = plan.conn.name
        if await self._listing.has_conn(name) and not stale:
            return []
        await self._run(plan.ref, "load-conn", lambda s: s.load_conn(message))
        self._listing.note("conns", name)
        if plan.conn.child.start_action == "start":
            self._initiated[name] = self._clock()  # charon initiates it itself
        return [Change(plan.ref, "conn", "loaded", name)]

    async def initiate(self, conn: str) -> list[Change]:
        """Start the IKE and CHILD SA of `conn` unless an IKE SA exists; never waits for IKE.

        `timeout = -1` makes charon queue the initiation and answer at once; progress
        arrives as events (`follow()`).
        """
        ref = tunnel_ref(conn)
        if conn in self._loaded:
            self._loaded[conn].wants_up = True
        if await self._listing.has_sa(conn):
            self._initiated.pop(conn, None)
            return []
        asked = self._initiated.get(conn)
        if asked is not None and self._clock() - asked < INITIATE_GRACE:
            return []  # still queued in charon: no second IKE SA
        self._initiated[conn] = self._clock()
        loaded = self._loaded.get(conn)
        # one CHILD SA per family: each asked for; charon puts the second on the IKE SA
        # the first is negotiating (same config), so there is still one IKE SA
        for child in builders.child_names(loaded.plan) if loaded else (conn,):
            request = {"child": child, "ike": conn, "timeout": "-1", "init-limits": "no"}
            try:
                await self._run(ref, "initiate", lambda s, r=request: list(s.initiate(r)))
            except IpsecError as e:
                # Even with timeout -1 charon answers "failed" for what fails at once (an
                # unresolvable peer name). That is the tunnel's state, not an error of
                # this call: the reason arrives as a `log` event (see reasons.py).
                log.warning("tunnel %s: initiate refused at once: %s", ref, e.message)
                return []
        self._listing.note("sa_conns", conn)  # initiating: never a second one in this pass
        change = Change(ref, "ike", "initiating", conn)
        log.info("%s", change)
        return [change]

    async def terminate(self, conn: str) -> list[Change]:
        """Close every IKE SA of `conn` (without waiting for the peer's answer)."""
        ref = tunnel_ref(conn)
        if conn in self._loaded:
            self._loaded[conn].wants_up = False
        changes: list[Change] = []
        for sa in await self.sas(conn):  # this connection's SAs only: a filtered list
            request = {"ike-id": sa.uniqueid, "timeout": "-1", "force": "yes"}
            await self._run(ref, "terminate", lambda s, r=request: list(s.terminate(r)))
            changes.append(Change(ref, "ike", "terminated", f"{conn} #{sa.uniqueid}"))
        self._listing.forget("sa_conns", conn)
        for change in changes:
            log.info("%s", change)
        return changes

    async def unload(self, conn: str) -> list[Change]:
        """Terminate `conn`'s SAs and remove it and its credentials from charon."""
        ref = tunnel_ref(conn)
        terminated = await self.terminate(conn)  # logs its own changes
        changes: list[Change] = []
        # within a pass, charon's lists are fetched once and kept current here
        if await self._listing.has_conn(conn):
            await self._run(ref, "unload-conn", lambda s: s.unload_conn({"name": conn}))
            self._listing.forget("conns", conn)
            changes.append(Change(ref, "conn", "unloaded", conn))
        if conn in await self._listing.shared_ids():
            await self._run(ref, "unload-shared", lambda s: s.unload_shared({"id": conn}))
            self._listing.forget("shared", conn)
            changes.append(Change(ref, "secret", "unloaded", f"psk {conn}"))
        self._initiated.pop(conn, None)
        if self._record is not None:
            self._record.drop(conn)
        loaded = self._loaded.pop(conn, None)
        if loaded is not None and loaded.key_id and loaded.key_id in await self._listing.key_ids():
            key_id = loaded.key_id
            await self._run(ref, "unload-key", lambda s: s.unload_key({"id": key_id}))
            self._listing.forget("keys", key_id)
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
        names |= await self._listing.shared_ids()
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

    # -- events (see ipsec_events) ------------------------------------------------------

    def follow(self, retry: float = 0.5) -> AsyncGenerator[IpsecEvent, None]:
        """Yield charon's events as they happen, across charon restarts.

        After the event session reconnects, what charon lost is re-loaded (`resync`)
        before the "reconnected" event is yielded.
        """
        return ipsec_events.follow(self.vici_socket, self.resync, retry)
