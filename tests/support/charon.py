"""A real charon (strongSwan's IKE daemon) inside a given network namespace.

Each charon gets its own ``strongswan.conf`` (``STRONGSWAN_CONF``), its own VICI socket
and log file in a working directory, and its own mount namespace with a private tmpfs
on ``/run``: charon's PID file path is fixed (``/var/run/charon.pid``), so two
daemons would otherwise refuse to share a machine. Started and stopped by PID only.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .daemon import wait_for_socket
from .netns import Netns
from .secretscan import REGISTRY

CHARON = Path("/usr/lib/ipsec/charon")

# Explicit plugin list (load_modular = no): the system's modular config would load
# plugins that need hardware or daemons a test namespace does not have.
DEFAULT_PLUGINS = (
    "random nonce aes sha1 sha2 hmac gmp pem pkcs1 pkcs8 pubkey x509 constraints "
    "revocation kdf openssl gcm drbg kernel-netlink socket-default vici"
)


def render_strongswan_conf(
    vici_socket: Path,
    log_file: Path,
    *,
    plugins: str = DEFAULT_PLUGINS,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The text of a self-contained strongswan.conf for one test charon.

    `extra` adds or overrides ``charon.KEY = VALUE`` lines (dotted keys allowed, e.g.
    ``{"retransmit_tries": "2"}``). Values run to the end of the line in this format,
    so every key sits on its own line.
    """
    for text in (str(vici_socket), str(log_file), plugins, *(extra or {}).values()):
        if "\n" in text:
            raise ValueError("strongswan.conf values must not contain a newline")
    # strongSwan's default of 5 retransmits from 4 s stretches a failing test to minutes
    settings = {"retransmit_tries": "3", "retransmit_timeout": "1.0", **(extra or {})}
    lines = [
        "charon {",
        "    load_modular = no",
        f"    load = {plugins}",
        # routes and virtual IPs belong to the tests (and later to routevpn), not charon
        "    install_routes = no",
        "    install_virtual_ip = no",
        *(f"    {k} = {v}" for k, v in settings.items()),
        "    plugins {",
        "        vici {",
        f"            socket = unix://{vici_socket}",
        "        }",
        "    }",
        "    filelog {",
        "        testlog {",
        f"            path = {log_file}",
        "            time_format = %H:%M:%S",
        "            ike_name = yes",
        "            append = yes",
        "            default = 1",
        "            flush_line = yes",
        "        }",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


class Charon:
    """One charon daemon in `ns`, with its files under `workdir`.

    Use `running()` for a started daemon that is always stopped, or call
    `start()` / `stop()` / `restart()` yourself.
    """

    def __init__(
        self,
        ns: Netns,
        workdir: Path,
        *,
        plugins: str = DEFAULT_PLUGINS,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.ns = ns
        self.workdir = workdir
        self.conf = workdir / "strongswan.conf"
        self.vici_socket = workdir / "charon.vici"
        self.log_file = workdir / "charon.log"
        REGISTRY.add_log(self.log_file)  # scanned for secrets where a tier does
        self.stdio_log = workdir / "charon.stdio"
        self.plugins = plugins
        self.extra = dict(extra or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The VICI URI for ``swanctl --uri``."""
        return f"unix://{self.vici_socket}"

    @property
    def pid(self) -> int | None:
        """The daemon's PID while running."""
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon and wait (up to `timeout` s) until its VICI socket answers."""
        if self.proc is not None:
            raise RuntimeError("charon already running")
        if not CHARON.exists():
            raise FileNotFoundError(CHARON)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            render_strongswan_conf(
                self.vici_socket, self.log_file, plugins=self.plugins, extra=self.extra
            )
        )
        self.vici_socket.unlink(missing_ok=True)
        env = {**os.environ, "STRONGSWAN_CONF": str(self.conf)}
        # `ip netns exec` already unshares the mount namespace; unshare again with
        # private propagation so the tmpfs on /run can never leak to the host.
        argv = self.ns.argv(
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount -t tmpfs tmpfs /run && exec "$0"',
            str(CHARON),
        )
        with self.stdio_log.open("ab") as out:
            # every link of the chain execs, so this PID is charon's own
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            self.wait_for_vici(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_for_vici(self, timeout: float) -> None:
        """Poll until the VICI socket accepts a connection, or raise TimeoutError."""
        wait_for_socket(
            self.proc, self.vici_socket, f"charon in {self.ns.name}", self.log_tail, timeout
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon by its PID: SIGTERM, then SIGKILL after `timeout` s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL by PID, as a crash: no DELETE reaches the peer, and the kernel's SAs and
        policies stay behind (flush them to make the crash complete)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(10)

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start again with the same configuration (all SAs are lost)."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of charon's own log (and its stdio), for failure messages."""
        parts = []
        for path in (self.log_file, self.stdio_log):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts) or "(no log)"


@contextmanager
def running(
    ns: Netns,
    workdir: Path,
    *,
    plugins: str = DEFAULT_PLUGINS,
    extra: Mapping[str, str] | None = None,
) -> Iterator[Charon]:
    """A started charon in `ns` that is stopped on exit, whatever happened."""
    daemon = Charon(ns, workdir, plugins=plugins, extra=extra)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
