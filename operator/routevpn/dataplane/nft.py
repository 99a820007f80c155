"""The nftables adapter: routevpn's own table (`table inet routevpn`), read and replaced.

Through the `nft` command rather than pyroute2's nftables module, which builds rules
expression by expression in raw netlink (a `tcp option maxseg` mangle and the batch
that replaces a table atomically would be ours to write and get right): the rule set
is a handful of lines replaced as a whole, which `nft -f` does in one netlink batch
(the kernel takes all of it or none), and its text is what an operator reads with
`nft list table inet routevpn`. The script goes in on stdin; nothing else is ever listed or
changed: the listing is of our table only, and `render` names only it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping

from routevpn.dataplane import mss
from routevpn.dataplane.errors import DataplaneError
from routevpn.dataplane.facts import Change

log = logging.getLogger(__name__)

#: What changes and errors of the table are about (the node's, not one tunnel's).
REF = "node"
# nft answers in milliseconds; a wedged one must not hold up a pass for long.
TIMEOUT_S = 20.0


class NftError(DataplaneError):
    """`nft` failed or is missing (the clamp is then not in place)."""

    reason = "NftablesFailed"

    def __init__(self, message: str) -> None:
        Exception.__init__(self, f"nftables: {message}")
        self.ref, self.message = REF, message


class NftAdapter:
    """Reads and replaces routevpn's nftables table in this network namespace."""

    def __init__(self, nft: str = "nft") -> None:
        self.nft = nft

    async def _run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.nft,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise NftError(f"cannot run {self.nft}: {e.strerror}") from e
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), TIMEOUT_S
            )
        except TimeoutError as e:
            proc.kill()
            await proc.wait()
            raise NftError(f"{self.nft} did not answer in {TIMEOUT_S:.0f}s") from e
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def observe(self) -> frozenset[mss.ClampRule] | None:
        """The rules of routevpn's table, None when there is no such table."""
        code, out, err = await self._run("-j", "list", "table", mss.FAMILY, mss.TABLE)
        if code != 0:
            if "No such file or directory" in err:
                return None
            raise NftError(f"listing table {mss.FAMILY} {mss.TABLE}: {err.strip()[:200]}")
        try:
            return mss.parse(json.loads(out))
        except (ValueError, AttributeError, TypeError):
            return mss.FOREIGN_SHAPE

    async def sync(self, links: Mapping[str, int]) -> list[Change]:
        """Make routevpn's table clamp exactly `links` (interface → MTU); no table for none."""
        want = mss.rules_for(links)
        have = await self.observe()
        if (have is None and not want) or (want and have == want):
            return []  # an empty table left behind is deleted, not kept as "equal"
        code, _, err = await self._run("-f", "-", stdin=mss.render(want))
        if code != 0:
            raise NftError(f"replacing table {mss.FAMILY} {mss.TABLE}: {err.strip()[:200]}")
        if not want:
            return [Change(REF, "nft", "deleted", f"table {mss.FAMILY} {mss.TABLE}")]
        names = ",".join(sorted(links))
        return [Change(REF, "nft", "replaced", f"MSS clamp on {names}")]
