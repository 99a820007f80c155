"""Run a command inside a fresh QEMU guest with a real IPsec kernel (the lab).

``run_in_guest(["python", "-c", "..."])`` boots the pinned Debian kernel with a small
cached initramfs, shares the host's root read-only (the guest sees this repository
and its .venv), runs the command as root in the repository, and returns its output,
exit status, the accelerator used and timings. A guest that outlives its deadline
is killed by PID; nothing is left running. Also a CLI: ``hack/lab.sh``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import labspec as spec

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
QBOOT = Path("/usr/share/qemu/qboot.rom")
# Environment the guest inherits from the host (everything else is set fresh).
PASS_ENV = ("CI", "ROUTEVPN_REQUIRE_ALL", "TERM", "PYTEST_ADDOPTS", "ROUTEVPN_SOAK_FULL")


class LabUnavailableError(RuntimeError):
    """A part the lab needs is missing on this machine (QEMU, kernel, busybox, …)."""


@dataclass(frozen=True)
class GuestResult:
    """What one guest run produced."""

    output: str
    returncode: int | None  # None: no exit status came back (hang, crash, deadline)
    accel: str
    timed_out: bool
    boot_seconds: float | None  # guest uptime when the command started
    command_seconds: float | None  # the command's own run time, guest clock
    wall_seconds: float  # host clock, QEMU start to exit
    console: str  # the serial console (kernel and stage-1 messages)
    pid: int  # QEMU's PID (already reaped when this is returned)

    @property
    def ok(self) -> bool:
        """True when the command ran and exited 0."""
        return self.returncode == 0


def cache_dir() -> Path:
    """``$ROUTEVPN_CACHE/lab`` (default ``~/.cache/routevpn/lab``)."""
    base = os.environ.get("ROUTEVPN_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "routevpn"
    )
    return Path(base) / "lab"


def kernel_version() -> str:
    """The kernel version pinned in hack/apt-packages.txt."""
    apt = REPO / "hack" / "apt-packages.txt"
    return spec.pinned_kernel(apt.read_text() if apt.exists() else "")


def check_parts(version: str) -> tuple[Path, Path]:
    """The kernel image and module directory; raise LabUnavailableError naming what is absent."""
    kernel = Path(f"/boot/vmlinuz-{version}")
    modules = Path(f"/lib/modules/{version}")
    for what, path in (("kernel", kernel), ("kernel modules", modules / "modules.dep")):
        if not path.exists():
            raise LabUnavailableError(f"{what} {path} (apt-get install linux-image-{version})")
    if shutil.which(QEMU) is None:
        raise LabUnavailableError(f"{QEMU} (apt-get install qemu-system-x86)")
    if not BUSYBOX.exists():
        raise LabUnavailableError(f"{BUSYBOX} (apt-get install busybox-static)")
    if shutil.which("cpio") is None:
        raise LabUnavailableError("cpio (apt-get install cpio)")
    return kernel, modules


def build_initramfs(version: str) -> Path:
    """The stage-1 initramfs for `version`, built on first use and cached by content."""
    _, modules = check_parts(version)
    paths = spec.load_order(spec.BOOT_MODULES, (modules / "modules.dep").read_text())
    init = spec.stage1_init(paths)
    key = spec.cache_key(version, init, BUSYBOX.read_bytes(), *paths)
    out = cache_dir() / f"initramfs-{version}-{key}.cpio"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="routevpn-initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "modules"):
            (root / d).mkdir()
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for p in paths:
            shutil.copy2(modules / p, root / "modules" / Path(p).name)
        (root / "init").write_text(init)
        (root / "init").chmod(0o755)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        partial = out.with_suffix(f".tmp{os.getpid()}")
        with partial.open("wb") as f:
            subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                input="\n".join(names).encode(),
                stdout=f,
                cwd=root,
                check=True,
            )
        partial.replace(out)  # atomic: a parallel builder never sees half a file
    return out


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return "unknown"


def choose_accel(version: str) -> str:
    """``kvm`` where a KVM guest really boots here, else ``tcg``.

    ``ROUTEVPN_LAB_ACCEL=kvm|tcg`` forces one. Opening /dev/kvm is not proof (nested
    virtualisation can abort or hang a guest), so this boots a trivial guest once per
    host boot and caches the verdict.
    """
    forced = os.environ.get("ROUTEVPN_LAB_ACCEL", "auto")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    verdict = cache_dir() / f"accel-{_boot_id()}.json"
    if verdict.exists():
        with contextlib.suppress(ValueError, KeyError):
            return str(json.loads(verdict.read_text())["accel"])
    probe = run_in_guest(["true"], accel="kvm", timeout=30, modules=(), version=version)
    accel = "kvm" if probe.ok else "tcg"
    verdict.parent.mkdir(parents=True, exist_ok=True)
    verdict.write_text(json.dumps({"accel": accel, "probe_wall_seconds": probe.wall_seconds}))
    return accel


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def run_in_guest(
    command: Sequence[str] | str,
    *,
    timeout: float = 900.0,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    net: spec.UserNet | None = None,
    accel: str | None = None,
    memory_mb: int | None = None,
    cpus: int = 2,
    modules: Sequence[str] = spec.IPSEC_MODULES,
    version: str | None = None,
    scratch: Path | None = None,
) -> GuestResult:
    """Boot a fresh guest, run `command` in `cwd` as root, power off; return the result.

    `command` is an argv or a shell string. The guest sees ``ROUTEVPN_IN_LAB=1`` and
    ``ROUTEVPN_LAB_SCRATCH`` (a directory shared writable with the host: `scratch`, or
    a temporary one removed afterwards). Raises LabUnavailableError when parts are missing.
    """
    version = version or kernel_version()
    kernel, _ = check_parts(version)
    initrd = build_initramfs(version)
    accel = accel or choose_accel(version)
    memory_mb = memory_mb or int(os.environ.get("ROUTEVPN_LAB_MEMORY_MB", "1024"))
    owned = scratch is None
    scratch = scratch or Path(tempfile.mkdtemp(prefix="routevpn-lab-"))
    try:
        return _boot(
            command,
            scratch,
            kernel,
            initrd,
            accel,
            timeout,
            cwd,
            env,
            net,
            memory_mb,
            cpus,
            modules,
        )
    finally:
        if owned:
            shutil.rmtree(scratch, ignore_errors=True)


def run_with_host_api(
    command: Sequence[str],
    *,
    timeout: float,
    keep: Callable[[Path], None] | None = None,
) -> GuestResult:
    """Run `command` in the guest beside an API server of its own on the host, forwarded
    into the guest (its kubeconfig in ROUTEVPN_LAB_KUBECONFIG), as a real API server is
    off the node: the guest's emulated CPUs are left to what runs on the node. The
    control plane is stopped after; `keep(scratch)` may copy files out of the guest's
    scratch directory first (the benchmarks' logs)."""
    from .cluster import ControlPlane  # the control plane's module imports nothing of this

    with tempfile.TemporaryDirectory(prefix="lab-api-") as tmp:
        cp = ControlPlane.ephemeral(Path(tmp) / "cp")
        scratch = Path(tmp) / "scratch"
        scratch.mkdir()
        try:
            cp.up()
            assert cp.api_port is not None
            net = spec.UserNet(forward_ports=(cp.api_port,))
            guest_kc = cp.kubeconfig(server=f"https://{net.service}:{cp.api_port}")
            (scratch / "guest.kubeconfig").write_text(guest_kc.read_text())
            env = {"ROUTEVPN_LAB_KUBECONFIG": f"{spec.GUEST_SCRATCH}/guest.kubeconfig"}
            return run_in_guest(
                command, timeout=timeout, cwd=REPO, net=net, env=env, scratch=scratch
            )
        finally:
            cp.down(purge=True)
            if keep is not None:
                keep(scratch)


def _boot(
    command: Sequence[str] | str,
    scratch: Path,
    kernel: Path,
    initrd: Path,
    accel: str,
    timeout: float,
    cwd: Path,
    env: Mapping[str, str] | None,
    net: spec.UserNet | None,
    memory_mb: int,
    cpus: int,
    modules: Sequence[str],
) -> GuestResult:
    guest = _launch(
        command, scratch, kernel, initrd, accel, cwd, env, net, memory_mb, cpus, modules
    )
    return guest.finish(timeout)


@dataclass
class RunningGuest:
    """A guest started by `start_guest` that has not been reaped yet."""

    proc: subprocess.Popen[bytes]
    scratch: Path
    accel: str
    started: float  # host monotonic clock at QEMU's start

    def alive(self) -> bool:
        """True while QEMU runs."""
        return self.proc.poll() is None

    def finish(self, timeout: float) -> GuestResult:
        """Wait up to `timeout` seconds for the guest to power off, kill it (by PID) if it
        does not, and return what it produced."""
        timed_out = False
        try:
            self.proc.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # always reap what we started, by its PID, whatever happened above
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(30)
        return _collect(self, timed_out)


def _collect(guest: RunningGuest, timed_out: bool) -> GuestResult:
    scratch, proc = guest.scratch, guest.proc
    wall = time.monotonic() - guest.started
    rc_text = _read(scratch / "rc").strip()
    times = spec.parse_times(_read(scratch / "times"))
    output = _read(scratch / "output")
    qemu_err = _read(scratch / "qemu.stderr").strip()
    if qemu_err and not rc_text:
        output += f"\n[qemu exited {proc.returncode}: {qemu_err}]"
    return GuestResult(
        output=output,
        returncode=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
        accel=guest.accel,
        timed_out=timed_out,
        boot_seconds=times.get("command"),
        command_seconds=(times["end"] - times["command"])
        if {"end", "command"} <= times.keys()
        else None,
        wall_seconds=wall,
        console=_read(scratch / "console.log"),
        pid=proc.pid,
    )


def start_guest(
    command: Sequence[str] | str,
    *,
    scratch: Path,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    net: spec.UserNet | None = None,
    accel: str | None = None,
    memory_mb: int | None = None,
    cpus: int = 2,
    modules: Sequence[str] = spec.IPSEC_MODULES,
    version: str | None = None,
) -> RunningGuest:
    """Like `run_in_guest`, but return at once with the guest running in the background
    (a node that tests talk to over the network); the caller must `finish()` it."""
    version = version or kernel_version()
    kernel, _ = check_parts(version)
    initrd = build_initramfs(version)
    accel = accel or choose_accel(version)
    memory_mb = memory_mb or int(os.environ.get("ROUTEVPN_LAB_MEMORY_MB", "1024"))
    return _launch(command, scratch, kernel, initrd, accel, cwd, env, net, memory_mb, cpus, modules)


def _launch(
    command: Sequence[str] | str,
    scratch: Path,
    kernel: Path,
    initrd: Path,
    accel: str,
    cwd: Path,
    env: Mapping[str, str] | None,
    net: spec.UserNet | None,
    memory_mb: int,
    cpus: int,
    modules: Sequence[str],
) -> RunningGuest:
    guest_env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    guest_env |= {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        spec.IN_LAB_ENV: "1",
        spec.SCRATCH_ENV: spec.GUEST_SCRATCH,
        # the repository is read-only in the guest: nothing may try to write into it
        "PYTHONDONTWRITEBYTECODE": "1",
        "ROUTEVPN_LAB_ACCEL": accel,
        **(env or {}),
    }
    for name in ("output", "rc", "times"):
        (scratch / name).unlink(missing_ok=True)
    (scratch / "stage2.sh").write_text(
        spec.stage2_script(modules=modules, net=net, keep=(str(cwd), str(REPO), sys.prefix))
    )
    (scratch / "command.sh").write_text(spec.command_script(command, cwd=str(cwd), env=guest_env))
    console = scratch / "console.log"
    boot = spec.BootSpec(
        kernel=str(kernel),
        initrd=str(initrd),
        scratch=str(scratch),
        console_log=str(console),
        accel=accel,
        memory_mb=memory_mb,
        cpus=cpus,
        net=net,
        relay=f"{BUSYBOX} nc 127.0.0.1 {{port}}",
        bios=str(QBOOT) if QBOOT.exists() else None,
    )
    start = time.monotonic()
    proc = subprocess.Popen(
        spec.qemu_argv(boot, QEMU),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(scratch / "qemu.stderr").open("wb"),
    )
    return RunningGuest(proc=proc, scratch=scratch, accel=accel, started=start)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``run [--net] [--forward PORT] [--timeout S] -- CMD…`` · ``build`` · ``accel``."""
    ap = argparse.ArgumentParser(prog="hack/lab.sh", description=__doc__)
    sub = ap.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="run a command in a fresh guest")
    r.add_argument("--timeout", type=float, default=900.0)
    r.add_argument("--net", action="store_true", help="user networking on 192.0.2.0/24")
    r.add_argument(
        "--forward",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="guest 192.0.2.100:PORT reaches host 127.0.0.1:PORT (implies --net)",
    )
    r.add_argument("command", nargs="+")
    sub.add_parser("build", help="build (or find) the cached initramfs")
    sub.add_parser("accel", help="say which accelerator the lab uses here")
    args = ap.parse_args(argv)
    try:
        if args.verb == "build":
            print(build_initramfs(kernel_version()))
            return 0
        if args.verb == "accel":
            print(choose_accel(kernel_version()))
            return 0
        net = spec.UserNet(forward_ports=tuple(args.forward)) if args.net or args.forward else None
        res = run_in_guest(args.command, timeout=args.timeout, net=net)
    except LabUnavailableError as e:
        print(f"lab: missing {e}", file=sys.stderr)
        return 2
    sys.stdout.write(
        res.output if res.output.endswith("\n") or not res.output else res.output + "\n"
    )
    print(
        f"lab: accel={res.accel} boot={res.boot_seconds}s command={res.command_seconds}s "
        f"wall={res.wall_seconds:.1f}s rc={res.returncode}"
        + (" TIMED OUT (killed)" if res.timed_out else ""),
        file=sys.stderr,
    )
    if res.returncode is None:
        sys.stderr.write(res.console[-3000:])
        return 3
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
