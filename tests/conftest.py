"""Shared test settings: tiers by directory, and loud failure of missing parts in CI.

Tiers (pytest markers) follow the directory a test lives in:
``tests/unit`` → ``unit``, ``tests/netns`` → ``netns``, ``tests/cluster`` → ``cluster``,
``tests/lab`` → ``lab``, ``tests/node`` → ``node``. A test may carry more markers (a
cluster test that also needs network namespaces carries ``netns`` too).

A tier whose parts are missing on a machine (no root, no charon, no apiserver, no
QEMU) is skipped with a reason on a developer's machine, but fails in CI (``CI=true``)
or whenever ``ROUTEVPN_REQUIRE_ALL=1``: CI must never turn green by running nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "netns", "cluster", "lab", "node")


def strict() -> bool:
    """True where a missing part must fail rather than skip (CI, or asked for)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or (
        os.environ.get("ROUTEVPN_REQUIRE_ALL", "") == "1"
    )


def missing(what: str) -> None:
    """Skip (developer machine) or fail (CI) because `what` is not available here."""
    if strict():
        pytest.fail(f"required test part missing: {what}", pytrace=False)
    pytest.skip(f"missing: {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            rel = Path(str(item.fspath)).resolve().relative_to(TESTS)
        except ValueError:
            continue
        tier = rel.parts[0] if rel.parts else ""
        if tier in TIERS and tier not in {m.name for m in item.iter_markers()}:
            item.add_marker(getattr(pytest.mark, tier))
