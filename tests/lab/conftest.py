"""The lab tier: ``lab`` tests run inside a QEMU guest with a real IPsec kernel.

On the host, every selected test under ``tests/lab/`` (except ``test_harness_*.py``,
which test the harness itself from the host) is replaced (after selection,
so ``-m``/``-k`` and node ids work as usual) by a stand-in with the same node id. The
first stand-in to run boots ONE guest for the whole session, which runs exactly the
selected node ids with pytest; each stand-in then reports its own test's outcome from
the guest (passed, failed with the guest's text, skipped, xfailed). Host-side
fixtures never run for lab tests. Inside the guest (``ROUTEVPN_IN_LAB=1``) the tests
run for real and each report is written as a JSON line to the scratch share.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import faultplane, lab, labreport, labspec
from support.cluster import ControlPlane, bin_dir
from support.tiers import missing

LAB_DIR = Path(__file__).resolve().parent
IN_LAB = os.environ.get(labspec.IN_LAB_ENV) == "1"
RESULTS_ENV = "ROUTEVPN_LAB_RESULTS"
# The whole tier in one guest; override for slow machines.
LAB_TIMEOUT = float(os.environ.get("ROUTEVPN_LAB_TIMEOUT", "3000"))
# The guest's vCPUs: two unless told (hack/test.sh gives each of its two lab guests one,
# so that neither spins on a vCPU the host has descheduled)
LAB_CPUS = int(os.environ.get("ROUTEVPN_LAB_CPUS", "2"))
# Lab tests that talk to an API server (see `_host_api_server`), and how they learn it.
API_TESTS = (
    "test_agent_lab.py",
    "test_failover_lab.py",
    "test_faults_lab.py",
    "test_ospf_lab.py",
    "test_bgp_lab.py",
    "test_mss_lab.py",
    "test_narrowing_lab.py",
    "test_faults_agent_kill_lab.py",
    "test_faults_move_lab.py",
    "test_rekeys_lab.py",
)
GUEST_KUBECONFIG_ENV = "ROUTEVPN_LAB_KUBECONFIG"
# The API-fault tests' own control plane on the host, and how they learn it.
FAULTS_API_TEST = "test_faults_api_lab.py"
# Where the guest reaches the host's forwarded ports
SERVICE = labspec.UserNet().service
API_NOTE_KEY = pytest.StashKey[list[str]]()


# --- inside the guest ------------------------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Guest side: append this report to the results file the host reads back."""
    path = os.environ.get(RESULTS_ENV)
    if not IN_LAB or not path:
        return
    line = labreport.encode(
        nodeid=report.nodeid,
        when=report.when or "",
        outcome=report.outcome,
        longrepr=report.longrepr,
        longreprtext=report.longreprtext,
        duration=report.duration,
        wasxfail=getattr(report, "wasxfail", None),
        sections=report.sections,
    )
    with Path(path).open("a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())  # the guest may be killed at its deadline right after


# --- on the host -------------------------------------------------------------------


@dataclass
class GuestRun:
    """The one guest boot of this session and what came back from it."""

    outcomes: dict[str, labreport.Outcome]
    result: lab.GuestResult | None
    unavailable: str | None
    selected: int

    def tail(self, lines: int = 60) -> str:
        """The end of the guest's output (and console when nothing came back)."""
        if self.result is None:
            return ""
        text = self.result.output.splitlines()[-lines:]
        if self.result.returncode is None:
            text += ["----- guest console -----", *self.result.console.splitlines()[-lines:]]
        return "\n".join(text)


RUN_KEY = pytest.StashKey[GuestRun]()
IDS_KEY = pytest.StashKey[list[str]]()


class LabFailureError(Exception):
    """A lab test failed in the guest; the message is the guest's own failure text."""


class LabItem(pytest.Item):
    """Host-side stand-in for one lab test: reports what that test did in the guest."""

    def runtest(self) -> None:
        """Boot the guest (once per session), then replay this test's outcome."""
        run = guest_run(self.config)
        if run.unavailable is not None:
            missing(run.unavailable)
        outcome = run.outcomes.get(self.nodeid)
        if outcome is None:
            res = run.result
            why = "the guest timed out" if res is not None and res.timed_out else "no result"
            raise LabFailureError(
                f"{self.nodeid}: {why} from the lab guest "
                f"(exit status {res.returncode if res else None})\n{run.tail()}"
            )
        if outcome.status == labreport.SKIPPED:
            missing(f"in the lab guest: {outcome.text}")  # fails in CI, like any tier
        if outcome.status == labreport.XFAILED:
            pytest.xfail(outcome.text)
        if outcome.status != labreport.PASSED:
            raise LabFailureError(f"in the lab guest ({outcome.status}):\n{outcome.text}")
        if outcome.text:
            print(outcome.text, end="")  # the figures it printed in the guest (`-rP`)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        """The guest's failure text as is, not a host traceback of this stand-in."""
        if isinstance(excinfo.value, LabFailureError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Point at the real test (file, name) in reports."""
        return self.path, None, f"[lab] {self.name}"


def _is_lab(item: pytest.Item) -> bool:
    path = Path(str(item.path)).resolve()
    # test_harness_*.py drive the harness itself from the host: they boot their own guests
    return LAB_DIR in path.parents and not path.name.startswith("test_harness_")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Host side: swap each selected lab test for a stand-in (after -m/-k selection)."""
    if IN_LAB:
        return
    ids: list[str] = []
    for i, item in enumerate(items):
        if not _is_lab(item) or isinstance(item, LabItem):
            continue
        assert item.parent is not None
        proxy = LabItem.from_parent(item.parent, name=item.name)
        proxy.own_markers = list(item.own_markers)
        proxy.keywords.update(item.keywords)
        # the first stand-in waits for the whole guest run
        proxy.add_marker(pytest.mark.timeout(LAB_TIMEOUT + 120))
        items[i] = proxy
        ids.append(item.nodeid)
    config.stash[IDS_KEY] = ids


def guest_run(config: pytest.Config) -> GuestRun:
    """Run all selected lab tests in one guest, once per session (memoised)."""
    if RUN_KEY in config.stash:
        return config.stash[RUN_KEY]
    ids = config.stash.get(IDS_KEY, [])
    run = GuestRun(outcomes={}, result=None, unavailable=None, selected=len(ids))
    config.stash[RUN_KEY] = run
    scratch = Path(config._tmp_path_factory.mktemp("lab-guest", numbered=True))  # type: ignore[attr-defined]
    results = scratch / "results.jsonl"
    rootdir = Path(str(config.rootpath))
    # the guest runs the host's own interpreter (the project's .venv: the host root is
    # shared read-only), in the repository, writing nothing into it
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rA",
        "--basetemp=/tmp/pytest-lab",
        f"--rootdir={rootdir}",
        *ids,
    ]
    env = {RESULTS_ENV: f"{labspec.GUEST_SCRATCH}/results.jsonl"}
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        if any(name in i for i in ids for name in API_TESTS):
            ports += _host_api_server(config, stack, scratch, env)
        if any(FAULTS_API_TEST in i for i in ids):
            ports += _host_fault_plane(config, stack, scratch, env)
        net = labspec.UserNet(forward_ports=tuple(ports)) if ports else None
        try:
            run.result = lab.run_in_guest(
                command,
                timeout=LAB_TIMEOUT,
                cwd=rootdir,
                env=env,
                scratch=scratch,
                net=net,
                cpus=LAB_CPUS,
            )
        except lab.LabUnavailableError as e:
            run.unavailable = str(e)
            return run
    if results.exists():
        run.outcomes = labreport.fold(results.read_text().splitlines())
    (scratch / "guest-output.txt").write_text(run.result.output)
    return run


def _host_control_plane(
    config: pytest.Config, stack: contextlib.ExitStack, scratch: Path, name: str
) -> tuple[ControlPlane, Path] | None:
    """A control plane on the host, stopped with `stack`, and a kubeconfig for the guest
    in `scratch`; None (with the reason noted) if it can't start."""
    if bin_dir() is None:
        return None
    state = Path(config._tmp_path_factory.mktemp(name, numbered=True))  # type: ignore[attr-defined]
    cp = ControlPlane.ephemeral(state)
    try:
        cp.up()
    except Exception as e:  # any failure: fall back to one in the guest, and say why
        cp.down(purge=True)
        notes = config.stash.get(API_NOTE_KEY, [])
        config.stash[API_NOTE_KEY] = [*notes, f"{name}: host control plane failed ({e})"]
        return None
    stack.callback(cp.down, purge=True)
    assert cp.api_port is not None
    kubeconfig = cp.kubeconfig(server=f"https://{SERVICE}:{cp.api_port}")
    guest_kubeconfig = scratch / f"{name}.kubeconfig"
    guest_kubeconfig.write_text(kubeconfig.read_text())
    return cp, guest_kubeconfig


def _host_api_server(
    config: pytest.Config, stack: contextlib.ExitStack, scratch: Path, env: dict[str, str]
) -> list[int]:
    """A control plane on the host for the guest's agent tests, as a real cluster's API
    server is off the node: reached through QEMU user networking on a TEST-NET range
    (`labspec.UserNet`), it spares the emulated CPUs a minute of start-up and the API
    server's load. The ports to forward; none (the tests then start one inside the
    guest) if it can't start."""
    made = _host_control_plane(config, stack, scratch, "lab-control-plane")
    if made is None:
        return []
    cp, kubeconfig = made
    assert cp.api_port is not None
    env[GUEST_KUBECONFIG_ENV] = f"{labspec.GUEST_SCRATCH}/{kubeconfig.name}"
    notes = config.stash.get(API_NOTE_KEY, [])
    config.stash[API_NOTE_KEY] = [
        *notes,
        f"agent tests use a control plane on the host via {SERVICE}:{cp.api_port}",
    ]
    return [cp.api_port]


def _host_fault_plane(
    config: pytest.Config, stack: contextlib.ExitStack, scratch: Path, env: dict[str, str]
) -> list[int]:
    """A second control plane on the host for the API-fault tests, which freeze, kill
    and restart its etcd and kube-apiserver through a `faultplane.FaultServer`: the
    guest reaches both over forwarded ports. The ports to forward; none (the tests then
    start one of their own inside the guest, minutes slower) if it can't start."""
    made = _host_control_plane(config, stack, scratch, "lab-fault-plane")
    if made is None:
        return []
    cp, kubeconfig = made
    assert cp.api_port is not None
    server = stack.enter_context(faultplane.FaultServer(cp))
    env[faultplane.KUBECONFIG_ENV] = f"{labspec.GUEST_SCRATCH}/{kubeconfig.name}"
    env[faultplane.URL_ENV] = f"http://{SERVICE}:{server.port}"
    notes = config.stash.get(API_NOTE_KEY, [])
    config.stash[API_NOTE_KEY] = [
        *notes,
        f"API-fault tests break a control plane on the host via {SERVICE}:{cp.api_port}",
    ]
    return [cp.api_port, server.port]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Boot and tier times of the lab guest, and where its full output is kept."""
    run = config.stash.get(RUN_KEY, None)
    if run is None or run.result is None:
        return
    r = run.result
    tr = terminalreporter
    tr.section("lab")
    boot = f"{r.boot_seconds:.1f}s" if r.boot_seconds is not None else "n/a"
    tier = f"{r.command_seconds:.1f}s" if r.command_seconds is not None else "n/a"
    tr.write_line(
        f"lab: 1 guest boot, accel={r.accel}, {LAB_CPUS} vCPU, userspace+modules ready at {boot}, "
        f"{run.selected} selected / {len(run.outcomes)} reported, tier {tier} (guest clock), "
        f"wall {r.wall_seconds:.1f}s, guest exit {r.returncode}"
        + (" TIMED OUT" if r.timed_out else "")
    )
    if r.accel == "tcg":
        tr.write_line("lab: software emulation (TCG): KVM is unavailable or does not boot here")
    per_module: dict[str, float] = {}
    for nodeid, outcome in run.outcomes.items():
        module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        per_module[module] = per_module.get(module, 0.0) + outcome.duration
    ranked = sorted(per_module.items(), key=lambda kv: -kv[1])
    tr.write_line(
        "lab: per module (guest clock, set-up included): "
        + ", ".join(f"{m.removesuffix('.py')} {s:.0f}s" for m, s in ranked)
    )
    for note in config.stash.get(API_NOTE_KEY, []):
        tr.write_line(f"lab: {note}")


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say where lab tests run."""
    if IN_LAB:
        return f"lab: inside the guest (accel={os.environ.get('ROUTEVPN_LAB_ACCEL', '?')})"
    return None
