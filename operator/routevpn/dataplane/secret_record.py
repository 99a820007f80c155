"""Which secret each connection was last loaded with, across agent restarts.

charon never returns a PSK or key, and an agent that starts afresh has no memory of what
the agent before it loaded. Without this record, a Secret rotated while no agent ran (an
upgrade, a crash loop, a drained node) is loaded into charon at the next start, but the
IKE SA authenticated with the old secret lives on: nothing tells the new agent that the
secret changed, and a rekey keeps the old authentication. With it, the new agent sees
that the secret it loads is not the one recorded and re-authenticates, as a running agent
does (`IpsecAdapter.load`).

The record holds, per connection, an HMAC of the secret's digest under a random salt
kept in the same file (mode 0600, in a root-only directory on the node, next to charon's
socket: it lives as long as the charon whose SAs it describes, and no longer than the
node's boot). Nothing in it lets anyone test a guessed PSK without that file; it is never
logged. A missing or unreadable record is started afresh: nothing is re-authenticated on
its account (the agent's behaviour without it), and a warning says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

FILE = "secrets.json"
VERSION = 1


class SecretRecord:
    """{connection: HMAC(salt, secret digest)}, persisted atomically on every change."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        self._salt, self._conns = self._read()

    def _read(self) -> tuple[bytes, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            salt = bytes.fromhex(str(data["salt"]))
            conns = {str(k): str(v) for k, v in dict(data["conns"]).items()}
            if len(salt) < 16:
                raise ValueError("salt too short")
            return salt, conns
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("secret record %s unreadable (%s): starting a new one", self.path, e)
        return secrets.token_bytes(32), {}

    def _fingerprint(self, secret_digest: str) -> str:
        return hmac.new(self._salt, secret_digest.encode(), hashlib.sha256).hexdigest()

    def differs(self, conn: str, secret_digest: str) -> bool:
        """True when `conn` was recorded with another secret (unknown: False)."""
        recorded = self._conns.get(conn)
        return recorded is not None and not hmac.compare_digest(
            recorded, self._fingerprint(secret_digest)
        )

    def put(self, conn: str, secret_digest: str) -> None:
        """Record that `conn` is loaded with this secret."""
        fingerprint = self._fingerprint(secret_digest)
        if self._conns.get(conn) != fingerprint:
            self._conns[conn] = fingerprint
            self._write()

    def drop(self, conn: str) -> None:
        """Forget `conn` (unloaded from charon)."""
        if self._conns.pop(conn, None) is not None:
            self._write()

    def _write(self) -> None:
        body = {"version": VERSION, "salt": self._salt.hex(), "conns": self._conns}
        tmp = self.path.with_name(f".{FILE}.tmp")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        except OSError as e:
            # The data plane does not depend on it: only a rotation while no agent runs
            # goes unnoticed, as without a record.
            log.warning("secret record %s not written: %s", self.path, e)
