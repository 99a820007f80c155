"""Fixtures of the netns tier (helpers live in support/dataplane.py)."""

from __future__ import annotations

from support.dataplane import node_ns

__all__ = ["node_ns"]
