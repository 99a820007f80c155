"""The images a node runs, as ``hack/images.sh build`` made them (OCI archives).

Each test opens the archive (not the build's storage: the archive is what a node
imports) and looks inside or runs the image's own programs chrooted in it. charon runs in
a network namespace of its own, in a private mount namespace: nothing reaches the
host's network or mounts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support import images
from support.kube import wait_until
from support.netns import have_root, netns
from support.tiers import missing


@pytest.fixture(scope="module")
def parts() -> None:
    if not have_root():
        missing("root (buildah storage, chroot, network namespaces)")
    why = images.unavailable()
    if why is not None:
        missing(why)


@pytest.fixture(scope="module")
def app(parts: None) -> Iterator[images.OpenedImage]:
    with images.opened("routevpn") as img:
        yield img


@pytest.fixture(scope="module")
def charon(parts: None) -> Iterator[images.OpenedImage]:
    with images.opened("charon") as img:
        yield img


def test_routevpn_runs_its_commands(app: images.OpenedImage) -> None:
    version = app.run(["routevpn", "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("routevpn "), version.stdout
    agent = app.run(["routevpn", "agent", "--help"])
    assert agent.returncode == 0, agent.stderr
    assert "--node-name" in agent.stdout or "node" in agent.stdout.lower()
    operator = app.run(["routevpn", "operator", "--help"])
    assert operator.returncode == 0, operator.stderr


def test_routevpn_image_runs_as_non_root(app: images.OpenedImage) -> None:
    assert app.user == "65532:65532"
    who = app.run(["python3", "-c", "import os; print(os.getuid(), os.getgid())"])
    assert who.stdout.split() == ["65532", "65532"], who.stderr
    assert app.config.get("Entrypoint") == ["routevpn"]


# What a build leaves behind if its stages leak: compilers, pip (Debian's or the
# virtualenv's), the build context and wheels, and the build-only pip/CA mounts.
LEFTOVERS = (
    "usr/bin/gcc",
    "usr/bin/cc",
    "usr/bin/x86_64-linux-gnu-gcc-12",
    "usr/bin/make",
    "usr/bin/pip",
    "usr/bin/pip3",
    "usr/lib/python3/dist-packages/pip",
    "opt/routevpn/bin/pip",
    "opt/routevpn/bin/pip3",
    "src",
    "wheels",
    "pyproject.toml",
    "Dockerfile",
    "etc/pip.conf",
    "root/.config/pip",
    "root/host-ca.crt",
    "run/host-ca.crt",
)


@pytest.mark.parametrize("name", ["app", "charon"])
def test_no_compiler_pip_or_build_file(name: str, request: pytest.FixtureRequest) -> None:
    img: images.OpenedImage = request.getfixturevalue(name)
    left = [p for p in LEFTOVERS if (img.rootfs / p).exists() or (img.rootfs / p).is_symlink()]
    site = list((img.rootfs / "opt" / "routevpn").glob("lib/python3*/site-packages/pip"))
    assert not left and not site, f"{img.name}: left in the image: {left + [str(s) for s in site]}"
    for d in ("usr/share/doc", "usr/share/man"):
        docs = [p for p in (img.rootfs / d).rglob("*") if p.is_file() and p.name != "copyright"]
        assert not docs[:1], f"{img.name}: documentation left in {d}: {docs[:3]}"


def test_charon_starts_with_the_shipped_config(charon: images.OpenedImage) -> None:
    conf = charon.env.get("STRONGSWAN_CONF", "")
    assert conf == "/etc/routevpn/charon/strongswan.conf"
    shipped = Path(__file__).resolve().parents[2] / "images" / "charon" / "strongswan.conf"
    assert (charon.rootfs / conf.lstrip("/")).read_text() == shipped.read_text()
    assert charon.config.get("Entrypoint") == ["/usr/lib/ipsec/charon"]
    root = str(charon.rootfs)
    # A private mount namespace: /proc, /dev and a fresh /run (the VICI socket's
    # directory, charon's PID file) exist only for this charon.
    script = (
        f"mount --make-rprivate / && mount -t proc proc {root}/proc"
        f" && mount --rbind /dev {root}/dev && mount -t tmpfs tmpfs {root}/run"
        f" && mkdir -p {root}/run/routevpn"
        f" && exec chroot {root} /usr/lib/ipsec/charon"
    )
    with netns("rvimg") as ns:
        log = charon.rootfs.parent / "charon-test.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                ns.argv("unshare", "--mount", "sh", "-c", script),
                env=charon.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:

            def loaded() -> str | None:
                text = log.read_text(errors="replace")
                if proc.poll() is not None:
                    raise AssertionError(f"charon exited {proc.returncode}:\n{text}")
                return text if "loaded plugins:" in text and "spawning" in text else None

            text = wait_until(loaded, timeout=30, interval=0.2, what="charon started")
            plugins = text.split("loaded plugins:", 1)[1].splitlines()[0].split()
            for want in ("openssl", "vici", "kernel-netlink"):
                assert want in plugins, f"{want} not loaded: {plugins}"
            assert "failed to load" not in text, text
            # the VICI socket answers where the agent expects it
            sock = f"/proc/{proc.pid}/root/run/routevpn/charon.vici"
            wait_until(lambda: Path(sock).exists() or None, timeout=10, what="VICI socket created")
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)
            log.unlink(missing_ok=True)


def test_pause_image_is_the_static_binary(parts: None) -> None:
    with images.opened("pause") as img:
        assert img.config.get("Entrypoint") == ["/pause"]
        assert img.user == "65535:65535"
        files = [p.relative_to(img.rootfs) for p in img.rootfs.rglob("*") if p.is_file()]
        assert files == [Path("pause")], files
        res = img.run(["/pause", "-v"])
        assert res.returncode == 0 and "pause.c" in res.stdout + res.stderr, res


def test_image_sizes_are_reported(
    parts: None, record_property: Callable[[str, object], None]
) -> None:
    """Unpacked sizes (the figure a node pays in disk), kept in the test report."""
    sizes = {}
    for name in ("routevpn", "charon"):
        with images.opened(name) as img:
            sizes[name] = images.tree_size(img.rootfs)
        record_property(f"{name}_bytes", sizes[name])
    # Measured: ~340 MB (of which the kubernetes client's generated models are 128 MB)
    # and ~140 MB. A stray toolchain or a second copy of the dependencies would show here.
    assert 50e6 < sizes["routevpn"] < 400e6, sizes
    assert 30e6 < sizes["charon"] < 200e6, sizes
