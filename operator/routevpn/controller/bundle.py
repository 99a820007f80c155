"""The secret material a tunnel's agent needs, built from the user's Secrets. Pure.

Values stay base64 as the API server hands them over (Secret.data): they are copied,
never decoded, logged or put in a message. Problems name the Secret and key only.
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

#: A user Secret as read: its type and data (base64 values), or None when it does not exist.
UserSecret = tuple[str, Mapping[str, str]] | None

TLS_TYPE = "kubernetes.io/tls"
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
    data: dict[str, str] = {}
    if auth.type is AuthType.PSK and auth.psk is not None:
        ref = auth.psk.secret_ref
        got = _key(secrets, namespace, ref.name, ref.key or "psk")
        if isinstance(got, SecretProblem):
            return got
        data["psk"] = got
    elif auth.x509 is not None:
        ref = auth.x509.secret_ref
        sec = secrets.get(ref.name)
        if sec is not None and sec[0] != TLS_TYPE:
            return SecretProblem(
                Reason.SECRET_INVALID,
                f"Secret {namespace}/{ref.name} is of type {sec[0]}, not {TLS_TYPE}",
            )
        for key in ("tls.crt", "tls.key"):
            got = _key(secrets, namespace, ref.name, key)
            if isinstance(got, SecretProblem):
                return got
            data[key] = got
        ca = auth.x509.ca_secret_ref
        ca_name, ca_key = (ca.name, ca.key or "ca.crt") if ca else (ref.name, "ca.crt")
        got = _key(secrets, namespace, ca_name, ca_key)
        if isinstance(got, SecretProblem):
            return got
        data["ca.crt"] = got
    return Bundle(data, content_hash(data))


def _key(
    secrets: Mapping[str, UserSecret], namespace: str, name: str, key: str
) -> str | SecretProblem:
    sec = secrets.get(name)
    if sec is None:
        return SecretProblem(Reason.SECRET_MISSING, f"Secret {namespace}/{name} does not exist")
    value = sec[1].get(key)
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
