"""Every derived name and number routevpn uses, each owned by exactly one function.

VyOS once wrote its if_id rule twice (Python and a template) and the copies drifted;
here the operator, the agent and the data plane all call these functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

GROUP: Final = "routevpn.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "VpnTunnel"
PLURAL: Final = "vpntunnels"
SINGULAR: Final = "vpntunnel"
SHORT_NAME: Final = "vpnt"
CATEGORY: Final = "routevpn"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

#: Label the operator sets on a placed tunnel; agents watch only `label == their node`.
NODE_LABEL: Final = f"{GROUP}/node"
#: On the Secret the operator delivers into routevpn's namespace for the node's agent.
TUNNEL_NAMESPACE_LABEL: Final = f"{GROUP}/tunnel-namespace"
TUNNEL_NAME_LABEL: Final = f"{GROUP}/tunnel-name"
#: On a delivered Secret: `namespace/name` of its tunnel, whole. Label values stop at 63
#: characters and tunnel names don't, so the labels only narrow a listing; this is the truth.
TUNNEL_ANNOTATION: Final = f"{GROUP}/tunnel"
#: sha256 of the delivered material, so the agent tells a rotation from a resync.
CONTENT_HASH_ANNOTATION: Final = f"{GROUP}/content-hash"
#: Finalizers: the operator's and the agent's are distinct (two kopf processes, one object).
OPERATOR_FINALIZER: Final = f"{GROUP}/operator"
AGENT_FINALIZER: Final = f"{GROUP}/agent"

#: Every swanctl connection routevpn loads starts with this; GC touches nothing else.
CONN_PREFIX: Final = "routevpn."
#: Every interface routevpn creates carries an alias starting with this; GC relies on it.
ALIAS_PREFIX: Final = "routevpn:"
#: Route protocol number on every route routevpn installs (rtm_protocol). Unassigned in
#: iproute2's rt_protos and by the well-known daemons (bird 12, zebra 11, bgp 186...).
ROUTE_PROTOCOL: Final = 157
#: Routing tables no tunnel may write: unspec (0), default (253) and local (255) are the
#: kernel's own; a route in `local` would even claim addresses as the node's.
RESERVED_TABLES: Final = (0, 253, 255)

#: Range the operator allocates VTI keys / XFRM if_ids from when the spec leaves them out.
#: Users may set any value in [1, 2**32-1]; 0 is refused (if_id 0 matches any interface).
ALLOC_MIN: Final = 4096
ALLOC_MAX: Final = 65535
ID_MAX: Final = 2**32 - 1
IFNAME_MAX: Final = 15


def conn_name(namespace: str, name: str) -> str:
    """The swanctl connection (and CHILD) name of tunnel `namespace/name`.

    Namespaces are DNS labels (no dots), so the first dot after the prefix splits the two
    parts unambiguously even when the tunnel's own name has dots.
    """
    return f"{CONN_PREFIX}{namespace}.{name}"


def parse_conn_name(conn: str) -> tuple[str, str] | None:
    """`(namespace, name)` of a routevpn connection name, or None if it isn't ours."""
    if not conn.startswith(CONN_PREFIX):
        return None
    rest = conn[len(CONN_PREFIX) :]
    namespace, sep, name = rest.partition(".")
    if not sep or not namespace or not name:
        return None
    return namespace, name


def link_alias(namespace: str, name: str) -> str:
    """The interface alias (IFLA_IFALIAS) that marks a link as tunnel `namespace/name`'s."""
    return f"{ALIAS_PREFIX}{namespace}/{name}"


def parse_link_alias(alias: str | None) -> tuple[str, str] | None:
    """`(namespace, name)` from a routevpn interface alias, or None if it isn't ours."""
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    namespace, sep, name = alias[len(ALIAS_PREFIX) :].partition("/")
    if not sep or not namespace or not name:
        return None
    return namespace, name


def default_ifname(kind: str, ident: int) -> str:
    """Interface name for an allocated key/if_id: `vti4096`, `xfrm4097`."""
    prefix = "xfrm" if kind == "xfrm" else "vti"
    return f"{prefix}{ident}"


def secret_name(namespace: str, name: str) -> str:
    """Name of the Secret (in routevpn's namespace) the operator delivers for a tunnel.

    Kubernetes object names are at most 253 characters; namespace (63) + name (253)
    could exceed that, so long pairs are shortened with a stable hash.
    """
    base = f"tunnel-{namespace}-{name}"
    if len(base) <= 253:
        return base
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:10]
    return f"{base[:242]}-{digest}"


def delivered_annotations(namespace: str, name: str) -> dict[str, str]:
    """The annotation by which a delivered Secret names its tunnel (see `delivered_tunnel`)."""
    return {TUNNEL_ANNOTATION: tunnel_ref(namespace, name)}


def delivered_tunnel(metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    """`(namespace, name)` of the tunnel a delivered Secret (its `metadata`) is for.

    The one reader of `TUNNEL_ANNOTATION`: the operator writes it through
    `delivered_annotations`, and both the operator and the agent read it here. (The agent
    once read the tunnel's name from a label, which is cut at 63 characters, so a tunnel
    with a longer name never found its Secret.)"""
    annotations = metadata.get("annotations") or {}
    ns, sep, name = str(annotations.get(TUNNEL_ANNOTATION, "")).partition("/")
    if not sep or not ns or not name:
        return None
    return ns, name


def tunnel_ref(namespace: str, name: str) -> str:
    """How logs and messages name a tunnel."""
    return f"{namespace}/{name}"
