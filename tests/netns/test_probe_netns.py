"""The health probe on a REAL raw socket through a real interface (agent.prober).

The node namespace reaches the far end over `tun0` (a veth: this kernel has no VTI, and
the probe does not care what kind of link it is bound to). A decoy namespace holds the
far end's inside addresses too, and the node routes them to it over `lan0` with longer
prefixes: a probe that were not bound to `tun0` would take that route and be answered
by the decoy. The far end stops answering when a blackhole route swallows its replies;
the probe must fail after `failures` misses (IPv4 and ICMPv6), and the first answer
after the blackhole goes brings it back. Verdict changes are reported to `on_change`.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from routevpn.agent.probe import Target
from routevpn.agent.prober import ProbeSet
from support.dataplane import in_netns
from support.netns import Netns, netns, veth

pytestmark = pytest.mark.timeout(120)

NODE4, FAR4 = "169.254.30.1/30", "169.254.30.2/30"
NODE6, FAR6 = "2001:db8:30::/127", "2001:db8:30::1/127"
V4, V6 = ("t", "v4"), ("t", "v6")
FAILURES = 2


@pytest.fixture
def world(node_ns: Netns) -> Iterator[tuple[Netns, Netns]]:
    """node ─tun0── far; node ─lan0── decoy (which also holds the far addresses)."""
    with (
        netns("rvpf") as far,
        netns("rvpd") as decoy,
        veth(node_ns, "tun0", far, "tun0"),
        veth(node_ns, "lan0", decoy, "lan0"),
    ):
        for address in (NODE4, NODE6):
            node_ns.add_address("tun0", address)
        for address in (FAR4, FAR6):
            far.add_address("tun0", address)
            decoy.add_address("lan0", address)
        node_ns.add_address("lan0", "198.51.100.1/24")
        node_ns.add_address("lan0", "2001:db8:31::1/64")
        decoy.add_address("lan0", "198.51.100.2/24")
        decoy.add_address("lan0", "2001:db8:31::2/64")
        decoy.ip("route", "add", "169.254.30.1/32", "via", "198.51.100.1")
        decoy.ip("-6", "route", "add", "2001:db8:30::/128", "via", "2001:db8:31::1")
        # the longer prefixes: unbound, a probe would go to the decoy
        node_ns.ip("route", "add", "169.254.30.2/32", "via", "198.51.100.2", "dev", "lan0")
        node_ns.ip("-6", "route", "add", "2001:db8:30::1/128", "via", "2001:db8:31::2")
        yield far, decoy


def blackhole(far: str, *, on: bool) -> None:
    """Swallow (or stop swallowing) the far end's replies to the node."""
    verb = "add" if on else "del"
    for args in (("blackhole", "169.254.30.1/32"), ("-6", "blackhole", "2001:db8:30::/128")):
        fam, rest = (["-6"], args[1:]) if args[0] == "-6" else ([], args)
        subprocess.run(["ip", "-n", far, *fam, "route", verb, *rest], check=True, timeout=10)


def sent(probes: ProbeSet) -> dict[Any, int]:
    return {k: t.sent for k in (V4, V6) if (t := probes.tracker(k))}


async def until(probes: ProbeSet, failing: frozenset[Any], limit_s: float) -> dict[Any, int]:
    """Until `probes.failing()` is `failing`: how many probes each sent meanwhile."""
    start, before = time.monotonic(), sent(probes)
    while probes.failing() != failing:
        if time.monotonic() - start > limit_s:
            raise TimeoutError(f"failing {probes.failing()}, wanted {failing}")
        await asyncio.sleep(0.05)
    return {k: n - before[k] for k, n in sent(probes).items()}


async def _scenario(far: str) -> dict[str, Any]:
    probes = ProbeSet()
    changes: list[tuple[str, str]] = []
    probes.on_change = changes.append
    probes.ensure(V4, Target("tun0", "169.254.30.1", "169.254.30.2", 1.0, FAILURES))
    probes.ensure(V6, Target("tun0", "2001:db8:30::", "2001:db8:30::1", 1.0, FAILURES))
    out: dict[str, Any] = {}
    try:
        await asyncio.sleep(3.2)
        out["up"] = {k: (t.answered, t.missed) for k in (V4, V6) if (t := probes.tracker(k))}
        blackhole(far, on=True)
        out["down_after"] = await until(probes, frozenset({V4, V6}), limit_s=15)
        out["down"] = {k: t.misses for k in (V4, V6) if (t := probes.tracker(k))}
        out["changes_down"] = sorted(changes)
        blackhole(far, on=False)
        out["up_after"] = await until(probes, frozenset(), limit_s=15)
        out["changes"] = sorted(changes)
    finally:
        await probes.close()
    return out


def test_the_probe_fails_after_its_misses_and_comes_back_on_the_first_answer(
    node_ns: Netns, world: tuple[Netns, Netns]
) -> None:
    far, _decoy = world
    got = in_netns(node_ns, _scenario, far.name, timeout=90)
    print(got)
    # up: every probe answered through tun0 (the decoy's route was not taken)
    for key in (V4, V6):
        answered, missed = got["up"][key]
        assert answered >= 3 and missed == 0, (key, got["up"])
    # down after FAILURES misses in a row: the probe in flight at the blackhole, and
    # FAILURES sent after it (counted in probes, not in wall time)
    for key in (V4, V6):
        assert FAILURES - 1 <= got["down_after"][key] <= FAILURES + 1, got
        assert got["down"][key] >= FAILURES, got
    assert got["changes_down"] == sorted([V4, V6])
    # back at the first answer: the probe in flight when the blackhole went, or the next
    for key in (V4, V6):
        assert got["up_after"][key] <= 2, got
    assert got["changes"] == sorted([V4, V6, V4, V6])
