"""Go-style durations (`4h`, `1h30m`, `90s`) as the CRD's CEL `duration()` reads them."""

from __future__ import annotations

import re
from typing import Final

_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|m|s)")
_UNIT: Final = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration string; raises ValueError on anything else."""
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration such as 4h, 1h30m or 90s")
    return total


def format_seconds(seconds: int) -> str:
    """The swanctl form of a number of seconds (`3600s`), exact and unit-unambiguous."""
    return f"{int(seconds)}s"
