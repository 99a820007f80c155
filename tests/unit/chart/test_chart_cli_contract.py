"""The chart starts the processes with arguments the `routevpn` command accepts.

The chart and the CLI are written apart; a flag renamed on one side would only show in a
crash-looping pod. Here every rendered operator and agent command line is parsed by the
real argument parser, for every value set the chart is tested with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from routevpn.cli import build_parser
from support.chart import VALUE_SETS, containers, render

KINDS = {"Deployment", "DaemonSet"}


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_rendered_commands_parse(values_name: str, tmp_path: Path) -> None:
    docs = render(VALUE_SETS[values_name], tmp_path)
    seen: dict[str, Any] = {}
    for doc in docs:
        if doc["kind"] not in KINDS:
            continue
        for name, container in containers(doc).items():
            args = [str(a).replace("$(NODE_NAME)", "node-a") for a in container.get("args", [])]
            if not args or args[0] not in ("operator", "agent"):
                continue
            parsed = build_parser().parse_args(args)  # SystemExit(2) on an unknown flag
            seen[args[0]] = parsed
            assert parsed.command == args[0], (doc["metadata"]["name"], name)
    assert set(seen) == {"operator", "agent"}, f"commands found: {sorted(seen)}"
    assert seen["agent"].node == "node-a"
