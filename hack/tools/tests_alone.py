"""Run every test of the given files alone (`pytest FILE::TEST`, one process each).

A test that passes only after an earlier test made its state fails here. Usage:

    python hack/tools/tests_alone.py [--report OUT.tsv] [-k EXPR] [--one-per-function] FILE...

One line per test: `outcome seconds id` (outcome: passed, failed, skipped, error); the
report (tab-separated) and the failures' last lines go to stdout as they finish. The exit
status is 1 when any test did not pass or skip alone. Slow: every run starts its own
fixtures (a cluster test its own control plane, ~15 s).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUTCOMES = ("passed", "skipped", "failed", "error")


def collect(files: list[str], keyword: str | None) -> list[str]:
    """The node ids pytest collects from `files` (with `-k keyword`, those it selects)."""
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", *files]
    if keyword:
        argv += ["-k", keyword]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if "::" in line and " " not in line]


def outcome(rc: int, tail: str) -> str:
    """The one word for a run: pytest's exit code and summary line say it."""
    if rc == 0:
        return "skipped" if " skipped" in tail and " passed" not in tail else "passed"
    return "error" if " error" in tail else "failed"


def run_one(node_id: str, timeout: float) -> tuple[str, float, str]:
    """(outcome, seconds, the output's last lines) of `pytest node_id` alone."""
    t0 = time.monotonic()
    # a temporary directory of its own: another pytest on this machine (as the same user)
    # may clean the shared numbered ones while this run's control plane starts in one
    # (kept when the test did not pass: its logs, a control plane's among them)
    tmp = tempfile.mkdtemp(prefix="alone-")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
            f"--basetemp={tmp}/t", node_id]  # fmt: skip
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        rc, text = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        rc, text = 1, f"{out or ''}\n(timed out after {timeout:.0f} s) error"
    tail = "\n".join(str(text).splitlines()[-25:])
    got = outcome(rc, tail.splitlines()[-1] if tail else "")
    if got in ("passed", "skipped"):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tail += f"\n(its files: {tmp})"
    return got, time.monotonic() - t0, tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("-k", dest="keyword")
    ap.add_argument("--report", type=Path)
    ap.add_argument(
        "--one-per-function",
        action="store_true",
        help="of a parametrized test, only its first case (they share the same fixtures)",
    )
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    bad = 0
    ids = collect(args.files, args.keyword)
    if args.one_per_function:
        ids = list({node_id.split("[", 1)[0]: node_id for node_id in reversed(ids)}.values())[::-1]
    for node_id in ids:
        got, secs, tail = run_one(node_id, args.timeout)
        line = f"{got}\t{secs:.0f}\t{node_id}"
        print(line, flush=True)
        if args.report:
            with args.report.open("a") as f:
                f.write(line + "\n")
        if got not in ("passed", "skipped"):
            bad += 1
            print(tail, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
