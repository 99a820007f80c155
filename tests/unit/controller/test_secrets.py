"""The operator's Secret follower: stale delivered Secrets deleted, referenced ones re-read."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from routevpn.api import naming
from routevpn.controller import bundle
from routevpn.controller.decide import OperatorSettings
from routevpn.controller.model import tunnel_from_body
from routevpn.controller.reconciler import OperatorReconciler
from routevpn.controller.secrets import SecretFollower
from routevpn.controller.store import Store
from routevpn.kube.watch import WatchItem

RNS = "routevpn"


class FakeKube:
    """The two Secret calls the follower makes, recorded."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.secrets = secrets
        self.reads: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append((namespace, name))
        return self.secrets.get((namespace, name))

    async def delete_secret(self, namespace: str, name: str) -> None:
        self.deleted.append((namespace, name))


def delivered(ns: str, name: str, secret_name: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": secret_name or naming.secret_name(ns, name),
            "namespace": RNS,
            "labels": {naming.NODE_LABEL: "node-a"},
            "annotations": {
                naming.CONTENT_HASH_ANNOTATION: "sha256:x",
                **naming.delivered_annotations(ns, name),
            },
        }
    }


def tunnel(ns: str, name: str, secret: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "uid": "u", "resourceVersion": "1"},
        "spec": {
            "nodeName": "node-a",
            "local": {"address": "192.0.2.1"},
            "remote": {"address": "198.51.100.1"},
            "auth": {"type": "psk", "psk": {"secretRef": {"name": secret}}},
        },
    }


def setup(kube: FakeKube) -> tuple[OperatorReconciler, SecretFollower, list[Any]]:
    r = OperatorReconciler(Store(), kube, events=None, settings=OperatorSettings(RNS))  # type: ignore[arg-type]
    queued: list[Any] = []
    r.enqueue = lambda key, delay=0.0: queued.append(key)  # type: ignore[method-assign]
    return r, SecretFollower(r, period=60.0), queued


def found(psk: str) -> bundle.Found:
    return bundle.Found("Opaque", {"psk": psk}, opted_in=True)


def opaque(psk: str) -> Mapping[str, Any]:
    labels = {naming.USAGE_LABEL: naming.USAGE_IKE}
    return {"type": "Opaque", "metadata": {"labels": labels}, "data": {"psk": psk}}


def test_a_delivered_secret_under_an_old_name_is_deleted_the_current_one_kept() -> None:
    async def run() -> None:
        kube = FakeKube({})
        r, follower, queued = setup(kube)
        old = delivered("a-b", "c", secret_name="tunnel-a-b-c")
        follower.on_delivered(WatchItem("secrets", "list", (old, delivered("a-b", "c"))))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert kube.deleted == [(RNS, "tunnel-a-b-c")]
        assert r.store.delivered[("a-b", "c")].name == naming.secret_name("a-b", "c")
        # The stale one's deletion event does not take the current one out of the view.
        follower.on_delivered(WatchItem("secrets", "DELETED", (old,)))
        assert ("a-b", "c") in r.store.delivered
        assert queued == [("a-b", "c")]

    asyncio.run(run())


def test_reread_follows_rotation_of_referenced_secrets_only() -> None:
    async def run() -> None:
        kube = FakeKube({("ns", "s"): dict(opaque("b25l"))})
        r, follower, queued = setup(kube)
        r.store.put_tunnel(tunnel_from_body(tunnel("ns", "t", "s")))
        r.store.user_secrets[("ns", "s")] = found("b25l")
        r.store.user_secrets[("ns", "unused")] = bundle.Found(
            "Opaque", {"psk": "eA=="}, opted_in=True
        )
        assert await follower.reread() == 1
        assert kube.reads == [("ns", "s")]  # never the Secret no tunnel names
        assert ("ns", "unused") not in r.store.user_secrets
        assert queued == []  # unchanged: nothing to look at
        kube.secrets[("ns", "s")] = dict(opaque("dHdv"))
        await follower.reread()
        assert r.store.user_secrets[("ns", "s")] == bundle.Found(
            "Opaque", {"psk": "dHdv"}, opted_in=True
        )
        assert queued == [("ns", "t")]

    asyncio.run(run())
