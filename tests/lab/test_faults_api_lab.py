"""The control plane failing under a tunnel that carries traffic (issue 17): the data
plane is left as it is, status catches up after, and the return brings no write storm.

Topology and assertions as tests/lab/test_faults_lab.py (the HA pair's node, its first
far end by hand, the REAL agent with a charon of its own; a 20 ms ping and a TCP stream
through the tunnel; nothing foreign touched; API writes counted), with a control plane
of its OWN (hack/local-cluster.sh: etcd and kube-apiserver as processes this test can
stop), never the one the other lab tests share. The lab's host side starts it, as a
real cluster's API server is off the node, and the test breaks it through
`support.faultplane` on a second forwarded port; run by hand in a guest without that,
the test starts one inside the guest (minutes of emulated CPU more). Each case:

- kube-apiserver frozen (SIGSTOP) for `OUTAGE_S` (a minute in the full soak, 20 s in
  CI's form): requests hang (a hung API server);
- kube-apiserver killed (SIGKILL), down `DOWN_S`, restarted with its own command line:
  connections refused meanwhile (through the host's forward: accepted, then closed);
- etcd killed (SIGKILL), down `DOWN_S`, restarted with the same data directory.

and asserts that the tunnel's IKE and CHILD SPIs are those of before, that its routes
were present at every sample through the outage, that at most `PING_SLACK` pings were
lost, and that status catches up once the API answers: the CHILD SA's byte counter in
status reaches what charon counted when the API came back (a change made during the
outage), within the agent's counter period and a resync. Nothing asserts on wall time.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_agent_lab as tal  # type: ignore[import-not-found]  # the agent lab's API helpers (tests/lab is no package)
import test_failover_lab as tfl  # type: ignore[import-not-found]  # the HA pair's setup
import test_faults_lab as tfa  # type: ignore[import-not-found]  # the fault suite's helpers

from routevpn.api import naming
from support import faultplane
from support import hapair as ha
from support import swanctl as sw
from support.cluster import ControlPlane, bin_dir
from support.faultplane import Faults, LocalFaults, RemoteFaults
from support.kube import wait_until
from support.tiers import missing

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1200)]

# A soak: CI runs the outages shortened; ROUTEVPN_SOAK_FULL=1 runs the minute.
FULL = os.environ.get("ROUTEVPN_SOAK_FULL") == "1"
OUTAGE_S = 60.0 if FULL else 20.0  # the issue's: the API server unreachable for a minute
DOWN_S = 20.0 if FULL else 10.0  # a killed component stays down this long before restart
PING_SLACK = 2  # "0 or near-0": nothing here touches the data plane
# The agent's --counters-period: its default (60 s) in the full soak; shorter in CI's
# form, where the wait for status to catch up is most of each case's time.
COUNTERS_PERIOD_S = 60.0 if FULL else 15.0
RESYNC_S = 3.0
# The apiserver's first start in the guest: ~60 s under TCG alone, more than the script's
# default 90 s with a second guest on the same two cores.
APISERVER_WAIT_S = 300
# A restarted kube-apiserver until /readyz: as long as its first start, and in a local run
# beside another guest more than 300 s were seen. Only the failure waits this long.
RESTART_WAIT_S = 900
AGENT_READY_S = 300


@contextlib.contextmanager
def breakable_control_plane(workdir: Path) -> Iterator[tuple[Faults, Path]]:
    """The control plane the lab's host side started for these tests (see the
    docstring), or, run in a guest by hand, one of their own inside it."""
    given, url = os.environ.get(faultplane.KUBECONFIG_ENV), os.environ.get(faultplane.URL_ENV)
    if given and url:
        yield RemoteFaults(url), Path(given)
        return
    if os.environ.get("ROUTEVPN_IN_LAB") != "1":
        missing("the lab guest (run through tests/lab/conftest.py)")
    if bin_dir() is None:
        missing("etcd/kube-apiserver not built: run hack/local-cluster.sh build")
    cp = ControlPlane.ephemeral(workdir)
    cp.extra_env["ROUTEVPN_APISERVER_WAIT"] = str(APISERVER_WAIT_S)
    try:
        kc = cp.up()
    except Exception as e:
        cp.down(purge=True)
        pytest.fail(f"no control plane inside the guest: {e}", pytrace=False)
    try:
        yield LocalFaults(cp), kc
    finally:
        cp.down(purge=True)  # stops the restarted ones too: their PIDs are recorded


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Faults, tfl.Ha]]:
    """The agent with one tunnel up (as test_faults_lab's `one`), on our control plane."""
    with (
        breakable_control_plane(tmp_path_factory.mktemp("cp")) as (cp, kc),
        tfl.agent_world(
            kc,
            tmp_path_factory.mktemp("api-faults"),
            agent_flags=("--counters-period", str(COUNTERS_PERIOD_S)),
        ) as h,
    ):
        h.world.node.ip("route", "add", tfa.FOREIGN_ROUTE[0], "dev", tfa.FOREIGN_ROUTE[1])
        try:  # generous: the fallback, an API server beside it in the guest, slows all
            wait_until(h.agent.ready, timeout=AGENT_READY_S, interval=0.5, what="agent ready")
        except TimeoutError as e:
            pytest.fail(f"{e}\n{h.agent.tail()}\n{cp.healthy()=}", pytrace=False)
        tfl.add_tunnel(h, tfl.PRIMARY)
        tfl.wait_up(h, tfl.PRIMARY)
        yield cp, h


_SPI = re.compile(r"([0-9a-f]{16})_i|\s+in\s+([0-9a-f]{8})", re.M)


def spis(h: tfl.Ha) -> set[str]:
    """The IKE SA's initiator SPI and the CHILD SAs' inbound SPIs on the node."""
    text = sw.swanctl(h.world.node, h.charon.uri, "--list-sas")
    return {a or b for a, b in _SPI.findall(text)}


def charon_bytes_in(h: tfl.Ha) -> int:
    """What charon counts into the primary's CHILD SA now."""
    text = sw.swanctl(h.world.node, h.charon.uri, "--list-sas")
    found = re.search(r"\s+in\s+[0-9a-f]{8}[^,]*,\s+(\d+) bytes", text)
    assert found, text
    return int(found[1])


def status_bytes_in(h: tfl.Ha) -> int:
    obj = tal.get(h, tfl.PRIMARY) or {}
    return int(((obj.get("status") or {}).get("child") or {}).get("bytesIn") or 0)


def outage(
    h: tfl.Ha, label: str, brk: Callable[[], object], fix: Callable[[], object], cp: Faults
) -> None:
    """The API path broken by `brk`, repaired by `fix`; the common assertions."""
    before, spi0 = tfa.foreign(h), spis(h)
    assert spi0, "no SA to begin with"
    conn = naming.conn_name(h.tunnel_ns, tfl.PRIMARY)
    missing_routes: list[str] = []
    ping = ha.Pinger(h.world.node, ha.NODE_LAN4, ha.FAR_HOST4, h.tmp / f"{label}.txt", tfa.INTERVAL)
    with tfa.tcp_stream(h, h.tmp) as stream:
        ping.start()
        try:
            ping.wait(50)
            w_before = tfa.writes(h)
            brk()
            missing_routes += routes_missing(h)  # sampled once more after the outage
            fix()
            fixed_at = time.time()
            try:
                wait_until(cp.healthy, timeout=RESTART_WAIT_S, interval=1,
                           what="the control plane healthy")  # fmt: skip
            except TimeoutError as e:
                pytest.fail(f"{e}\n{cp.logs()}", pytrace=False)
            back_at, back_bytes = time.time(), charon_bytes_in(h)
            print(f"{label}: control plane healthy {back_at - fixed_at:.1f}s after the repair")
            w_back = tfa.writes(h)
            wait_until(
                lambda: status_bytes_in(h) >= back_bytes,
                timeout=COUNTERS_PERIOD_S + 4 * RESYNC_S + 60,
                interval=1,
                what=f"status.child.bytesIn catching up with {back_bytes}",
            )
            caught_up = time.time() - back_at
            tfl.wait_up(h, tfl.PRIMARY)
            spent = tfa.writes(h) - w_back
            during = w_back - w_before
            ping.wait(50, since=time.time())
        finally:
            ping.stop()
        tcp = stream()
    print(
        f"{label}: lost {ping.lost()} pings, status caught up {caught_up:.1f}s after the API "
        f"answered, {spent:.0f} API writes from then ({during:.0f} counted during the outage)"
    )
    assert tcp == "alive", f"{label}: the TCP stream ended: {tcp}"
    assert missing_routes == [], (label, missing_routes)
    assert spis(h) == spi0, f"{label}: {conn} re-keyed or re-established"
    assert ping.lost() <= PING_SLACK, (label, ping.gap())
    assert tfa.foreign(h) == before, f"{label}: something foreign changed"
    assert spent <= tfa.WRITE_BUDGET, (label, spent, h.agent.tail())


def watch_routes(h: tfl.Ha, seconds: float) -> list[str]:
    """Sample the tunnel's routes every second for `seconds`: the ones found missing."""
    gone: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        gone += routes_missing(h)
        time.sleep(1)
    return gone


def routes_missing(h: tfl.Ha) -> list[str]:
    """The tunnel's routes (IPv4 and IPv6) not in the node's table now."""
    return [
        route
        for fam, route in (("-4", ha.FAR_NET4), ("-6", ha.FAR_NET6))
        if "vti4101" not in h.world.node.ip(fam, "route", "show", route)
    ]


def test_api_server_hung(api: tuple[Faults, tfl.Ha]) -> None:
    cp, h = api
    gone: list[str] = []

    def freeze() -> None:
        cp.signal("kube-apiserver", "STOP")
        gone.extend(watch_routes(h, OUTAGE_S))

    try:
        outage(h, "api-hung", freeze, lambda: cp.signal("kube-apiserver", "CONT"), cp)
    finally:
        with contextlib.suppress(ProcessLookupError, RuntimeError):
            cp.signal("kube-apiserver", "CONT")
    assert gone == [], gone


def _killed_and_restarted(cp: Faults, h: tfl.Ha, name: str, label: str) -> None:
    gone: list[str] = []

    def kill() -> None:
        cp.kill(name)
        gone.extend(watch_routes(h, DOWN_S))

    outage(h, label, kill, lambda: cp.restart(name), cp)
    assert gone == [], gone


def test_api_server_killed_and_restarted(api: tuple[Faults, tfl.Ha]) -> None:
    _killed_and_restarted(*api, "kube-apiserver", "api-killed")


def test_etcd_killed_and_restarted(api: tuple[Faults, tfl.Ha]) -> None:
    _killed_and_restarted(*api, "etcd", "etcd-killed")
