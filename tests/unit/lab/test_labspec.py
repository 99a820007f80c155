"""The lab harness's pure parts: module order, boot scripts, QEMU argv, user networking."""

from __future__ import annotations

import pytest

from support import labspec as spec

MODULES_DEP = """\
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko \
    kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko:
"""


def test_load_order_puts_every_dependency_first_once() -> None:
    order = spec.load_order(["9pnet_virtio", "9p", "overlay"], MODULES_DEP)
    names = [spec.module_name(p) for p in order]
    assert sorted(names) == sorted(set(names))  # nothing twice
    for mod, needs in (
        ("9p", ["9pnet", "fscache", "netfs"]),
        ("fscache", ["netfs"]),
        ("9pnet_virtio", ["9pnet", "virtio", "virtio_ring"]),
    ):
        assert all(names.index(n) < names.index(mod) for n in needs), (mod, names)
    assert names[-1] == "overlay"


def test_load_order_rejects_unknown_module() -> None:
    with pytest.raises(KeyError):
        spec.load_order(["no_such_module"], MODULES_DEP)


def test_pinned_kernel_comes_from_apt_packages() -> None:
    assert (
        spec.pinned_kernel("# x\nbusybox-static\nlinux-image-6.1.0-99-amd64\n") == "6.1.0-99-amd64"
    )
    assert spec.pinned_kernel("cpio\n") == spec.DEFAULT_KERNEL


def test_stage1_mounts_host_read_only_under_overlay_and_scratch_writable() -> None:
    init = spec.stage1_init(["kernel/fs/9p/9p.ko"])
    assert "insmod /modules/9p.ko" in init
    host = next(line for line in init.splitlines() if f" {spec.HOST_TAG} /host" in line)
    assert ",ro," in host
    scratch = next(line for line in init.splitlines() if f" {spec.SCRATCH_TAG} " in line)
    assert ",ro" not in scratch
    assert "lowerdir=/host,upperdir=/rw/upper" in init
    assert init.rstrip().endswith(f"{spec.GUEST_SCRATCH}/stage2.sh")


def test_stage2_loads_ipsec_modules_and_always_powers_off() -> None:
    text = spec.stage2_script()
    assert "modprobe -a ip_vti ip6_vti xfrm_interface esp4 esp6" in text
    assert "eth0" not in text  # no network unless asked for
    lines = text.splitlines()
    run = next(i for i, line in enumerate(lines) if "command.sh" in line)
    assert lines.index("echo o > /proc/sysrq-trigger") > run
    assert f"echo $? > {spec.GUEST_SCRATCH}/rc" in text


def test_stage2_with_user_network_configures_test_net_address() -> None:
    text = spec.stage2_script(net=spec.UserNet())
    assert "ip addr add 192.0.2.15/24 dev eth0" in text


def test_user_net_refuses_qemu_default_and_private_ranges() -> None:
    for bad in ("10.0.2.0/24", "192.168.76.0/24", "172.16.0.0/24"):
        with pytest.raises(ValueError):
            spec.UserNet(net=bad, host="192.0.2.2", guest="192.0.2.15")
    with pytest.raises(ValueError):
        spec.UserNet(host="198.51.100.2")  # not inside the network


def test_user_net_is_isolated_and_forwards_only_named_ports() -> None:
    netdev = spec.UserNet(forward_ports=(6443,)).netdev("nc 127.0.0.1 {port}")
    parts = netdev.split(",")
    assert "restrict=on" in parts and "ipv6=off" in parts and "net=192.0.2.0/24" in parts
    assert "guestfwd=tcp:192.0.2.100:6443-cmd:nc 127.0.0.1 6443" in parts
    assert "10.0.2" not in netdev
    with pytest.raises(ValueError):
        spec.UserNet(forward_ports=(1,)).netdev("relay a,b {port}")


def test_qemu_argv_kvm_and_tcg() -> None:
    base = spec.BootSpec(kernel="/k", initrd="/i", scratch="/s", console_log="/s/c")
    tcg = spec.qemu_argv(base)
    assert tcg[tcg.index("-accel") + 1] == "tcg" and tcg[tcg.index("-cpu") + 1] == "max"
    assert "-netdev" not in tcg
    ro = [a for a in tcg if a.startswith("local,path=/,")]
    assert ro and "readonly=on" in ro[0]
    kvm = spec.qemu_argv(
        spec.BootSpec(
            kernel="/k",
            initrd="/i",
            scratch="/s",
            console_log="/s/c",
            accel="kvm",
            net=spec.UserNet(),
        )
    )
    assert kvm[kvm.index("-cpu") + 1] == "host"
    assert "virtio-net-pci,netdev=n0" in kvm
    assert "panic=-1" in kvm[kvm.index("-append") + 1]
    with pytest.raises(ValueError):
        spec.qemu_argv(spec.BootSpec(kernel="/k", initrd="/i", scratch="/a,b", console_log="/c"))
    with pytest.raises(ValueError):
        spec.qemu_argv(
            spec.BootSpec(kernel="/k", initrd="/i", scratch="/s", console_log="/c", accel="hvf")
        )


def test_command_script_quotes_environment_and_command() -> None:
    text = spec.command_script(["python", "-c", "print('a b')"], cwd="/repo dir", env={"X": "it's"})
    assert "export X='it'\"'\"'s'" in text
    assert "cd '/repo dir'" in text
    assert text.rstrip().endswith("python -c 'print('\"'\"'a b'\"'\"')'")


def test_parse_times_and_cache_key() -> None:
    assert spec.parse_times("start 1.5\ncommand 2.25\nbroken\nend x\n") == {
        "start": 1.5,
        "command": 2.25,
    }
    assert spec.cache_key("a", b"b") == spec.cache_key("a", b"b") != spec.cache_key("ab")


def test_stage2_keeps_a_repository_under_tmp_visible() -> None:
    text = spec.stage2_script(keep=("/tmp/ci/repo", "/tmp/ci/repo/tests", "/srv/src/routevpn"))
    lines = text.splitlines()
    bind = lines.index("mount --bind /tmp/ci/repo /mnt/.keep0")
    tmpfs = lines.index("mount -t tmpfs tmpfs /tmp")
    move = lines.index("mount --move /mnt/.keep0 /tmp/ci/repo")
    assert bind < tmpfs < move
    assert "/srv/src/routevpn" not in text  # not hidden by any tmpfs: nothing to do
    assert text.count("mount --bind") == 1  # the nested path rides along with its parent
