"""The operator's in-memory view: tunnels, nodes, delivered Secrets, and its own decisions.

Filled from watch events (kopf indexes it fully before any handler runs, so allocation
never starts from a partial view). The operator's own status decisions are laid over
what was last observed (`effective`): a claim counts from the moment it is decided, not
from when the watch event of the write comes back, so two tunnels decided back to back
never get the same number, and write lag never causes a second write.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from routevpn.api.conditions import ConditionType, Reason
from routevpn.api.policy import VpnTunnelPolicySpec
from routevpn.controller import allocation, bundle
from routevpn.controller.liveness import AgentLeases
from routevpn.controller.model import DeliveredRecord, NodeRecord, TunnelKey, TunnelRecord
from routevpn.controller.policy import PolicyView, protected_networks
from routevpn.controller.status import OWNED_FIELDS

_OPERATOR_CONDITIONS = {str(ConditionType.SCHEDULED), str(ConditionType.READY)}
#: Reasons of tunnels that wait for another tunnel's claim to go away.
WAITING_ON_OTHERS = frozenset(
    {
        Reason.KEY_IN_USE,
        Reason.IF_ID_IN_USE,
        Reason.INTERFACE_NAME_IN_USE,
        Reason.ADDRESS_IN_USE,
        Reason.ALLOCATION_EXHAUSTED,
        Reason.ROUTE_IN_USE,
        Reason.IDENTITY_IN_USE,
    }
)


def overlay(observed: Mapping[str, Any], applied: Mapping[str, Any] | None) -> dict[str, Any]:
    """`observed` status with the operator's own fields replaced by what it last applied."""
    if applied is None:
        return dict(observed)
    out = {k: v for k, v in observed.items() if k not in OWNED_FIELDS}
    out.update({k: v for k, v in applied.items() if k in OWNED_FIELDS})
    conds = [
        c
        for c in observed.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type") not in _OPERATOR_CONDITIONS
    ]
    out["conditions"] = [*applied.get("conditions", []), *conds]
    return out


class Store:
    """Everything the operator knows; mutated only from the event loop's thread."""

    def __init__(self) -> None:
        self.tunnels: dict[TunnelKey, TunnelRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.delivered: dict[TunnelKey, DeliveredRecord] = {}
        self.user_secrets: dict[tuple[str, str], bundle.UserSecret] = {}
        #: VpnTunnelPolicies by name (one that does not parse grants nothing).
        self.policies: dict[str, VpnTunnelPolicySpec] = {}
        #: Namespace labels by name (VpnTunnelPolicy namespaceSelectors match them).
        self.namespaces: dict[str, dict[str, str]] = {}
        #: The API server's addresses as last read (protected like the flags' networks).
        self.api_servers: tuple[str, ...] = ()
        #: The agents' liveness Leases (`controller.agents` follows them).
        self.agents = AgentLeases()
        self._applied: dict[TunnelKey, dict[str, Any]] = {}
        self._released: set[TunnelKey] = set()
        self._by_node: dict[str, dict[TunnelKey, allocation.Holder]] = {}
        self._node_of: dict[TunnelKey, str] = {}

    # --- tunnels --------------------------------------------------------------------

    def put_tunnel(self, rec: TunnelRecord) -> None:
        """Record a tunnel as observed."""
        self.tunnels[rec.key] = rec
        self._reindex(rec.key)

    def drop_tunnel(self, key: TunnelKey) -> None:
        """The tunnel is gone from the API: forget it and its claims."""
        self.tunnels.pop(key, None)
        self._applied.pop(key, None)
        self._released.discard(key)
        self._reindex(key)

    def effective(self, key: TunnelKey) -> dict[str, Any]:
        """The tunnel's status as the operator believes it is (observed + own decisions)."""
        rec = self.tunnels.get(key)
        observed = rec.status if rec is not None else {}
        return overlay(observed, self._applied.get(key))

    def applied(self, key: TunnelKey, status: dict[str, Any] | None) -> None:
        """The operator decided (and is writing) `status`; None: the write failed, forget."""
        if status is None:
            self._applied.pop(key, None)
        else:
            self._applied[key] = copy.deepcopy(status)
        self._reindex(key)

    def release(self, key: TunnelKey) -> None:
        """The tunnel is being deleted and its agent is done: its claims are free."""
        self._released.add(key)
        self._reindex(key)

    def holders_on(self, node: str, but: TunnelKey) -> list[allocation.Holder]:
        """Claims of every tunnel on `node` except `but`."""
        return [h for k, h in self._by_node.get(node, {}).items() if k != but]

    def waiting_on_others(self) -> list[TunnelKey]:
        """Tunnels held back by another tunnel's claim (to look at again when claims move)."""
        out = []
        for key in self.tunnels:
            for c in self.effective(key).get("conditions") or []:
                if (
                    c.get("type") == ConditionType.SCHEDULED
                    and c.get("reason") in WAITING_ON_OTHERS
                ):
                    out.append(key)
        return out

    def _reindex(self, key: TunnelKey) -> None:
        old = self._node_of.pop(key, None)
        if old is not None:
            self._by_node.get(old, {}).pop(key, None)
        rec = self.tunnels.get(key)
        if rec is None or rec.spec is None or key in self._released:
            return
        status = self.effective(key)
        node = status.get("node")
        if not node:
            return
        iface = status.get("interface")
        local = status.get("localAddress")
        holder = allocation.holder_for(
            rec.ref,
            rec.order,
            rec.spec,
            dict(iface) if isinstance(iface, Mapping) else None,
            str(local) if local else None,
        )
        self._by_node.setdefault(str(node), {})[key] = holder
        self._node_of[key] = str(node)

    # --- policy ---------------------------------------------------------------------

    def put_policy(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """Record (or forget) a VpnTunnelPolicy; one that does not parse grants nothing."""
        name = str((body.get("metadata") or {}).get("name", ""))
        self.policies.pop(name, None)
        if deleted:
            return
        # The CRD refuses a spec that does not parse; one from an older CRD is not trusted.
        with contextlib.suppress(ValidationError):
            self.policies[name] = VpnTunnelPolicySpec.model_validate(body.get("spec") or {})

    def put_namespace(self, body: Mapping[str, Any], deleted: bool = False) -> bool:
        """Record (or forget) a Namespace's labels; True when they changed."""
        meta = body.get("metadata") or {}
        name = str(meta.get("name", ""))
        before = self.namespaces.get(name)
        if deleted:
            self.namespaces.pop(name, None)
        else:
            self.namespaces[name] = dict(meta.get("labels") or {})
        return self.namespaces.get(name) != before

    def policy_view(self, protected: Iterable[tuple[str, str]], without_policy: str) -> PolicyView:
        """What the policy check looks at: configured, API server and node addresses."""
        configured = [*protected, *(("the API server's address", ip) for ip in self.api_servers)]
        node_ips = [ip for node in self.nodes.values() for ip in node.internal_ips]
        return PolicyView(
            protected=protected_networks(configured, node_ips),
            policies=tuple(self.policies.items()),
            without_policy=without_policy,
            namespace_labels=self.namespaces,
        )

    # --- secrets --------------------------------------------------------------------

    def referencing(self, namespace: str, secret: str) -> list[TunnelKey]:
        """Tunnels in `namespace` that refer to Secret `secret`."""
        return [
            rec.key
            for rec in self.tunnels_in(namespace)
            if rec.spec is not None and secret in bundle.referenced(rec.spec)
        ]

    def tunnels_in(self, namespace: str) -> Iterable[TunnelRecord]:
        """Tunnels of one namespace."""
        return (r for r in self.tunnels.values() if r.namespace == namespace)

    def holders_on_key(self, key: TunnelKey) -> tuple[str | None, allocation.Holder | None]:
        """Where `key` claims and what (to tell whether a decision moved any claim)."""
        node = self._node_of.get(key)
        return node, self._by_node.get(node, {}).get(key) if node else None
