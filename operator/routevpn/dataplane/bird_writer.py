"""The node's bird.conf: written atomically, checked by BIRD, applied only when it changed.

The agent renders the whole configuration every pass (`bird_config.render`); this writes
it to ``<dir>/bird.conf`` and has BIRD load it. The order keeps a good configuration on
disk and running at every moment:

1. the text goes to ``bird.conf.next`` (a temporary file, fsynced, renamed: never half
   written) and BIRD checks it (``configure check``): a refused text is removed again
   and raises `BirdConfigError` with BIRD's message; BIRD keeps its running one;
2. only then it is renamed over ``bird.conf`` (so a BIRD that restarts reads the last
   configuration it accepted) and BIRD loads it (``configure``).

A pass with the same text as the last one BIRD accepted writes and asks nothing. The first
pass of an agent always applies once (BIRD may hold an older configuration than the file,
when the agent died between rename and configure); an unchanged protocol is not restarted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Final, Protocol

log = logging.getLogger(__name__)

CONFIG_NAME: Final = "bird.conf"
CANDIDATE_NAME: Final = "bird.conf.next"


class Configurable(Protocol):
    """What the writer needs of `BirdClient`."""

    async def configure_check(self, path: Path | str) -> None:
        """Raise unless BIRD accepts the file at `path`."""
        ...

    async def configure(self, path: Path | str) -> None:
        """Apply the file at `path`."""
        ...


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`: temporary file in the same directory, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # the rename itself is durable only once the directory is synced
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BirdConfigWriter:
    """Keeps BIRD's configuration in `directory` equal to the rendered text."""

    def __init__(self, directory: Path, bird: Configurable) -> None:
        self.directory = directory
        self.bird = bird
        #: the text BIRD last accepted from this writer (None: not yet in this process)
        self.applied: str | None = None

    @property
    def path(self) -> Path:
        """The configuration file BIRD runs (and reads when it restarts)."""
        return self.directory / CONFIG_NAME

    async def apply(self, text: str) -> bool:
        """Make BIRD run `text`; True when BIRD was reconfigured, False when nothing changed.

        Raises `BirdConfigError` (BIRD refused the text; the previous configuration stays
        on disk and running) or `BirdUnreachableError`.
        """
        if text == self.applied:
            return False
        candidate = self.directory / CANDIDATE_NAME
        if self._on_disk() != text:
            write_atomically(candidate, text)
            try:
                await self.bird.configure_check(candidate)
            except BaseException:
                with contextlib.suppress(OSError):
                    candidate.unlink()
                raise
            candidate.replace(self.path)
            _fsync_dir(self.directory)
        await self.bird.configure(self.path)
        self.applied = text
        log.info("BIRD runs the new configuration (%d bytes)", len(text.encode()))
        return True

    def _on_disk(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def forget(self) -> None:
        """Apply at the next call even if the text is the same (BIRD restarted)."""
        self.applied = None
