"""The config writer: atomic file, BIRD's check before the rename, no reconfigure when unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from routevpn.dataplane.bird import BirdConfigError
from routevpn.dataplane.bird_writer import BirdConfigWriter, write_atomically


def read(path: Path | str) -> str:
    return Path(path).read_text()


class FakeBird:
    """Records commands; refuses any file whose text holds "bad"."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.running = ""

    async def configure_check(self, path: Path | str) -> None:
        text = read(path)
        self.calls.append(("check", Path(path).name))
        if "bad" in text:
            raise BirdConfigError(f'configure check "{path}"', 8002, f"{path}:1:1 syntax error")

    async def configure(self, path: Path | str) -> None:
        self.calls.append(("configure", Path(path).name))
        self.running = read(path)


def test_writes_checks_then_applies_and_skips_the_same_text(tmp_path: Path) -> None:
    bird = FakeBird()
    writer = BirdConfigWriter(tmp_path, bird)
    assert asyncio.run(writer.apply("router id 192.0.2.1;\n")) is True
    assert bird.calls == [("check", "bird.conf.next"), ("configure", "bird.conf")]
    assert bird.running == (tmp_path / "bird.conf").read_text() == "router id 192.0.2.1;\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.conf"]
    bird.calls.clear()
    assert asyncio.run(writer.apply("router id 192.0.2.1;\n")) is False
    assert bird.calls == []


def test_a_refused_text_leaves_the_old_file_and_config(tmp_path: Path) -> None:
    bird = FakeBird()
    writer = BirdConfigWriter(tmp_path, bird)
    asyncio.run(writer.apply("good\n"))
    with pytest.raises(BirdConfigError, match="syntax error"):
        asyncio.run(writer.apply("bad\n"))
    assert (tmp_path / "bird.conf").read_text() == "good\n" == bird.running
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bird.conf"]
    # the refused text is tried again next pass (not remembered as applied)
    bird.calls.clear()
    with pytest.raises(BirdConfigError):
        asyncio.run(writer.apply("bad\n"))
    assert bird.calls == [("check", "bird.conf.next")]


def test_a_new_agent_applies_once_what_is_on_disk(tmp_path: Path) -> None:
    (tmp_path / "bird.conf").write_text("same\n")
    bird = FakeBird()
    writer = BirdConfigWriter(tmp_path, bird)
    assert asyncio.run(writer.apply("same\n")) is True
    # the file already holds the text: no rewrite, no check, one configure
    assert bird.calls == [("configure", "bird.conf")]
    assert asyncio.run(writer.apply("same\n")) is False


def test_write_atomically_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomically(target, "one")
    write_atomically(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
