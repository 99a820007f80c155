"""Pure parts of the lab harness: what to pack, what to boot, how to boot it.

No I/O here (callers pass file contents in), so every piece is unit-tested.
The guest boots in two stages. Stage 1 is the initramfs's ``/init`` (busybox): load
virtio + 9p + overlay modules, mount the host's root read-only over 9p under a tmpfs
overlay, mount the writable scratch share, ``switch_root``. Stage 2 is a shell script
from the scratch share (so changing it needs no rebuild): mount the usual pseudo
filesystems, load the IPsec modules, optionally bring up user networking, run the
command with output and exit status written to the scratch share, power off.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Loaded in stage 1 (with their dependencies) to reach the host's root filesystem.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# Loaded in stage 2 from the host's /lib/modules: what route-based IPsec and the
# tests need. Crypto modules (gcm, drbg, …) load on demand.
IPSEC_MODULES = (
    "ip_vti",
    "ip6_vti",
    "xfrm_interface",
    "esp4",
    "esp6",
    "xfrm_user",
    "xfrm4_tunnel",
    "xfrm6_tunnel",
    "tunnel4",
    "tunnel6",
    "af_key",
    "veth",
    "dummy",
)
NET_MODULES = ("virtio_net",)

HOST_TAG = "hostroot"
SCRATCH_TAG = "scratch"
GUEST_SCRATCH = "/scratch"
IN_LAB_ENV = "ROUTEVPN_IN_LAB"
SCRATCH_ENV = "ROUTEVPN_LAB_SCRATCH"
# The kernel package is pinned in hack/apt-packages.txt; this is the fallback.
DEFAULT_KERNEL = "6.1.0-56-amd64"


def pinned_kernel(apt_packages_text: str) -> str:
    """The kernel version pinned in hack/apt-packages.txt (``linux-image-<version>``)."""
    m = re.search(r"^\s*linux-image-(\S+)", apt_packages_text, re.M)
    return m.group(1) if m else DEFAULT_KERNEL


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` → {module name: (relative path, [dependency paths])}."""
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, deps = line.split(":", 1)
        out[module_name(path)] = (path, deps.split())
    return out


def module_name(path: str) -> str:
    """``kernel/fs/9p/9p.ko.xz`` → ``9p`` (dashes read as underscores, as modprobe does)."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def load_order(wanted: Iterable[str], modules_dep_text: str) -> list[str]:
    """Relative paths of `wanted` and all their dependencies, each after what it needs.

    Raises KeyError for a module the kernel does not ship as a module.
    """
    deps = parse_modules_dep(modules_dep_text)
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []

    def visit(name: str) -> None:
        path, needs = deps[name]
        if path in order:
            return
        for dep in needs:
            visit(by_path[dep])
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def stage1_init(module_paths: Sequence[str]) -> str:
    """The initramfs ``/init`` (busybox sh): reach the host root, then switch to it."""
    insmods = "\n".join(f"insmod /modules/{p.rsplit('/', 1)[-1]} || die {p}" for p in module_paths)
    nine_p = "trans=virtio,version=9p2000.L,msize=512000"
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
die() {{ echo "ROUTEVPN-LAB: stage 1 failed: $*"; poweroff -f; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
{insmods}
mkdir -p /host /rw /newroot
mount -t 9p -o {nine_p},ro,cache=loose {HOST_TAG} /host || die mount host root
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \\
    || die overlay
mkdir -p /newroot{GUEST_SCRATCH}
mount -t 9p -o {nine_p},cache=none {SCRATCH_TAG} /newroot{GUEST_SCRATCH} || die scratch
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh {GUEST_SCRATCH}/stage2.sh
"""


@dataclass(frozen=True)
class UserNet:
    """QEMU user networking on a TEST-NET range, isolated (``restrict=on``).

    The guest gets `guest` on eth0; QEMU's host alias is `host`, but ``restrict=on``
    blocks it like everything else. Each port in `forward_ports` makes
    ``service:PORT`` in the guest reach the host's ``127.0.0.1:PORT`` (a ``guestfwd``,
    one relay process per connection); nothing else leaves the guest. (QEMU refuses a
    guestfwd on the host alias itself, hence a separate `service` address; a TLS
    server behind it needs that address, or a name, in its certificate.)
    """

    net: str = "192.0.2.0/24"
    host: str = "192.0.2.2"
    guest: str = "192.0.2.15"
    service: str = "192.0.2.100"
    forward_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(self.net)
        # only TEST-NET ranges: never QEMU's default user network, which may collide with
        # real networks, nor any other private or public range
        if not _test_net(net):
            raise ValueError(f"user networking must use a TEST-NET range, not {self.net}")
        if len({self.host, self.guest, self.service}) != 3:
            raise ValueError("host, guest and service addresses must differ")
        for a in (self.host, self.guest, self.service):
            if ipaddress.ip_address(a) not in net:
                raise ValueError(f"{a} is not in {self.net}")

    def netdev(self, relay: str) -> str:
        """The ``-netdev`` value; `relay` is a host command reading/writing a TCP peer,
        formatted with ``{port}`` (run once per connection by QEMU)."""
        net = ipaddress.ip_network(self.net)
        parts = [
            "user",
            "id=n0",
            f"net={self.net}",
            f"host={self.host}",
            f"dhcpstart={self.guest}",
            f"dns={net.network_address + 3}",
            "ipv6=off",
            "restrict=on",
        ]
        for port in self.forward_ports:
            cmd = relay.format(port=port)
            if "," in cmd:
                raise ValueError("a guestfwd command cannot contain a comma")
            parts.append(f"guestfwd=tcp:{self.service}:{port}-cmd:{cmd}")
        return ",".join(parts)


def _test_net(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    docs = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
    return any(net.subnet_of(ipaddress.ip_network(d)) for d in docs)  # type: ignore[arg-type]


def kernel_cmdline(*, debug: bool = False) -> str:
    """The guest kernel command line (``panic=-1``: a crash reboots, QEMU then exits)."""
    return " ".join(["console=ttyS0", "panic=-1", "rdinit=/init", *([] if debug else ["quiet"])])


@dataclass(frozen=True)
class BootSpec:
    """Everything QEMU needs for one guest."""

    kernel: str
    initrd: str
    scratch: str
    console_log: str
    accel: str = "tcg"
    memory_mb: int = 1024
    cpus: int = 2
    net: UserNet | None = None
    relay: str = "busybox nc 127.0.0.1 {port}"
    debug: bool = False
    # qboot starts a direct kernel boot ~2 s sooner than SeaBIOS under TCG
    bios: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)


def qemu_argv(spec: BootSpec, qemu: str = "qemu-system-x86_64") -> list[str]:
    """The QEMU command line for `spec`."""
    if spec.accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be kvm or tcg, not {spec.accel}")
    for path in (spec.scratch, spec.console_log):
        if "," in path:
            raise ValueError(f"QEMU options cannot carry a comma in a path: {path}")
    argv = [
        qemu,
        "-no-user-config",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{spec.console_log}",
        "-accel",
        spec.accel,
        # -cpu host is what KVM needs; TCG emulates the richest model it has
        "-cpu",
        "host" if spec.accel == "kvm" else "max",
        "-m",
        str(spec.memory_mb),
        "-smp",
        str(spec.cpus),
        "-kernel",
        spec.kernel,
        "-initrd",
        spec.initrd,
        "-append",
        kernel_cmdline(debug=spec.debug),
        "-virtfs",
        f"local,path=/,mount_tag={HOST_TAG},security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={spec.scratch},mount_tag={SCRATCH_TAG},security_model=none,multidevs=remap",
    ]
    if spec.bios is not None:
        argv += ["-bios", spec.bios]
    if spec.net is not None:
        argv += ["-netdev", spec.net.netdev(spec.relay), "-device", "virtio-net-pci,netdev=n0"]
    return argv + list(spec.extra)


def _kept_mounts(keep: Sequence[str]) -> tuple[str, str]:
    """Shell lines that keep host paths under /tmp or /run visible through their tmpfs.

    The guest mounts fresh tmpfs on /run and /tmp; a repository cloned under /tmp (as CI
    may do) would vanish behind it. Each such path is bind-mounted aside first and moved
    back on top of the new tmpfs.
    """
    hidden = sorted(
        {
            p.rstrip("/")
            for p in keep
            if p.rstrip("/") in ("/tmp", "/run") or p.startswith(("/tmp/", "/run/"))
        }
    )
    outer = [p for p in hidden if not any(p.startswith(q + "/") for q in hidden if q != p)]
    before = "".join(
        f"mkdir -p /mnt/.keep{i}\nmount --bind {shlex.quote(p)} /mnt/.keep{i}\n"
        for i, p in enumerate(outer)
    )
    after = "".join(
        f"mkdir -p {shlex.quote(p)}\nmount --move /mnt/.keep{i} {shlex.quote(p)}\n"
        for i, p in enumerate(outer)
    )
    return before, after


def stage2_script(
    *,
    modules: Sequence[str] = IPSEC_MODULES,
    net: UserNet | None = None,
    keep: Sequence[str] = (),
) -> str:
    """Stage 2, run as PID 1 from the host's root: set up, run ``command.sh``, power off.

    `keep`: host paths (the repository, the working directory) that must stay visible
    even when they live under /tmp or /run, which get a fresh tmpfs in the guest.
    """
    s = GUEST_SCRATCH
    keep_before, keep_after = _kept_mounts(keep)
    modprobe = ""
    if modules:
        # a module that fails to load shows up in the tests that need it, with this log
        modprobe = f"modprobe -a {' '.join(modules)} > {s}/modprobe.log 2>&1\n"
    netup = ""
    if net is not None:
        prefix = ipaddress.ip_network(net.net).prefixlen
        netup = (
            f"modprobe -a {' '.join(NET_MODULES)}\n"
            "ip link set eth0 up\n"
            f"ip addr add {net.guest}/{prefix} dev eth0\n"
        )
    return f"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
{keep_before}mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
{keep_after}echo "start $(cut -d' ' -f1 /proc/uptime)" > {s}/times
{modprobe}ip link set lo up
{netup}hostname routevpn-lab
echo "command $(cut -d' ' -f1 /proc/uptime)" >> {s}/times
sh {s}/command.sh > {s}/output 2>&1 < /dev/null
echo $? > {s}/rc
echo "end $(cut -d' ' -f1 /proc/uptime)" >> {s}/times
sync
echo o > /proc/sysrq-trigger
sleep 5
"""


def command_script(command: Sequence[str] | str, *, cwd: str, env: Mapping[str, str]) -> str:
    """``command.sh``: the environment, the working directory, then the command."""
    lines = ["#!/bin/sh", "set -e"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines += [f"cd {shlex.quote(cwd)}", "set +e"]
    lines.append(command if isinstance(command, str) else shlex.join(command))
    return "\n".join(lines) + "\n"


def parse_times(text: str) -> dict[str, float]:
    """The guest's ``times`` file (``label uptime`` lines) → {label: seconds since boot}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


def cache_key(*parts: str | bytes) -> str:
    """A short digest naming a cached artefact built from `parts`."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]
