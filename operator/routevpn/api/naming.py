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
#: The opt-in label on a user's Secret that lets tunnels use it for IKE (`controller.bundle`).
USAGE_LABEL: Final = f"{GROUP}/usage"
USAGE_IKE: Final = "ike"
#: sha256 of the delivered material, so the agent tells a rotation from a resync.
CONTENT_HASH_ANNOTATION: Final = f"{GROUP}/content-hash"
#: Finalizers: the operator's and the agent's are distinct (two kopf processes, one object).
OPERATOR_FINALIZER: Final = f"{GROUP}/operator"
AGENT_FINALIZER: Final = f"{GROUP}/agent"

#: Every swanctl connection routevpn loads starts with this; GC touches nothing else.
CONN_PREFIX: Final = "routevpn."
#: Every interface routevpn creates carries an alias starting with this; GC relies on it.
ALIAS_PREFIX: Final = "routevpn:"
#: The device group (IFLA_GROUP) routevpn creates its interfaces in. The kernel takes a
#: group in the RTM_NEWLINK that creates a link, but not an alias (set by a second
#: request), so a tunnel-kind link in this group without an alias is one routevpn
#: created and had not marked yet (the agent stopped in between): routevpn's to finish
#: or remove. `ip link show group 157` lists routevpn's interfaces.
LINK_GROUP: Final = 157
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

#: Route metrics split the kernel's 32-bit range in two halves: a route as the user asked
#: for it (active) has a metric below 2**31, the same route demoted while its tunnel's
#: CHILD SA is down has that metric plus 2**31 (see `demoted_metric`).
ROUTE_METRIC_MAX: Final = 2**31 - 1
DEMOTION_PENALTY: Final = 2**31


def conn_name(namespace: str, name: str) -> str:
    """The swanctl connection (and CHILD) name of tunnel `namespace/name`.

    Namespaces are DNS labels (no dots), so the first dot after the prefix splits the two
    parts unambiguously even when the tunnel's own name has dots.
    """
    return f"{CONN_PREFIX}{namespace}.{name}"


#: Suffix of the IPv6 CHILD SA's name when a tunnel has one CHILD SA per family (a `~`
#: never occurs in a Kubernetes name, so no tunnel's connection name can end with it).
IPV6_CHILD_SUFFIX: Final = "~ipv6"


def child_names(conn: str, per_family: bool) -> tuple[str, ...]:
    """The CHILD SA names of connection `conn`: its own name; with one CHILD SA per family
    the IPv4 one keeps it (so everything that looks for the tunnel's CHILD SA by the
    connection's name still finds one) and the IPv6 one carries `IPV6_CHILD_SUFFIX`."""
    return (conn, conn + IPV6_CHILD_SUFFIX) if per_family else (conn,)


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


#: BGP: a 4-byte ASN is 1..2**32-1; 23456 is AS_TRANS, the placeholder a 2-byte speaker
#: sees, never a real AS (RFC 6793).
ASN_MAX: Final = 2**32 - 1
AS_TRANS: Final = 23456
#: Every BIRD protocol of a BGP session starts with this and its IP version (bgp4_, bgp6_).
BGP_PROTOCOL_PREFIX: Final = "bgp"
_BIRD_ESCAPES: Final = {"_": "__", ".": "_d", "-": "_h"}


def bgp_protocol(ifname: str, version: int) -> str:
    """The BIRD protocol name of the BGP session of `version` over interface `ifname`.

    One session per interface and family, so the pair names it. BIRD symbols allow only
    letters, digits and `_`; an interface name may also hold `.` and `-`, which are
    escaped so that two names never map to one symbol (`vti.1` is `bgp4_vti_d1`,
    `vti_d1` is `bgp4_vti__d1`). Everything else of the session (its filters, table,
    pipe, static protocol) is named after this.
    """
    if version not in (4, 6):
        raise ValueError(f"IP version {version} is neither 4 nor 6")
    if not ifname or not all(c.isascii() and (c.isalnum() or c in _BIRD_ESCAPES) for c in ifname):
        raise ValueError(f"interface name {ifname!r} is not a Linux interface name routevpn uses")
    escaped = "".join(_BIRD_ESCAPES.get(c, c) for c in ifname)
    return f"{BGP_PROTOCOL_PREFIX}{version}_{escaped}"


#: First label of a delivered Secret's name, and of a hashed one (see `secret_name`).
DELIVERED_PREFIX: Final = "tunnel"
DELIVERED_HASHED_PREFIX: Final = "tunnel-h"
OBJECT_NAME_MAX: Final = 253


def secret_name(namespace: str, name: str) -> str:
    """Name of the Secret (in routevpn's namespace) the operator delivers for a tunnel.

    Unique for every (namespace, name): `tunnel.<namespace>.<name>`. Namespaces are DNS
    labels (no dots), so the first dot after the prefix ends the namespace. (It was
    `tunnel-<namespace>-<name>`, the same for tunnel `b-c` in `a` and tunnel `c` in
    `a-b`: written with force, one tunnel could be keyed with another's PSK.)

    A pair too long for 253 characters becomes
    `tunnel-h.<namespace>.<sha256 of namespace/name>.<head of name>`: another first
    label, so it never equals a plain name, and the whole digest keeps it unique.
    """
    plain = f"{DELIVERED_PREFIX}.{namespace}.{name}"
    if len(plain) <= OBJECT_NAME_MAX:
        return plain
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()
    hashed = f"{DELIVERED_HASHED_PREFIX}.{namespace}.{digest}"
    room = OBJECT_NAME_MAX - len(hashed) - 1
    # A name starts with an alphanumeric; its head must end with one (DNS subdomain).
    head = name[:room].rstrip("-.")
    return f"{hashed}.{head}" if head else hashed


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


def current_delivered(metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    """The tunnel of a delivered Secret whose name is the current `secret_name` for it.

    None for a Secret delivered under an older naming (or naming nothing): the operator
    deletes those, and an agent never reads one (during an upgrade both names may exist
    for a moment, and the old one's deletion must not take the tunnel's key away)."""
    tunnel = delivered_tunnel(metadata)
    if tunnel is None or metadata.get("name") != secret_name(*tunnel):
        return None
    return tunnel


#: Agent liveness Leases (coordination.k8s.io) in routevpn's namespace: one per node, named
#: by `agent_lease_name`, labelled so the operator watches these and no other Lease there.
AGENT_LEASE_PREFIX: Final = "routevpn-agent-"
AGENT_LEASE_HASHED_PREFIX: Final = "routevpn-agent."
AGENT_LEASE_LABEL: Final = f"{GROUP}/lease"
AGENT_LEASE_VALUE: Final = "agent"


def agent_lease_name(node: str) -> str:
    """Name of the Lease node `node`'s agent renews to say it is live.

    `routevpn-agent-<node>`; a node name too long for that (over 238 characters) gives
    `routevpn-agent.<sha256 of node>.<head of node>`: a dot where the plain form has its
    last dash, so the two forms never meet. The agent node guard
    (charts/routevpn) checks the plain form exactly and only the prefix of the hashed one
    (CEL has no sha256); the operator checks both (`controller.liveness`)."""
    plain = f"{AGENT_LEASE_PREFIX}{node}"
    if len(plain) <= OBJECT_NAME_MAX:
        return plain
    digest = hashlib.sha256(node.encode()).hexdigest()
    hashed = f"{AGENT_LEASE_HASHED_PREFIX}{digest}"
    head = node[: OBJECT_NAME_MAX - len(hashed) - 1].rstrip("-.")
    return f"{hashed}.{head}" if head else hashed


def tunnel_ref(namespace: str, name: str) -> str:
    """How logs and messages name a tunnel."""
    return f"{namespace}/{name}"


def demoted_metric(metric: int) -> int:
    """The metric a route of `metric` (as the kernel records it) has while demoted.

    The one rule, so the operator's route claims hold for demoted routes too: a claim is
    (table, destination, metric) with metric <= ROUTE_METRIC_MAX, and adding 2**31 maps
    that half of the range one to one onto the upper half. Two tunnels with distinct
    claims therefore never demote onto the same key, and a demoted route never takes
    the key of any active one. The result still fits the kernel's 32-bit RTA_PRIORITY.
    """
    if not 0 <= metric <= ROUTE_METRIC_MAX:
        raise ValueError(f"route metric {metric} outside [0, {ROUTE_METRIC_MAX}]")
    return metric + DEMOTION_PENALTY
