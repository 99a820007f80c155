"""An asyncio client of BIRD 2's control socket (what `birdc` speaks), no subprocess.

The protocol is line based. BIRD greets with ``0001 BIRD 2.0.12 ready.``; every reply is
one or more lines ``NNNN-text`` (more follows) ending with one ``NNNN text``, and a line
that starts with a space continues the text of the code before it. Codes 0xxx report
success, 1xxx table rows, 2xxx table headings, 8xxx run-time errors (a configuration
that doesn't parse is ``8002 file:line:col message``) and 9xxx errors parsing the command
itself. Codes that matter here (BIRD's doc/reply_codes): 0002 "Reading configuration",
0003 "Reconfigured", 0004 "Reconfiguration in progress", 0005 "... already in progress,
queueing", 0006 "Reconfiguration ignored, shutting down", 0018 "Reconfiguration
confirmed", 0020 "Configuration OK", 1002 a protocol row, 1006 a protocol's details.

One connection, commands serialized by a lock (BIRD answers one command at a time), a
reconnect when BIRD went away (its container restarted), and typed errors: the agent
reports `BirdUnreachableError` as `DaemonUnreachable` and `BirdConfigError` with BIRD's
own message; a rejected configuration leaves the old one running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from routevpn.dataplane.bird_facts import BgpSessionFacts, parse_protocols

log = logging.getLogger(__name__)

#: Replies to `configure` that mean the new configuration is (being) applied.
CONFIGURED: Final = frozenset({3, 4, 5, 18})
#: The reply to `configure check` when the file parses and validates.
CONFIG_OK: Final = 20
#: A reply line longer than this is not BIRD's (its own limit is far lower).
MAX_LINE: Final = 1 << 16


class BirdError(Exception):
    """Something about BIRD failed; the message is BIRD's or says why it is unreachable."""


class BirdUnreachableError(BirdError):
    """The control socket can't be reached, or it closed or hung mid-reply."""


class BirdCommandError(BirdError):
    """BIRD answered a command with an error code (8xxx, 9xxx) or an unexpected one."""

    def __init__(self, command: str, code: int, message: str) -> None:
        super().__init__(f"BIRD refused {command!r}: {code:04d} {message}")
        self.code = code
        self.message = message


class BirdConfigError(BirdCommandError):
    """A configuration BIRD refused (`message` is BIRD's, e.g. ``file:3:7 syntax error``)."""


@dataclass(frozen=True, slots=True)
class ReplyLine:
    """One line of a reply, its code carried onto continuation lines."""

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole reply: its lines, the last one's code deciding success."""

    lines: tuple[ReplyLine, ...]

    @property
    def code(self) -> int:
        """The final line's code."""
        return self.lines[-1].code

    @property
    def error(self) -> bool:
        """True for BIRD's run-time (8xxx) and parse (9xxx) errors."""
        return self.code >= 8000

    @property
    def message(self) -> str:
        """The final line's text (the error, or the verdict such as "Reconfigured")."""
        return self.lines[-1].text


def parse_line(raw: str, previous: int | None) -> tuple[ReplyLine, bool]:
    """One reply line and whether it ends the reply; `previous` is the code before it."""
    if raw.startswith(" "):
        if previous is None:
            raise BirdUnreachableError(f"continuation line before any code: {raw[:80]!r}")
        return ReplyLine(previous, raw[1:]), False
    head, sep = raw[:4], raw[4:5]
    if len(raw) < 4 or not head.isdigit() or sep not in ("", " ", "-"):
        raise BirdUnreachableError(f"not a BIRD reply line: {raw[:80]!r}")
    return ReplyLine(int(head), raw[5:]), sep != "-"


def parse_reply(text: str) -> Reply:
    """A complete reply from its text (for tests and captured transcripts)."""
    lines: list[ReplyLine] = []
    for raw in text.splitlines():
        line, last = parse_line(raw, lines[-1].code if lines else None)
        lines.append(line)
        if last:
            return Reply(tuple(lines))
    raise BirdUnreachableError("reply ended without a final line")


def quoted(path: Path | str) -> str:
    """`path` as a BIRD string literal: no quote, backslash or newline can reach BIRD."""
    text = str(path)
    if any(c in text for c in '"\\\n\r') or not text:
        raise ValueError(f"path {text!r} can't be passed to BIRD")
    return f'"{text}"'


class BirdClient:
    """Commands to one BIRD over its control socket at `path`."""

    def __init__(self, path: Path | str, timeout: float = 10.0) -> None:
        self.path = str(path)
        #: seconds for connecting and for each reply (a reconfigure answers at once; a
        #: large `show protocols all` takes milliseconds)
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def close(self) -> None:
        """Drop the connection (the next command reconnects)."""
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(OSError, ConnectionError):
                await conn[1].wait_closed()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE)
                hello = await self._read(reader)
        except (OSError, TimeoutError) as e:
            raise BirdUnreachableError(f"BIRD control socket {self.path}: {e!r}") from e
        if hello.code != 1:
            writer.close()
            raise BirdUnreachableError(f"BIRD greeted with {hello.code:04d} {hello.message}")
        return reader, writer

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Reply:
        lines: list[ReplyLine] = []
        while True:
            raw = await reader.readline()
            if not raw.endswith(b"\n"):
                raise BirdUnreachableError("BIRD closed the control connection mid-reply")
            line, last = parse_line(
                raw.decode(errors="replace").rstrip("\n"), lines[-1].code if lines else None
            )
            lines.append(line)
            if last:
                return Reply(tuple(lines))

    async def command(self, command: str) -> Reply:
        """Send one command line and return BIRD's reply (errors included: see `Reply`).

        A connection that fails is dropped and the command tried once more on a new one,
        as when BIRD restarted since the last command; a second failure raises
        `BirdUnreachableError`.
        """
        if "\n" in command or "\r" in command:
            raise ValueError("a BIRD command is one line")
        async with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None:
                        self._conn = await self._connect()
                    reader, writer = self._conn
                    writer.write(command.encode() + b"\n")
                    async with asyncio.timeout(self.timeout):
                        await writer.drain()
                        return await self._read(reader)
                except (OSError, TimeoutError, BirdUnreachableError) as e:
                    await self._drop()
                    if attempt == 2:
                        if isinstance(e, BirdUnreachableError):
                            raise
                        raise BirdUnreachableError(f"BIRD at {self.path}: {e!r}") from e
            raise AssertionError("unreachable")

    async def configure_check(self, path: Path | str) -> None:
        """Have BIRD parse and validate `path` without applying it; raise on any error."""
        command = f"configure check {quoted(path)}"
        reply = await self.command(command)
        if reply.code != CONFIG_OK:
            raise BirdConfigError(command, reply.code, reply.message)

    async def configure(self, path: Path | str) -> None:
        """Apply `path` (BIRD keeps running the old configuration when it refuses it).

        Sessions whose protocol text is unchanged keep running; changed ones restart.
        """
        command = f"configure {quoted(path)}"
        reply = await self.command(command)
        if reply.code not in CONFIGURED:
            raise BirdConfigError(command, reply.code, reply.message)
        log.info("BIRD: %s (%s)", reply.message, path)

    async def protocols(self) -> list[BgpSessionFacts]:
        """BIRD's BGP sessions as `show protocols all` reports them."""
        command = "show protocols all"
        reply = await self.command(command)
        if reply.error:
            raise BirdCommandError(command, reply.code, reply.message)
        return parse_protocols([(line.code, line.text) for line in reply.lines])
