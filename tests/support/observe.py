"""Evidence that traffic really went through IPsec: xfrm counters, policies, captures.

Parsers are pure (unit-tested); ``xfrm_states``/``xfrm_policies``/``capture`` read a
namespace. ``ip -s xfrm state`` prints keys: only parsed fields leave this module.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .netns import Netns


@dataclass(frozen=True)
class XfrmState:
    """One SA as ``ip -s xfrm state`` shows it (never its key)."""

    src: str
    dst: str
    proto: str
    spi: str
    mode: str
    mark: str | None
    if_id: str | None
    bytes: int
    packets: int


@dataclass(frozen=True)
class XfrmPolicy:
    """One policy as ``ip xfrm policy`` shows it."""

    src: str
    dst: str
    dir: str
    mark: str | None
    if_id: str | None
    tmpl_proto: str | None
    tmpl_mode: str | None


def _blocks(text: str) -> list[str]:
    return [b for b in re.split(r"(?m)^(?=src )", text) if b.startswith("src ")]


def _opt(pattern: str, block: str) -> str | None:
    m = re.search(pattern, block)
    return m.group(1) if m else None


def parse_states(text: str) -> list[XfrmState]:
    """States from ``ip -s xfrm state`` output."""
    out = []
    for b in _blocks(text):
        head = re.match(r"src (\S+) dst (\S+)", b)
        proto = re.search(r"proto (\S+) spi (0x[0-9a-f]+)", b)
        if head is None or proto is None:
            continue
        cur = re.search(r"lifetime current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)", b)
        out.append(
            XfrmState(
                src=head.group(1),
                dst=head.group(2),
                proto=proto.group(1),
                spi=proto.group(2),
                mode=_opt(r"mode (\S+)", b) or "",
                mark=_opt(r"\n\s*mark (\S+)", b),
                if_id=_opt(r"if_id (\S+)", b),
                bytes=int(cur.group(1)) if cur else 0,
                packets=int(cur.group(2)) if cur else 0,
            )
        )
    return out


def parse_policies(text: str) -> list[XfrmPolicy]:
    """Policies from ``ip xfrm policy`` output (socket policies included)."""
    out = []
    for b in _blocks(text):
        head = re.match(r"src (\S+) dst (\S+)", b)
        direction = _opt(r"dir (\w+)", b)
        if head is None or direction is None:
            continue
        tmpl = re.search(r"tmpl .*\n\s*proto (\S+).*?mode (\S+)", b)
        out.append(
            XfrmPolicy(
                src=head.group(1),
                dst=head.group(2),
                dir=direction,
                mark=_opt(r"\n\s*mark (\S+)", b),
                if_id=_opt(r"if_id (\S+)", b),
                tmpl_proto=tmpl.group(1) if tmpl else None,
                tmpl_mode=tmpl.group(2) if tmpl else None,
            )
        )
    return out


def xfrm_states(ns: Netns) -> list[XfrmState]:
    """The namespace's SAs with their byte/packet counters."""
    return parse_states(ns.ip("-s", "xfrm", "state"))


def xfrm_policies(ns: Netns) -> list[XfrmPolicy]:
    """The namespace's xfrm policies."""
    return parse_policies(ns.ip("xfrm", "policy"))


def parse_xfrm_stat(text: str) -> dict[str, int]:
    """``/proc/net/xfrm_stat`` as {counter: value} (``XfrmInNoStates 3`` per line)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def xfrm_stat(ns: Netns) -> dict[str, int]:
    """The namespace's own xfrm error counters (the file is per network namespace)."""
    return parse_xfrm_stat(ns.run("cat", "/proc/net/xfrm_stat"))


def xfrm_stat_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that moved between two readings, and by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@dataclass(frozen=True)
class CaptureSummary:
    """What crossed a link, in classes that matter for IPsec."""

    esp: int
    clear_echo: int  # ICMP / ICMPv6 echo request or reply seen in clear
    total: int
    samples: list[str] = field(default_factory=list)


_ECHO = re.compile(r"ICMP6?, echo (request|reply)|ICMP echo (request|reply)")


def merge(*summaries: CaptureSummary) -> CaptureSummary:
    """Add up captures (e.g. the outbound side of each end of a link)."""
    return CaptureSummary(
        esp=sum(s.esp for s in summaries),
        clear_echo=sum(s.clear_echo for s in summaries),
        total=sum(s.total for s in summaries),
        samples=[x for s in summaries for x in s.samples][:5],
    )


def classify(lines: list[str]) -> CaptureSummary:
    """Count ESP packets and clear-text pings in ``tcpdump -n -r`` output lines."""
    esp = sum(1 for line in lines if "ESP(spi=" in line)
    echo = [line for line in lines if _ECHO.search(line) and "ESP(" not in line]
    return CaptureSummary(esp=esp, clear_echo=len(echo), total=len(lines), samples=echo[:5])


class Capture:
    """A running tcpdump on one interface of a namespace (see `capture()`)."""

    def __init__(self, ns: Netns, dev: str, pcap: Path, *, direction: str = "inout") -> None:
        self.ns, self.dev, self.pcap, self.direction = ns, dev, pcap, direction
        self.log = pcap.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start tcpdump and wait until it says it is listening."""
        # --immediate-mode: libpcap's TPACKET_V3 ring otherwise hands packets over only
        # when a block retires (up to a second later), and a capture stopped before that
        # loses them: a 0.4 s ping then shows up as an empty capture.
        argv = self.ns.argv(
            "tcpdump",
            "-i",
            self.dev,
            "-Q",
            self.direction,
            "-n",
            "-U",
            "--immediate-mode",
            "-w",
            str(self.pcap),
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tcpdump on {self.dev} not listening: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop tcpdump by its PID (SIGINT lets it flush), then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def settle(self, quiet: float = 0.3, limit: float = 5.0) -> None:
        """Wait until the pcap file has stopped growing (tcpdump has written what it saw)."""
        deadline = time.monotonic() + limit
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.pcap.stat().st_size if self.pcap.exists() else 0
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    def summary(self) -> CaptureSummary:
        """Let tcpdump write what it saw, stop it, and classify what was captured."""
        if self.proc is not None:
            self.settle()
        self.stop()
        text = self.ns.run("tcpdump", "-n", "-r", str(self.pcap))
        return classify(text.splitlines())


@contextmanager
def capture(ns: Netns, dev: str, pcap: Path, *, direction: str = "inout") -> Iterator[Capture]:
    """tcpdump on `dev` in `ns`, stopped on exit whatever happens.

    Use ``direction="out"`` on each end of a link to see what is on the wire: on the
    receiving device Linux shows policy-based ESP again *after* decryption (the inner
    packet re-enters through the same device), which is not what crossed the wire.
    """
    cap = Capture(ns, dev, pcap, direction=direction)
    cap.start()
    try:
        yield cap
    finally:
        cap.stop()
