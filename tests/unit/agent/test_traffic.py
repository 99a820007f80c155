"""TrafficFlowing's hysteresis and the per-tunnel Event limit, driven by an injected clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from routevpn.agent.eventlimit import EventLimiter
from routevpn.agent.traffic import TrafficPolicy, TrafficTracker
from routevpn.api.conditions import Reason, Status
from routevpn.dataplane.facts import ChildSaFacts

REF = "site/a"
Counter = Callable[[float], int]


def sa(packets_in: int, spi: str = "c0000001", state: str = "INSTALLED") -> ChildSaFacts:
    return ChildSaFacts(
        name="routevpn.site.a", uniqueid="2", state=state, spi_in=spi, packets_in=packets_in
    )


def background(t: float) -> int:
    """A peer kernel's own packets into an idle tunnel, cumulative at `t` s after the SA:
    DAD (one neighbour solicitation per address, two addresses), MLDv2 reports (two per
    solicited-node group, two groups) and router solicitations backing off from 4 s
    (Linux's default since 4.9: -1, unlimited, up to one an hour)."""
    early = sum(1 for at in (0.1, 0.2, 0.5, 0.6, 1.5, 1.6) if at <= t)
    rs, at, gap = 0, 1.0, 4.0
    while at <= t:
        rs, at, gap = rs + 1, at + gap, min(gap * 2, 3600.0)
    return early + rs


def ping(every: float, start: float, stop: float = float("inf")) -> Counter:
    """Echo replies of a ping every `every` s between `start` and `stop`."""
    return lambda t: 0 if t < start else int((min(t, stop) - start) // every) + 1


def passes(until: float, resync: float = 30.0, extra: Iterable[float] = ()) -> list[float]:
    """When passes look: every `resync` s, plus passes other events triggered."""
    times = {i * resync for i in range(int(until // resync) + 1)} | set(extra)
    return sorted(t for t in times if t <= until)


def run(
    counters: Iterable[Counter],
    times: list[float],
    tracker: TrafficTracker | None = None,
    spi_at: Callable[[float], str] = lambda t: "c0000001",
) -> list[tuple[float, Status, str]]:
    """Judge at each of `times`; the SA's counter restarts at zero on each new SPI."""
    tracker = tracker or TrafficTracker()
    fns = list(counters)
    out: list[tuple[float, Status, str]] = []
    base, spi = 0, spi_at(times[0])
    for t in times:
        total = sum(f(t) for f in fns)
        if spi_at(t) != spi:
            base, spi = total, spi_at(t)
        got = tracker.judge(REF, [sa(total - base, spi)], t)
        assert got is not None
        out.append((t, got.status, got.message))
    return out


def transitions(seen: list[tuple[float, Status, str]]) -> list[tuple[float, Status]]:
    changes, last = [], None
    for t, status, _ in seen:
        if status is not last:
            changes.append((t, status))
            last = status
    return changes


def test_the_kernels_background_never_turns_an_idle_tunnel_flowing() -> None:
    """Ten minutes idle, resyncs every 30 s and event-driven passes at odd times: one
    change only (Unknown → NoTrafficReceived once the SA was watched for 120 s)."""
    extra = [0.5, 1.7, 4.2, 13.0, 29.0, 61.0, 125.0, 253.0, 509.0]
    seen = run([background], passes(600, extra=extra))
    assert transitions(seen) == [(0.0, Status.UNKNOWN), (120.0, Status.FALSE)]
    assert background(600) > 5  # the background did arrive: it just does not count


def test_two_hundred_idle_tunnels_change_at_most_once_each() -> None:
    """The issue's figure (690 Events from 200 idle tunnels in 420 s), replayed: each
    tunnel's SA came up at another moment, its background shifted with it."""
    changes = 0
    for n in range(200):
        offset = (n * 7.3) % 30.0  # SAs installed at various points of the resync cycle

        def shifted(t: float, o: float = offset) -> int:
            return background(max(0.0, t - o))

        seen = run([shifted], passes(420, resync=5.0))
        changes += len(transitions(seen)) - 1
    assert changes == 200


def test_real_traffic_turns_flowing_and_its_end_turns_it_back_once() -> None:
    """A ping every second for 5 minutes, then silence."""
    seen = run([background, ping(1.0, 200.0, 500.0)], passes(900, resync=10.0))
    changes = transitions(seen)
    assert [s for _, s in changes] == [Status.UNKNOWN, Status.FALSE, Status.TRUE, Status.FALSE]
    t_on = changes[2][0]
    assert 200 < t_on <= 240  # 30 replies within 60 s, seen at the next pass
    t_off = changes[3][0]
    assert 500 < t_off <= 500 + 120 + 10  # fewer than 5 packets in the last 120 s
    on = next(m for t, s, m in seen if s is Status.TRUE)
    assert on == "packets arrive through the tunnel (at least 30 within 60s)"


def test_messages_are_fixed_text_so_a_quiet_tunnel_causes_no_writes() -> None:
    seen = run([background], passes(900, resync=30.0))
    assert len({m for _, s, m in seen if s is Status.FALSE}) == 1


def test_rekeys_change_nothing() -> None:
    """New inbound SPIs every 90 s (counters restart at zero): an idle tunnel stays
    NoTrafficReceived, a busy one Flowing."""

    def spi(t: float) -> str:
        return f"c{int(t // 90):07x}"

    idle = run([background], passes(900, resync=15.0), spi_at=spi)
    assert transitions(idle) == [(0.0, Status.UNKNOWN), (120.0, Status.FALSE)]
    busy = run([ping(0.5, 0.0)], passes(900, resync=15.0), spi_at=spi)
    assert transitions(busy) == [(0.0, Status.UNKNOWN), (15.0, Status.TRUE)]  # 30 replies


def test_between_the_thresholds_nothing_changes() -> None:
    """A monitoring ping every 10 s (12 replies per 120 s): above the 'off' floor, below
    'on'. Whatever the tunnel was, it stays."""
    flowing_first = run([ping(1.0, 0.0, 100.0), ping(10.0, 100.0)], passes(1200, resync=10.0))
    assert [s for _, s in transitions(flowing_first)] == [Status.UNKNOWN, Status.TRUE]
    quiet_first = run([ping(10.0, 0.0)], passes(1200, resync=10.0))
    assert [s for _, s in transitions(quiet_first)] == [Status.UNKNOWN, Status.FALSE]


def test_a_change_holds_for_the_hold_time() -> None:
    """Traffic right after the tunnel turned quiet is Flowing only once the hold ends."""
    policy = TrafficPolicy(quiet=120.0, hold=90.0)
    seen = run([ping(0.2, 121.0)], passes(400, resync=5.0), TrafficTracker(policy))
    changes = transitions(seen)
    assert changes[1] == (120.0, Status.FALSE)
    assert changes[2] == (210.0, Status.TRUE)  # 120 + 90, though 30 replies came by 127


def test_no_sa_forgets_and_a_new_sa_starts_over() -> None:
    t = TrafficTracker(TrafficPolicy(quiet=60.0, on_packets=3))
    assert t.judge(REF, [sa(0)], 0.0) is not None
    assert t.judge(REF, [sa(5)], 10.0).status is Status.TRUE  # type: ignore[union-attr]
    assert t.judge(REF, [sa(5, state="REKEYING")], 11.0) is None
    assert t.judge(REF, [], 12.0) is None
    fresh = t.judge(REF, [sa(0, spi="c0000009")], 13.0)
    assert fresh is not None and fresh.reason == Reason.PENDING


def v6(packets_in: int, spi: str = "c0000006") -> ChildSaFacts:
    """The IPv6 CHILD SA of a tunnel with spec.child.perFamily."""
    return ChildSaFacts(
        name="routevpn.site.a-v6", uniqueid="3", state="INSTALLED", spi_in=spi,
        packets_in=packets_in,
    )  # fmt: skip


def test_per_family_traffic_through_the_ipv6_sa_alone_is_flowing() -> None:
    t = TrafficTracker(TrafficPolicy(quiet=60.0, on_packets=30))
    assert t.judge(REF, [sa(0), v6(0)], 0.0).reason == Reason.PENDING  # type: ignore[union-attr]
    got = t.judge(REF, [sa(0), v6(40)], 10.0)
    assert got is not None and got.status is Status.TRUE


def test_per_family_counts_add_up_and_a_rekey_of_one_counts_from_zero() -> None:
    t = TrafficTracker(TrafficPolicy(quiet=60.0, on_packets=30, hold=1.0))
    t.judge(REF, [sa(100), v6(100)], 0.0)  # what came before the first look: not counted
    # 10 + 10 more, then the IPv6 SA rekeyed: its new SA has 5, the old one's 110 is gone
    t.judge(REF, [sa(110), v6(110)], 10.0)
    got = t.judge(REF, [sa(110), v6(5, spi="c0000016")], 20.0)
    assert got is not None and got.reason == Reason.PENDING  # 25 within 30 s: below 30
    got = t.judge(REF, [sa(115), v6(5, spi="c0000016")], 25.0)
    assert got is not None and got.status is Status.TRUE  # 30


def test_thresholds_derive_from_the_flags() -> None:
    p = TrafficPolicy(quiet=30.0, on_packets=3)
    assert (p.on_window, p.min_hold, p.off_below) == (15.0, 15.0, 1)
    assert TrafficPolicy().off_below == 5


def test_traffic_flowing_events_are_limited_per_tunnel() -> None:
    limit = EventLimiter(interval=600.0)
    assert limit.allow("a/x", "TrafficFlowing", "Unknown", 0.0)  # the SA is new: free
    assert limit.allow("a/x", "TrafficFlowing", "False", 1.0)  # the first verdict
    assert not limit.allow("a/x", "TrafficFlowing", "True", 599.0)
    assert not limit.allow("a/x", "TrafficFlowing", "False", 600.0)
    assert limit.allow("a/x", "TrafficFlowing", "Unknown", 300.0)  # the SA went: free
    assert limit.allow("a/y", "TrafficFlowing", "True", 2.0)  # another tunnel: its own
    assert limit.allow("a/x", "IkeEstablished", "False", 2.0)  # routevpn's own state
    assert limit.allow("a/x", "IkeEstablished", "True", 3.0)
    assert limit.allow("a/x", "TrafficFlowing", "True", 601.0)
    limit.forget("a/x")
    assert limit.allow("a/x", "TrafficFlowing", "False", 602.0)
