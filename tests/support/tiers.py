"""``missing()`` from ``tests/conftest.py``, importable from anywhere in the tests.

Several directories have a ``conftest.py`` and ``tests/`` is not a package, so the
module name ``conftest`` is rebound as pytest loads each one: ``from conftest import
missing`` can silently pick up the wrong file. This loads the root one under a name
of its own; the root conftest stays the only place the skip-or-fail rule lives.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

_NAME = "routevpn_tests_root_conftest"
ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"


def root_conftest() -> ModuleType:
    """The root ``tests/conftest.py`` module (loaded once)."""
    mod = sys.modules.get(_NAME)
    if mod is None:
        spec = importlib.util.spec_from_file_location(_NAME, ROOT_CONFTEST)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = mod
        spec.loader.exec_module(mod)
    return mod


def missing(what: str) -> NoReturn:
    """Skip on a developer machine, fail in CI: `what` is not available here."""
    root_conftest().missing(what)
    raise AssertionError("unreachable: missing() always raises")


def strict() -> bool:
    """True where a missing part must fail rather than skip."""
    return bool(root_conftest().strict())
