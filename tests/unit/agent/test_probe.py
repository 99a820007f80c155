"""The health probe (spec.healthCheck) as pure state, with a fake clock: misses in a row
fail it, the first answer brings it back, late or stale replies count for nothing; what
it probes (and what it refuses to); its packets; failover reading its verdict."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from routevpn.agent import failover as fo
from routevpn.agent import prober as pr
from routevpn.agent.metrics import Metrics
from routevpn.agent.probe import Target, Tracker, target_of
from routevpn.api.status import RouteState
from routevpn.api.tunnel import VpnTunnel
from routevpn.dataplane.facts import IpsecFacts
from support.hapair_facts import BACKUP, NET4, NODE, PAIR, PRIMARY, plan, route, sa

pytestmark = pytest.mark.unit


class Clock:
    """A fake clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def tick(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def miss(t: Tracker, clock: Clock) -> bool:
    """One probe sent and its deadline passed unanswered: did the verdict change?"""
    t.send(clock.now)
    return t.expire(clock.tick(t.interval))


def answer(t: Tracker, clock: Clock, after: float = 0.2) -> bool:
    seq = t.send(clock.now)
    changed = t.reply(seq, clock.tick(after))
    clock.tick(t.interval - after)
    return changed


def test_failures_misses_in_a_row_fail_it_and_one_answer_brings_it_back() -> None:
    clock, t = Clock(), Tracker(failures=3, interval=1.0)
    assert [answer(t, clock), miss(t, clock), miss(t, clock)] == [False, False, False]
    assert not t.failing  # two misses of three: still healthy
    assert miss(t, clock) is True and t.failing  # the third turns it
    assert miss(t, clock) is False and t.failing  # no change while it stays down
    assert answer(t, clock) is True and not t.failing
    assert (t.sent, t.answered, t.missed, t.misses) == (6, 2, 4, 0)


def test_an_answer_between_misses_resets_the_count() -> None:
    clock, t = Clock(), Tracker(failures=2, interval=1.0)
    for _ in range(5):
        assert miss(t, clock) is False
        assert answer(t, clock) is False
    assert not t.failing


def test_a_late_or_stale_reply_counts_for_nothing() -> None:
    clock, t = Clock(), Tracker(failures=1, interval=1.0)
    seq = t.send(clock.now)
    assert t.reply(seq, clock.tick(1.5)) is False  # after the deadline
    assert t.expire(clock.now) is True and t.failing
    old = seq
    seq = t.send(clock.tick(0.1))
    assert t.reply(old, clock.tick(0.1)) is False and t.failing  # a reply to an old probe
    assert t.reply(seq, clock.tick(0.1)) is True and not t.failing


def test_the_deadline_is_not_a_miss_before_it_passes() -> None:
    clock, t = Clock(), Tracker(failures=1, interval=2.0)
    t.send(clock.now)
    assert t.expire(clock.tick(1.9)) is False and t.sent_at is not None
    assert t.expire(clock.tick(0.1)) is True


def test_sending_again_before_the_deadline_misses_the_outstanding_probe() -> None:
    clock, t = Clock(), Tracker(failures=2, interval=1.0)
    t.send(clock.now)
    t.send(clock.tick(0.5))
    assert t.missed == 1 and t.misses == 1


def test_the_sequence_wraps_at_16_bits() -> None:
    clock, t = Clock(), Tracker(failures=1, interval=1.0, seq=0xFFFF)
    assert t.send(clock.now) == 0


# --- what is probed -------------------------------------------------------------------


def tunnel(check: dict[str, Any] | None, addresses: list[str]) -> VpnTunnel:
    spec: dict[str, Any] = {
        "nodeName": NODE,
        "remote": {"address": "192.0.2.2"},
        "auth": {"type": "psk", "psk": {"secretRef": {"name": "k"}}},
        "interface": {"addresses": addresses},
    }
    if check is not None:
        spec["healthCheck"] = check
    return VpnTunnel.from_wire({"metadata": {"name": "a", "namespace": "ns"}, "spec": spec})


def test_the_target_is_sent_from_the_interface_address_of_its_subnet() -> None:
    t = tunnel(
        {"address": "2001:db8:100::1", "interval": "2s", "failures": 4},
        ["169.254.10.1/30", "2001:db8:100::/127"],
    )
    assert target_of(t, "vti7") == Target("vti7", "2001:db8:100::", "2001:db8:100::1", 2.0, 4)
    assert target_of(tunnel({"address": "169.254.10.2"}, ["169.254.10.1/30"]), "vti7") == Target(
        "vti7", "169.254.10.1", "169.254.10.2", 1.0, 3
    )
    assert target_of(tunnel(None, ["169.254.10.1/30"]), "vti7") is None


def test_the_agent_refuses_an_address_outside_the_interface_subnets_again() -> None:
    """The model refuses it; an object built past the model must still not be probed."""
    good = tunnel({"address": "169.254.10.2"}, ["169.254.10.1/30"])
    for outside in ("192.0.2.10", "169.254.10.1", "169.254.10.6"):
        hostile = good.model_copy(
            update={
                "spec": good.spec.model_copy(
                    update={
                        "health_check": good.spec.health_check.model_copy(  # type: ignore[union-attr]
                            update={"address": outside}
                        )
                    }
                )
            }
        )
        assert target_of(hostile, "vti7") is None, outside
    with pytest.raises(ValueError, match=r"must be inside one of spec\.interface\.addresses"):
        tunnel({"address": "192.0.2.10"}, ["169.254.10.1/30"])


# --- packets --------------------------------------------------------------------------


def test_an_ipv4_echo_request_carries_a_valid_checksum_and_its_reply_is_recognised() -> None:
    packet = pr.echo_request(4, 0x1234, 7)
    assert packet[0] == pr.ICMP_ECHO and pr.checksum(packet) == 0
    reply = bytes([pr.ICMP_REPLY]) + packet[1:]
    header = bytes([0x45]) + bytes(19)  # an IPv4 header of 20 bytes, as a raw socket gives
    assert pr.echo_reply_seq(4, header + reply, 0x1234) == 7
    assert pr.echo_reply_seq(4, header + reply, 0x4321) is None  # another prober's
    assert pr.echo_reply_seq(4, header + packet, 0x1234) is None  # a request, not a reply


def test_an_icmpv6_reply_is_recognised_without_an_ip_header() -> None:
    packet = pr.echo_request(6, 9, 65535)
    assert packet[0] == pr.ICMP6_ECHO
    reply = struct.pack("!BBHHH", pr.ICMP6_REPLY, 0, 0, 9, 65535)
    assert pr.echo_reply_seq(6, reply, 9) == 65535
    assert pr.echo_reply_seq(6, reply[:5], 9) is None


# --- failover reads the verdict ------------------------------------------------------


def view(*up: Any, failing: frozenset[Any] = frozenset()) -> fo.NodeRoutes:
    return fo.NodeRoutes.of(PAIR, NODE, fo.carrying_conns(IpsecFacts(sas=up)), failing)


def test_a_failing_probe_demotes_a_tunnel_whose_sa_is_up_while_another_carries() -> None:
    v = view(sa(PRIMARY), sa(BACKUP), failing=frozenset({PRIMARY}))
    assert v.up == {BACKUP} and v.probe_failed == {PRIMARY}
    [d] = fo.decide_routes(PRIMARY, plan(PRIMARY, route(NET4, 100)), v)
    assert (d.state, d.reason, d.route.metric) == (RouteState.DEMOTED, fo.PROBE_FAILED, 100 + 2**31)
    assert "health check goes unanswered" in d.message and "prod/backup (up)" in d.message


def test_a_failing_probe_with_nobody_else_up_keeps_the_route_fail_closed() -> None:
    v = view(sa(PRIMARY), failing=frozenset({PRIMARY, BACKUP}))
    [d] = fo.decide_routes(PRIMARY, plan(PRIMARY, route(NET4, 100)), v)
    assert (d.state, d.reason, d.route.metric) == (RouteState.ACTIVE, fo.PROBE_FAILED, 100)


def test_with_the_sa_down_the_probe_does_not_matter() -> None:
    v = view(sa(BACKUP), failing=frozenset({PRIMARY}))
    assert v.probe_failed == frozenset()
    [d] = fo.decide_routes(PRIMARY, plan(PRIMARY, route(NET4, 100)), v)
    assert d.reason == fo.SA_DOWN


def test_a_failing_backup_does_not_take_the_traffic_of_a_down_primary() -> None:
    """Both SAs count: the primary's is down, the backup's probe fails: nobody carries,
    so the primary's routes stay fail-closed at their metric rather than be demoted."""
    v = view(sa(BACKUP), failing=frozenset({BACKUP}))
    [d] = fo.decide_routes(PRIMARY, plan(PRIMARY, route(NET4, 100)), v)
    assert (d.state, d.reason) == (RouteState.ACTIVE, fo.FAIL_CLOSED)


def test_without_a_listing_a_probe_failed_tunnel_keeps_its_sa_up() -> None:
    v = view(sa(PRIMARY), sa(BACKUP), failing=frozenset({PRIMARY}))
    again = v.refresh(PAIR, NODE, None, frozenset())
    assert again.up == {PRIMARY, BACKUP}  # the probe answered again, charon unreachable


def test_probe_metrics_count_results_and_show_the_verdict() -> None:
    m = Metrics("node-a")
    labels = {"namespace": "prod", "name": "site-b", "node": "node-a"}
    m.probed("prod", "site-b", answered=False, failing=True)
    m.probed("prod", "site-b", answered=True, failing=False)
    m.probed("prod", "site-b", answered=True, failing=False)
    get = m.registry.get_sample_value
    assert get("routevpn_tunnel_probes_total", {**labels, "result": "answered"}) == 2
    assert get("routevpn_tunnel_probes_total", {**labels, "result": "missed"}) == 1
    assert get("routevpn_tunnel_probe_failing", labels) == 0
    m.tunnel("prod", "site-b", None, None, 0.0)
    m.forget("prod", "site-b")
    assert get("routevpn_tunnel_probe_failing", labels) is None
    assert get("routevpn_tunnel_probes_total", {**labels, "result": "answered"}) is None
