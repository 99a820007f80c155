"""Throwaway network namespaces and veth pairs that always clean up.

Everything here creates links only *inside* namespaces it made itself: a veth pair
is created directly in its two target namespaces (``ip -n A link add … peer …
netns B``), so the host's own namespace is never touched, not even for a moment.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

# The only ranges tests may use (house rule): documentation and link-local space.
TEST_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "::1/128",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "169.254.0.0/16",
        "2001:db8::/32",
    )
)


def check_test_address(address: str) -> None:
    """Raise ValueError unless `address` (an address or prefix) lies in a test range."""
    net = ipaddress.ip_network(address, strict=False)
    for allowed in TEST_NETWORKS:
        if net.version == allowed.version and net.subnet_of(allowed):  # type: ignore[arg-type]
            return
    raise ValueError(f"{address} is outside the test ranges; tests use only TEST-NET space")


def unique_name(prefix: str, length: int = 15) -> str:
    """A name unlikely to clash with a parallel test run, at most `length` characters."""
    suffix = secrets.token_hex(4)
    return f"{prefix[: max(1, length - len(suffix) - 1)]}-{suffix}"


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
    """Run a command, return its stdout; on failure raise with its stderr in the message."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}"
        )
    return proc.stdout


@dataclass(frozen=True)
class Netns:
    """A named network namespace (see `netns()`); every method runs inside it."""

    name: str

    def argv(self, *cmd: str) -> list[str]:
        """The argv that runs `cmd` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 30.0) -> str:
        """Run `cmd` inside the namespace and return its stdout."""
        return run(self.argv(*cmd), check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> str:
        """`ip -n <ns> ARGS…` (no exec needed: iproute2 switches namespace itself)."""
        return run(["ip", "-n", self.name, *args], check=check)

    def sysctl(self, key: str, value: str) -> None:
        """Set a sysctl inside the namespace (never the host's)."""
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def add_address(self, dev: str, address: str) -> None:
        """Add a test-range address (IPv6 without DAD, so it is usable at once)."""
        check_test_address(address)
        extra = ["nodad"] if ipaddress.ip_interface(address).version == 6 else []
        self.ip("addr", "add", address, "dev", dev, *extra)

    def pids(self) -> list[int]:
        """PIDs of processes living in this namespace."""
        out = run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in out.split()]


@contextmanager
def netns(prefix: str = "rvt") -> Iterator[Netns]:
    """A fresh network namespace with `lo` up; deleted on exit even if the body fails.

    Processes still inside at exit are not killed here (stop what you start, by PID:
    `charon.Charon` does); the namespace disappears once they are gone.
    """
    ns = Netns(unique_name(prefix, 24))
    run(["ip", "netns", "add", ns.name])
    try:
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        run(["ip", "netns", "delete", ns.name], check=False)


@contextmanager
def veth(a: Netns, a_ifname: str, b: Netns, b_ifname: str, *, up: bool = True) -> Iterator[None]:
    """A veth pair with one end in `a` and the other in `b`, removed on exit."""
    a.ip("link", "add", a_ifname, "type", "veth", "peer", "name", b_ifname, "netns", b.name)
    try:
        if up:
            a.ip("link", "set", a_ifname, "up")
            b.ip("link", "set", b_ifname, "up")
        yield
    finally:
        # Deleting one end removes both; the namespace may already be gone.
        a.ip("link", "delete", a_ifname, check=False)


def have_root() -> bool:
    """True when this process may create namespaces (root)."""
    return os.geteuid() == 0
