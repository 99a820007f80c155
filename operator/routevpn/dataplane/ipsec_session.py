"""The VICI command session to charon: serialized, reconnecting, with typed errors.

vici is synchronous: one `vici.Session` guarded by a lock, used from a worker thread
(the adapter calls it through `asyncio.to_thread`), so the event loop never blocks on
charon. One of the two modules importing vici (the other is `ipsec_events`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import vici
from vici.exception import CommandException, SessionException

from routevpn.api import naming
from routevpn.dataplane.errors import CharonUnavailableError, IpsecError


def tunnel_ref(conn: str) -> str:
    """`namespace/name` of routevpn's connection `conn` (for logs and errors), else `conn`."""
    parsed = naming.parse_conn_name(conn)
    return naming.tunnel_ref(*parsed) if parsed else conn


def connect(path: str, timeout: float) -> vici.Session:
    """A new VICI session on charon's unix socket at `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return vici.Session(sock)


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
                        self._session = connect(self.path, self.timeout)
                        self.generation += 1
                    return fn(self._session)
                except CommandException as e:
                    raise IpsecError(ref, f"{what}: {e}") from e
                except (OSError, SessionException) as e:
                    self._drop()
                    if attempt == 2:
                        raise CharonUnavailableError(ref, f"{what}: charon unreachable: {e}") from e
            raise AssertionError("unreachable")
