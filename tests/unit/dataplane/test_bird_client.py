"""The control-socket client against a socket that replays a real BIRD's replies.

The replies are BIRD 2.0.12's own (captured from `birdc`'s socket); the real daemon is
driven in tests/netns/test_bird_netns.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from routevpn.dataplane.bird import (
    BirdClient,
    BirdConfigError,
    BirdUnreachableError,
    parse_reply,
    quoted,
)

HELLO = "0001 BIRD 2.0.12 ready.\n"
REPLIES = {
    'configure check "/run/rv/bird/ok.conf"': (
        "0002-Reading configuration from /run/rv/bird/ok.conf\n0020 Configuration OK\n"
    ),
    'configure "/run/rv/bird/ok.conf"': (
        "0002-Reading configuration from /run/rv/bird/ok.conf\n0003 Reconfigured\n"
    ),
    'configure check "/run/rv/bird/bad.conf"': (
        "0002-Reading configuration from /run/rv/bird/bad.conf\n"
        "8002 /run/rv/bird/bad.conf:2:10 syntax error, unexpected CF_SYM_UNDEFINED\n"
    ),
    'configure "/run/rv/bird/bad.conf"': (
        "0002-Reading configuration from /run/rv/bird/bad.conf\n"
        "8002 /run/rv/bird/bad.conf:2:10 syntax error, unexpected CF_SYM_UNDEFINED\n"
    ),
    'configure "/run/rv/bird/slow.conf"': (
        "0002-Reading configuration from /run/rv/bird/slow.conf\n0004 Reconfiguration in progress\n"
    ),
    "show protocols all": (
        Path(__file__).resolve().parents[2] / "data/bird/show-protocols-all-established.txt"
    ).read_text(),
    "show nonsense": "9001 syntax error, unexpected CF_SYM_UNDEFINED\n",
}


async def serve(path: Path, replies: Mapping[str, str], seen: list[str]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HELLO.encode())
        while line := await reader.readline():
            command = line.decode().rstrip("\n")
            seen.append(command)
            if command == "hang up":
                break
            writer.write(replies[command].encode())
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, str(path))


def run(tmp_path: Path, body: object) -> list[str]:
    seen: list[str] = []

    async def main() -> None:
        server = await serve(tmp_path / "bird.ctl", REPLIES, seen)
        client = BirdClient(tmp_path / "bird.ctl", timeout=5)
        try:
            await body(client)  # type: ignore[operator]
        finally:
            await client.close()
            server.close()

    asyncio.run(main())
    return seen


def test_configure_check_and_configure(tmp_path: Path) -> None:
    async def body(client: BirdClient) -> None:
        await client.configure_check("/run/rv/bird/ok.conf")
        await client.configure("/run/rv/bird/ok.conf")
        # "in progress" is BIRD applying it asynchronously: success
        await client.configure("/run/rv/bird/slow.conf")

    seen = run(tmp_path, body)
    assert seen == [
        'configure check "/run/rv/bird/ok.conf"',
        'configure "/run/rv/bird/ok.conf"',
        'configure "/run/rv/bird/slow.conf"',
    ]


def test_refused_configuration_carries_birds_message(tmp_path: Path) -> None:
    async def body(client: BirdClient) -> None:
        with pytest.raises(BirdConfigError) as check:
            await client.configure_check("/run/rv/bird/bad.conf")
        assert check.value.code == 8002
        assert check.value.message.endswith(
            "bad.conf:2:10 syntax error, unexpected CF_SYM_UNDEFINED"
        )
        with pytest.raises(BirdConfigError):
            await client.configure("/run/rv/bird/bad.conf")
        # a command BIRD can't parse is an error reply, not an exception of the socket
        reply = await client.command("show nonsense")
        assert reply.error and reply.code == 9001

    run(tmp_path, body)


def test_protocols_parsed_from_the_reply(tmp_path: Path) -> None:
    got: list[str] = []

    async def body(client: BirdClient) -> None:
        got.extend(f"{s.protocol}:{s.bgp_state}:{s.accepted}" for s in await client.protocols())

    run(tmp_path, body)
    assert got == ["t_a4:Established:2", "t_a6:Established:1"]


def test_reconnects_once_after_the_daemon_hung_up(tmp_path: Path) -> None:
    async def body(client: BirdClient) -> None:
        with pytest.raises(BirdUnreachableError):
            # the fake closes without a reply, on both attempts
            await client.command("hang up")
        await client.configure("/run/rv/bird/ok.conf")

    seen = run(tmp_path, body)
    assert seen == ["hang up", "hang up", 'configure "/run/rv/bird/ok.conf"']


def test_no_socket_is_unreachable(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(BirdUnreachableError, match="control socket"):
            await BirdClient(tmp_path / "none.ctl", timeout=1).protocols()

    asyncio.run(main())


@pytest.mark.parametrize("bad", ['/a"b', "/a\\b", "/a\nb", ""])
def test_paths_that_could_inject_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        quoted(bad)


def test_reply_framing() -> None:
    reply = parse_reply("1002-a\n b\n1006-  c\n   d\n0000 \n")
    assert [(line.code, line.text) for line in reply.lines] == [
        (1002, "a"),
        (1002, "b"),
        (1006, "  c"),
        (1006, "  d"),
        (0, ""),
    ]
    with pytest.raises(BirdUnreachableError):
        parse_reply("1002-a\n")
    with pytest.raises(BirdUnreachableError):
        parse_reply("hello\n")
