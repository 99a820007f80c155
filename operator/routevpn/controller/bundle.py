"""The secret material a tunnel's agent needs, built from the user's Secrets. Pure.

Values stay base64 as the API server hands them over (Secret.data): they are copied,
never decoded, logged or put in a message. Problems name the Secret and key only.

Only the keys the auth type uses are delivered (PSK: `psk`; x509: `tls.crt`, `tls.key`,
`ca.crt`), and only from a Secret that opted in: it carries the label
`routevpn.io/usage: ike`, and is of type Opaque (PSK) or `kubernetes.io/tls` (x509).
The operator can read Secrets a tenant can't, so without the opt-in whoever may create
a VpnTunnel could feed any key of their namespace (an ingress `tls.key`, a database
password) into IKE towards a peer of their choosing. The label says that someone who
may write that Secret meant it for IKE.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from routevpn.api import naming
from routevpn.api.conditions import Reason
from routevpn.api.fields import AuthType
from routevpn.api.spec import VpnTunnelSpec
from routevpn.controller.model import (
    CONTENT_HASH_ANNOTATION,
    TUNNEL_NAME_LABEL,
    TUNNEL_NAMESPACE_LABEL,
)

TLS_TYPE = "kubernetes.io/tls"
OPAQUE_TYPE = "Opaque"
#: The opt-in label every Secret a tunnel refers to must carry, and its value.
USAGE_LABEL = naming.USAGE_LABEL
USAGE_IKE = naming.USAGE_IKE


@dataclass(frozen=True, slots=True)
class Found:
    """A user Secret as read: its type, data (base64 values), and whether it opted in."""

    type: str
    data: Mapping[str, str]
    opted_in: bool


#: A user Secret as read, or None when it does not exist.
UserSecret = Found | None
#: The `app.kubernetes.io/managed-by` value of delivered Secrets (the operator lists by it).
MANAGED_BY = "routevpn-operator"


@dataclass(frozen=True, slots=True)
class Bundle:
    """What to deliver: data keys (base64 values) and the hash that names their content."""

    data: Mapping[str, str]
    content_hash: str


@dataclass(frozen=True, slots=True)
class SecretProblem:
    """Why no bundle: SecretMissing / SecretInvalid and a message naming Secret and key."""

    reason: str
    message: str


def referenced(spec: VpnTunnelSpec) -> list[str]:
    """Names of the Secrets (in the tunnel's namespace) the spec refers to."""
    auth = spec.auth
    if auth.type is AuthType.PSK and auth.psk is not None:
        return [auth.psk.secret_ref.name]
    if auth.x509 is not None:
        names = [auth.x509.secret_ref.name]
        if auth.x509.ca_secret_ref is not None:
            names.append(auth.x509.ca_secret_ref.name)
        return names
    return []


def content_hash(data: Mapping[str, str]) -> str:
    """sha256 over the sorted keys and values: changes exactly when the material does."""
    h = hashlib.sha256()
    for key in sorted(data):
        h.update(key.encode() + b"\0" + data[key].encode() + b"\0")
    return f"sha256:{h.hexdigest()}"


def build(
    spec: VpnTunnelSpec, namespace: str, secrets: Mapping[str, UserSecret]
) -> Bundle | SecretProblem:
    """The bundle for a tunnel in `namespace` from its referenced Secrets (by name)."""
    auth = spec.auth
    wanted: list[tuple[str, str, str, str]] = []  # (delivered key, Secret, its key, type)
    if auth.type is AuthType.PSK and auth.psk is not None:
        ref = auth.psk.secret_ref
        wanted.append(("psk", ref.name, ref.key or "psk", OPAQUE_TYPE))
    elif auth.x509 is not None:
        ref = auth.x509.secret_ref
        wanted += [(k, ref.name, k, TLS_TYPE) for k in ("tls.crt", "tls.key")]
        ca = auth.x509.ca_secret_ref
        ca_name, ca_key = (ca.name, ca.key or "ca.crt") if ca else (ref.name, "ca.crt")
        wanted.append(("ca.crt", ca_name, ca_key, TLS_TYPE if ca is None else ""))
    data: dict[str, str] = {}
    for out, name, key, type_ in wanted:
        got = _key(secrets, namespace, name, key, type_)
        if isinstance(got, SecretProblem):
            return got
        data[out] = got
    return Bundle(data, content_hash(data))


def _key(
    secrets: Mapping[str, UserSecret], namespace: str, name: str, key: str, type_: str
) -> str | SecretProblem:
    """The value of `key` in Secret `name`, which must exist, have opted in and (if
    `type_` is set) be of that type."""
    sec = secrets.get(name)
    if sec is None:
        return SecretProblem(Reason.SECRET_MISSING, f"Secret {namespace}/{name} does not exist")
    if not sec.opted_in:
        return SecretProblem(
            Reason.SECRET_INVALID,
            f"Secret {namespace}/{name} lacks the label {USAGE_LABEL}={USAGE_IKE} that "
            "allows routevpn to use it for IKE",
        )
    if type_ and sec.type != type_:
        return SecretProblem(
            Reason.SECRET_INVALID, f"Secret {namespace}/{name} is of type {sec.type}, not {type_}"
        )
    value = sec.data.get(key)
    if not value:
        return SecretProblem(
            Reason.SECRET_INVALID, f"Secret {namespace}/{name} has no (or an empty) key {key}"
        )
    return value


def delivered_body(
    namespace: str, name: str, routevpn_ns: str, node: str | None, bundle: Bundle
) -> dict[str, object]:
    """The Secret to write into the routevpn namespace for tunnel `namespace/name`."""
    labels = {
        naming.NODE_LABEL: node or "",
        TUNNEL_NAMESPACE_LABEL: namespace,
        TUNNEL_NAME_LABEL: _label_value(name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": naming.secret_name(namespace, name),
            "namespace": routevpn_ns,
            "labels": labels,
            "annotations": {
                CONTENT_HASH_ANNOTATION: bundle.content_hash,
                **naming.delivered_annotations(namespace, name),
            },
        },
        "data": dict(bundle.data),
    }


def _label_value(text: str) -> str:
    """A label value (at most 63 characters); long names are cut, the annotation keeps them."""
    if len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[:54].rstrip('.-_')}-{digest}"
