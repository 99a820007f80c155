"""Health probes through the tunnels: ICMP echo on raw sockets, on the agent's loop.

One asyncio task per probed tunnel (no thread; a task asleep between probes costs a
few kilobytes, so 200 tunnels stay cheap) and one raw socket, bound to the tunnel's
interface (SO_BINDTODEVICE: the kernel sends only out of that interface, whatever the
routes say) and to the interface's own address. Needs CAP_NET_RAW. The verdict is kept
by `probe.Tracker`; a change of verdict calls `on_change` (the agent marks the tunnel
for a pass at once, as charon's events do). A socket that cannot be opened or sent on
(the interface not there yet, or recreated) is opened again for the next probe; until
then the probes are misses. Without CAP_NET_RAW there is no verdict at all: the tunnel
is judged by its SA alone, and the agent says so in its log once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
from collections.abc import Callable
from typing import Final, Protocol

from routevpn.agent.probe import Target, Tracker
from routevpn.api import naming

log = logging.getLogger(__name__)

Key = tuple[str, str]
ICMP_ECHO, ICMP_REPLY = 8, 0
ICMP6_ECHO, ICMP6_REPLY = 128, 129
PAYLOAD: Final = b"routevpn-probe\x00\x00"


class ProbeMetrics(Protocol):
    """What the prober reports (`agent.metrics.Metrics` implements it)."""

    def probed(self, namespace: str, name: str, *, answered: bool, failing: bool) -> None: ...


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(version: int, ident: int, seq: int) -> bytes:
    """An ICMP (or ICMPv6: the kernel fills in its checksum) echo request."""
    kind = ICMP_ECHO if version == 4 else ICMP6_ECHO
    bare = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + PAYLOAD
    if version == 6:
        return bare
    return bare[:2] + struct.pack("!H", checksum(bare)) + bare[4:]


def echo_reply_seq(version: int, data: bytes, ident: int) -> int | None:
    """The sequence of an echo reply with identifier `ident` (an IPv4 raw socket hands
    over the IP header too), or None for any other packet."""
    if version == 4:
        data = data[(data[0] & 0x0F) * 4 :] if data else data
    if len(data) < 8:
        return None
    kind, _code, _sum, got, seq = struct.unpack("!BBHHH", data[:8])
    want = ICMP_REPLY if version == 4 else ICMP6_REPLY
    return seq if kind == want and got == ident else None


def open_socket(target: Target) -> socket.socket:
    """A non-blocking raw socket bound to the target's interface and source address."""
    v4 = target.version == 4
    family = socket.AF_INET if v4 else socket.AF_INET6
    sock = socket.socket(
        family, socket.SOCK_RAW, socket.IPPROTO_ICMP if v4 else socket.IPPROTO_ICMPV6
    )
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, target.ifname.encode())
        sock.bind((target.source, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Probe:
    """One tunnel's probe: a task that sends, waits for the answer, and judges."""

    def __init__(
        self, key: Key, target: Target, on_verdict: Callable[[Key, bool, bool], None]
    ) -> None:
        self.key = key
        self.target = target
        self.tracker = Tracker(target.failures, target.interval)
        self.ident = secrets.randbelow(0xFFFF) + 1
        self._on_verdict = on_verdict
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                start = loop.time()
                deadline = start + self.target.interval
                seq = self.tracker.send(start)
                if self._send(seq):
                    answered = await self._await_reply(seq, deadline)
                    if answered:
                        self._judge(True, self.tracker.reply(seq, loop.time()))
                if self.tracker.sent_at is not None:  # not answered
                    await asyncio.sleep(max(0.0, deadline - loop.time()))
                    self._judge(False, self.tracker.expire(max(loop.time(), deadline)))
                await asyncio.sleep(max(0.0, deadline - loop.time()))
        except PermissionError:
            log.warning(
                "tunnel %s: health probe needs CAP_NET_RAW; judging the tunnel by its SA only",
                naming.tunnel_ref(*self.key),
            )
        finally:
            self._close()

    def _send(self, seq: int) -> bool:
        """Send probe `seq`; False when no socket could be opened or the send failed."""
        try:
            if self._sock is None:
                self._sock = open_socket(self.target)
            packet = echo_request(self.target.version, self.ident, seq)
            self._sock.sendto(packet, (self.target.address, 0))
        except PermissionError:
            raise
        except OSError as e:
            log.debug("tunnel %s: probe not sent: %s", naming.tunnel_ref(*self.key), e)
            self._close()  # opened again for the next probe (the interface may be new)
            return False
        return True

    async def _await_reply(self, seq: int, deadline: float) -> bool:
        """Until the reply to `seq` or `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    data, addr = await loop.sock_recvfrom(self._sock, 2048)
            except TimeoutError:
                return False
            except OSError:
                self._close()
                return False
            same = ipaddress.ip_address(addr[0].split("%")[0]) == ipaddress.ip_address(
                self.target.address
            )
            if same and echo_reply_seq(self.target.version, data, self.ident) == seq:
                return True
        return False

    def _judge(self, answered: bool, changed: bool) -> None:
        self._on_verdict(self.key, answered, changed)


class ProbeSet:
    """Every probe of the node, by tunnel; `failing()` is what failover reads."""

    def __init__(self, metrics: ProbeMetrics | None = None) -> None:
        self.metrics = metrics
        #: Called with a tunnel whose verdict changed (the agent marks it for a pass).
        self.on_change: Callable[[Key], None] = lambda key: None
        self._probes: dict[Key, Probe] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def ensure(self, key: Key, target: Target | None) -> None:
        """Probe `target` for tunnel `key` (None: no probe); a changed target restarts it."""
        probe = self._probes.get(key)
        if probe is not None and probe.target == target:
            return
        if probe is not None:
            self.forget(key)
        if target is not None:
            self._probes[key] = probe = Probe(key, target, self._verdict)
            probe.start()
            log.info(
                "tunnel %s: probing %s via %s every %gs", naming.tunnel_ref(*key),
                target.address, target.ifname, target.interval,
            )  # fmt: skip

    def forget(self, key: Key) -> None:
        """Stop the tunnel's probe, if any."""
        probe = self._probes.pop(key, None)
        if probe is not None:
            task = asyncio.get_running_loop().create_task(probe.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def failing(self) -> frozenset[Key]:
        """Tunnels whose probe has missed `failures` times in a row, not answered since."""
        return frozenset(k for k, p in self._probes.items() if p.tracker.failing)

    def tracker(self, key: Key) -> Tracker | None:
        """The tunnel's probe state, if it is probed."""
        probe = self._probes.get(key)
        return probe.tracker if probe is not None else None

    def note(self, key: Key) -> str:
        """What the tunnel's probe says, for a condition message."""
        probe = self._probes.get(key)
        if probe is None:
            return "no health check"
        t = probe.target  # no running count: the message stays the same while it fails
        return f"health check: {t.address} via {t.ifname} unanswered {t.failures} times in a row"

    async def close(self) -> None:
        """Stop every probe."""
        probes, self._probes = list(self._probes.values()), {}
        for probe in probes:
            await probe.stop()

    def _verdict(self, key: Key, answered: bool, changed: bool) -> None:
        probe = self._probes.get(key)
        if probe is None:
            return
        if self.metrics is not None:
            self.metrics.probed(*key, answered=answered, failing=probe.tracker.failing)
        if changed:
            state = "failing" if probe.tracker.failing else "answered again"
            log.info("tunnel %s: health probe of %s %s", naming.tunnel_ref(*key),
                     probe.target.address, state)  # fmt: skip
            self.on_change(key)
