"""RBAC rules of rendered chart objects as comparable sets (for the chart's tests)."""

from __future__ import annotations

from support.chart import Manifest

Rule = tuple[str, str, frozenset[str]]


def rules(role: Manifest) -> set[Rule]:
    """(apiGroup, resource, verbs) triples of a Role/ClusterRole; no wildcards allowed.
    A rule narrowed to some objects by name shows as `resource:name,name`."""
    out: set[Rule] = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        names = ",".join(rule.get("resourceNames") or [])
        for group in rule["apiGroups"]:
            for resource in (f"{r}:{names}" if names else r for r in rule["resources"]):
                verbs = frozenset(rule["verbs"])
                assert "*" not in verbs and resource != "*" and group != "*", rule
                out.add((group, resource, verbs))
    return out


def v(*verbs: str) -> frozenset[str]:
    return frozenset(verbs)
