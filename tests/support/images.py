"""The project's images as ``hack/images.sh build`` leaves them: OCI archives.

``archive(name)`` is an archive's path (None: not built). ``opened(name)`` imports that
archive into the script's own buildah storage as a working container and mounts its
root filesystem, for a test to look into and to run commands in (``chroot``, as the image's
user); everything is unmounted and removed afterwards. Nothing comes from a registry.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "images.sh"
NAMES = ("routevpn", "charon", "pause")


def _script(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def unavailable() -> str | None:
    """What is missing to use the images here, or None."""
    if shutil.which("buildah") is None:
        return "buildah (apt-get install buildah; hack/setup.sh does)"
    for name in NAMES:
        if archive(name) is None:
            return f"the {name} image archive (run: hack/images.sh build)"
    return None


def archive(name: str) -> Path | None:
    """The OCI archive of `name`, or None when it is not built."""
    res = _script("path", name)
    return Path(res.stdout.strip()) if res.returncode == 0 else None


def ref(name: str) -> str:
    """The image reference `name` carries (what a pod spec resolves to)."""
    return _script("ref", name).stdout.strip()


def buildah(*args: str, timeout: float = 300.0) -> str:
    """Run buildah on hack/images.sh's storage; its stdout."""
    res = _script("buildah", *args, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


@dataclass(frozen=True)
class OpenedImage:
    """A working container of one archive, its root filesystem mounted at `rootfs`."""

    name: str
    container: str
    rootfs: Path
    config: dict[str, Any]  # the OCI image configuration (`config` of the image JSON)

    @property
    def user(self) -> str:
        """The image's USER ("" means root)."""
        return str(self.config.get("User", ""))

    @property
    def env(self) -> dict[str, str]:
        """The image's ENV as a dict."""
        return dict(e.split("=", 1) for e in self.config.get("Env", []))

    def run(
        self, argv: Sequence[str], *, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` chrooted in the image as its USER with its ENV (no new namespaces:
        only for commands that touch no network)."""
        user = self.user or "0:0"
        uid, _, gid = user.partition(":")
        return subprocess.run(
            ["chroot", f"--userspec={uid}:{gid or uid}", str(self.rootfs), *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@contextlib.contextmanager
def opened(name: str) -> Iterator[OpenedImage]:
    """`name`'s archive as a mounted working container, removed afterwards."""
    path = archive(name)
    if path is None:
        raise FileNotFoundError(f"{name}: no archive (hack/images.sh build)")
    container = buildah("from", "--pull-never", "--quiet", f"oci-archive:{path}").strip()
    try:
        rootfs = Path(buildah("mount", container).strip())
        info = json.loads(buildah("inspect", "--type", "container", container))
        config = info.get("OCIv1", {}).get("config", {}) or {}
        yield OpenedImage(name=name, container=container, rootfs=rootfs, config=config)
    finally:
        with contextlib.suppress(RuntimeError):
            buildah("umount", container)
        with contextlib.suppress(RuntimeError):
            buildah("rm", container)


def tree_size(root: Path) -> int:
    """Bytes of the regular files under `root` (hard links once): an image's unpacked size."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in root.rglob("*"):
        with contextlib.suppress(OSError):
            st = p.lstat()
            if p.is_file() and not p.is_symlink() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total
