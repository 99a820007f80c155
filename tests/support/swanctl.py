"""Hand-written swanctl.conf for a test peer, and the ``swanctl`` calls around it.

Deliberately independent of routevpn's own config builders: a far-end peer written
by hand is the yardstick routevpn's output is measured against.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .netns import Netns


@dataclass(frozen=True)
class Child:
    """One CHILD_SA (``children.<name>``) of a connection."""

    name: str
    local_ts: str = "0.0.0.0/0,::/0"
    remote_ts: str = "0.0.0.0/0,::/0"
    esp_proposals: str = "aes256gcm16-x25519"
    mode: str = "tunnel"
    start_action: str = "none"
    # route-based: a VTI key (mark) or an XFRM interface id; both None = policy-based
    mark: int | None = None
    if_id: int | None = None
    updown: str | None = None
    dpd_action: str | None = None
    # any further `children.<name>` settings, e.g. (("rekey_time", "30s"),)
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Conn:
    """One IKE connection with PSK authentication and its children."""

    name: str
    local_addrs: str
    remote_addrs: str
    local_id: str
    remote_id: str
    psk: str
    children: Sequence[Child] = field(default_factory=tuple)
    version: int = 2
    proposals: str = "aes256-sha256-x25519"
    dpd_delay: str | None = None
    unique: str | None = None
    # any further connection settings, e.g. (("reauth_time", "90s"),)
    extra: tuple[tuple[str, str], ...] = ()


def _block(name: str, items: Sequence[tuple[str, str]], body: Sequence[str] = ()) -> list[str]:
    lines = [f"{name} {{"]
    lines += [f"    {k} = {v}" for k, v in items]
    lines += [f"    {line}" for line in body]
    lines.append("}")
    return lines


def render(conns: Sequence[Conn]) -> str:
    """The text of a swanctl.conf with `conns` and their PSKs (one secret per conn)."""
    conn_lines: list[str] = []
    secret_lines: list[str] = []
    for c in conns:
        children: list[str] = []
        for ch in c.children:
            items = [
                ("local_ts", ch.local_ts),
                ("remote_ts", ch.remote_ts),
                ("esp_proposals", ch.esp_proposals),
                ("mode", ch.mode),
                ("start_action", ch.start_action),
            ]
            if ch.mark is not None:
                items += [("mark_in", str(ch.mark)), ("mark_out", str(ch.mark))]
            if ch.if_id is not None:
                items += [("if_id_in", str(ch.if_id)), ("if_id_out", str(ch.if_id))]
            if ch.updown is not None:
                items.append(("updown", ch.updown))
            if ch.dpd_action is not None:
                items.append(("dpd_action", ch.dpd_action))
            items += ch.extra
            children += _block(ch.name, items)
        items = [
            ("version", str(c.version)),
            ("local_addrs", c.local_addrs),
            ("remote_addrs", c.remote_addrs),
            ("proposals", c.proposals),
        ]
        if c.dpd_delay is not None:
            items.append(("dpd_delay", c.dpd_delay))
        if c.unique is not None:
            items.append(("unique", c.unique))
        items += c.extra
        body = [
            *_block("local", [("auth", "psk"), ("id", c.local_id)]),
            *_block("remote", [("auth", "psk"), ("id", c.remote_id)]),
            *_block("children", [], children),
        ]
        conn_lines += _block(c.name, items, body)
        secret_lines += _block(
            f"ike-{c.name}", [("id-local", c.local_id), ("id-remote", c.remote_id)]
        )
        # the secret on a line of its own, quoted so any character survives
        secret_lines.insert(-1, f'    secret = "{c.psk}"')
    text = _block("connections", [], conn_lines) + _block("secrets", [], secret_lines)
    return "\n".join(text) + "\n"


def swanctl(ns: Netns, uri: str, *args: str, timeout: float = 30.0) -> str:
    """Run ``swanctl ARGS --uri URI`` inside `ns`; raise with its output on failure."""
    proc = subprocess.run(
        ns.argv("swanctl", *args, "--uri", uri), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        # swanctl prints the failing step on stdout; a PSK never appears in its output.
        # Its complaints about optional plugins of the system config are noise here.
        noise = re.compile(r"^plugin '[\w-]+': failed to load.*$\n?", re.M)
        detail = noise.sub("", proc.stdout + proc.stderr)
        raise RuntimeError(f"swanctl {' '.join(args)} failed: {detail}")
    return proc.stdout


def load(ns: Netns, uri: str, conf: Path) -> str:
    """``swanctl --load-all --file CONF``: load connections and secrets into a charon."""
    return swanctl(ns, uri, "--load-all", "--noprompt", "--file", str(conf))


def write_and_load(ns: Netns, uri: str, conf: Path, conns: Sequence[Conn]) -> str:
    """Write `conns` as a swanctl.conf at `conf` (mode 0600) and load it."""
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.touch(mode=0o600)
    conf.write_text(render(conns))
    return load(ns, uri, conf)


def initiate(ns: Netns, uri: str, child: str, *, ike: str | None = None, timeout: int = 30) -> str:
    """Bring up `child` (and its IKE SA); raise if charon reports a failure."""
    args = ["--initiate", "--child", child, "--timeout", str(timeout)]
    if ike is not None:
        args += ["--ike", ike]
    return swanctl(ns, uri, *args, timeout=timeout + 10)


def list_sas(ns: Netns, uri: str) -> str:
    """The text of ``swanctl --list-sas``."""
    return swanctl(ns, uri, "--list-sas")


_CHILD_STATE = re.compile(r"^\s+(?P<name>[\w.-]+): #\d+, reqid \d+, (?P<state>[A-Z_]+)", re.M)
_IKE_STATE = re.compile(r"^(?P<name>[\w.-]+): #\d+, (?P<state>[A-Z_]+)", re.M)


def child_states(list_sas_text: str) -> dict[str, str]:
    """Map CHILD_SA name → state (e.g. ``INSTALLED``) from ``--list-sas`` output."""
    return {m["name"]: m["state"] for m in _CHILD_STATE.finditer(list_sas_text)}


def ike_states(list_sas_text: str) -> dict[str, str]:
    """Map IKE_SA name → state (e.g. ``ESTABLISHED``) from ``--list-sas`` output."""
    return {m["name"]: m["state"] for m in _IKE_STATE.finditer(list_sas_text)}


def wait_for(
    ns: Netns, uri: str, *, ike: str, child: str | None = None, timeout: float = 30.0
) -> str:
    """Poll ``--list-sas`` until `ike` is ESTABLISHED (and `child` INSTALLED).

    Returns the last listing; raises TimeoutError with it when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        text = list_sas(ns, uri)
        ok = ike_states(text).get(ike) == "ESTABLISHED"
        if child is not None:
            ok = ok and child_states(text).get(child) == "INSTALLED"
        if ok:
            return text
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ike}/{child} not up after {timeout}s:\n{text}")
        time.sleep(0.1)
