"""The guarded metadata patch: what it tests, what it replaces (the real API server runs
the same patches in tests/cluster/test_kube_io.py)."""

from __future__ import annotations

from routevpn.kube.client import metadata_patch

SEEN = {
    "namespace": "prod",
    "name": "site-b",
    "resourceVersion": "41",
    "finalizers": ["routevpn.io/operator"],
    "labels": {"app": "vpn"},
}


def test_finalizers_are_guarded_by_the_list_as_it_was_seen() -> None:
    ops = metadata_patch(SEEN, finalizers=["routevpn.io/operator", "routevpn.io/agent"])
    assert ops == [
        {"op": "test", "path": "/metadata/finalizers", "value": ["routevpn.io/operator"]},
        {"op": "add", "path": "/metadata/finalizers",
         "value": ["routevpn.io/operator", "routevpn.io/agent"]},
    ]  # fmt: skip


def test_a_list_that_was_absent_is_guarded_by_the_resource_version() -> None:
    seen = {**SEEN, "finalizers": [], "labels": {}}
    ops = metadata_patch(seen, finalizers=["routevpn.io/agent"], labels={"routevpn.io/node": "a"})
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "41"}
    assert sum(op["op"] == "test" for op in ops) == 1  # one guard is enough
    assert {"op": "add", "path": "/metadata/labels", "value": {"routevpn.io/node": "a"}} in ops


def test_labels_keep_others_and_none_removes() -> None:
    seen = {**SEEN, "labels": {"app": "vpn", "routevpn.io/node": "a"}}
    ops = metadata_patch(seen, labels={"routevpn.io/node": None})
    assert ops == [
        {"op": "test", "path": "/metadata/labels", "value": seen["labels"]},
        {"op": "add", "path": "/metadata/labels", "value": {"app": "vpn"}},
    ]


def test_nothing_to_change_is_no_patch() -> None:
    assert metadata_patch(SEEN, labels={"app": "vpn"}) == []
