"""Test outcomes carried out of the lab guest, keyed by exact pytest node id.

Inside the guest, each test report becomes one JSON line (``encode``); on the host
the lines fold into one outcome per node id (``fold``). Node ids travel verbatim, so
parametrised ids, classes and nested directories map back without the guesswork a
JUnit ``classname`` would need.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

PASSED, FAILED, ERROR, SKIPPED, XFAILED = "passed", "failed", "error", "skipped", "xfailed"


@dataclass(frozen=True)
class Outcome:
    """What happened to one test in the guest."""

    status: str  # passed · failed · error (setup/teardown) · skipped · xfailed
    text: str  # failure text with captured output, or the skip / xfail reason
    duration: float


def encode(
    *,
    nodeid: str,
    when: str,
    outcome: str,
    longrepr: Any,
    longreprtext: str,
    duration: float,
    wasxfail: str | None,
    sections: Iterable[tuple[str, str]],
) -> str:
    """One JSON line for a pytest ``TestReport`` (fields passed in, so this stays pure)."""
    if outcome == SKIPPED and isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])  # (file, line, reason): the reason is what people read
    else:
        text = longreprtext
    if outcome == FAILED:
        text += "".join(f"\n----- {title} -----\n{body}" for title, body in sections)
    elif outcome == PASSED and when == "call":
        # what a passing test printed (its figures), for the host's `-rP`
        text = "".join(body for title, body in sections if title == "Captured stdout call")
    rec = {
        "nodeid": nodeid,
        "when": when,
        "outcome": outcome,
        "text": text,
        "duration": duration,
        "wasxfail": wasxfail,
    }
    return json.dumps(rec)


def fold(lines: Iterable[str]) -> dict[str, Outcome]:
    """Fold JSON lines (setup / call / teardown reports) into one outcome per node id.

    A failure in any phase wins (setup or teardown failures are errors), then a skip
    or expected failure; otherwise passed. Unparseable lines (a guest killed mid-write)
    are ignored.
    """
    phases: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "nodeid" in rec:
            phases.setdefault(str(rec["nodeid"]), []).append(rec)
    out: dict[str, Outcome] = {}
    for nodeid, recs in phases.items():
        duration = sum(float(r.get("duration", 0.0)) for r in recs)
        failed = [r for r in recs if r["outcome"] == FAILED]
        skipped = [r for r in recs if r["outcome"] == SKIPPED]
        if failed:
            first = failed[0]
            status = FAILED if first["when"] == "call" else ERROR
            text = "\n".join(
                f"[{r['when']}] {r['text']}" if r["when"] != "call" else r["text"] for r in failed
            )
            out[nodeid] = Outcome(status, text, duration)
        elif skipped:
            r = skipped[0]
            if r.get("wasxfail") is not None:
                out[nodeid] = Outcome(XFAILED, str(r["wasxfail"]), duration)
            else:
                out[nodeid] = Outcome(SKIPPED, str(r["text"]), duration)
        elif any(r["when"] == "call" for r in recs):
            printed = "".join(str(r.get("text") or "") for r in recs if r["when"] == "call")
            out[nodeid] = Outcome(PASSED, printed, duration)
        # setup passed but no call report: the guest died mid-test; leave it unreported
    return out
