"""Fixtures of the netns tier (helpers live in dp_support.py, importable by name)."""

from __future__ import annotations

from dp_support import node_ns

__all__ = ["node_ns"]
