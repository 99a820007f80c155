"""What is delivered: only the keys the auth type uses, only from Secrets that opted in."""

from __future__ import annotations

from typing import Any

import pytest

from routevpn.api.conditions import Reason
from routevpn.api.spec import parse_spec
from routevpn.controller import bundle
from routevpn.controller.reconciler import user_secret

OPT_IN = {"routevpn.io/usage": "ike"}
TLS = "kubernetes.io/tls"


def spec(auth: dict[str, Any]) -> Any:
    return parse_spec(
        {
            "nodeName": "node-a",
            "local": {"address": "192.0.2.1"},
            "remote": {"address": "198.51.100.1", "id": "@peer.example.org"},
            "auth": auth,
        }
    )


PSK = {"type": "psk", "psk": {"secretRef": {"name": "s"}}}
X509 = {"type": "x509", "x509": {"secretRef": {"name": "cert"}}}


def read(type_: str, data: dict[str, str], labels: dict[str, str] | None = None) -> Any:
    return user_secret({"type": type_, "metadata": {"labels": labels or {}}, "data": data})


def test_psk_delivers_only_the_psk() -> None:
    sec = read("Opaque", {"psk": "cA==", "other": "eA==", "tls.key": "aw=="}, OPT_IN)
    made = bundle.build(spec(PSK), "ns", {"s": sec})
    assert isinstance(made, bundle.Bundle)
    assert dict(made.data) == {"psk": "cA=="}


def test_x509_delivers_only_cert_key_and_ca() -> None:
    sec = read(TLS, {"tls.crt": "Yw==", "tls.key": "aw==", "ca.crt": "YQ==", "x": "eA=="}, OPT_IN)
    made = bundle.build(spec(X509), "ns", {"cert": sec})
    assert isinstance(made, bundle.Bundle)
    assert set(made.data) == {"tls.crt", "tls.key", "ca.crt"}


# Hostile references: a tenant who may create VpnTunnels but not read or label a Secret
# must not get its keys into IKE through the operator.
HOSTILE = [
    pytest.param(
        {"type": "psk", "psk": {"secretRef": {"name": "s", "key": "tls.key"}}},
        {"s": read(TLS, {"tls.crt": "Yw==", "tls.key": "aw=="})},
        "lacks the label routevpn.io/usage=ike",
        id="ingress-tls-key-as-psk",
    ),
    pytest.param(
        {"type": "psk", "psk": {"secretRef": {"name": "s", "key": "tls.key"}}},
        {"s": read(TLS, {"tls.crt": "Yw==", "tls.key": "aw=="}, OPT_IN)},
        "is of type kubernetes.io/tls, not Opaque",
        id="labelled-tls-secret-as-psk",
    ),
    pytest.param(
        PSK,
        {"s": read("Opaque", {"psk": "cA=="})},
        "lacks the label",
        id="psk-secret-without-opt-in",
    ),
    pytest.param(
        {"type": "psk", "psk": {"secretRef": {"name": "s", "key": "token"}}},
        {"s": read("kubernetes.io/service-account-token", {"token": "dA=="}, OPT_IN)},
        "not Opaque",
        id="service-account-token-as-psk",
    ),
    pytest.param(
        X509,
        {"cert": read(TLS, {"tls.crt": "Yw==", "tls.key": "aw==", "ca.crt": "YQ=="})},
        "lacks the label",
        id="ingress-certificate-as-ike-identity",
    ),
    pytest.param(
        {"type": "x509", "x509": {"secretRef": {"name": "cert"}, "caSecretRef": {"name": "ca"}}},
        {
            "cert": read(TLS, {"tls.crt": "Yw==", "tls.key": "aw=="}, OPT_IN),
            "ca": read("Opaque", {"ca.crt": "YQ=="}),
        },
        "ns/ca lacks the label",
        id="ca-from-a-secret-without-opt-in",
    ),
]


@pytest.mark.parametrize(("auth", "secrets", "message"), HOSTILE)
def test_hostile_secret_references_are_refused(
    auth: dict[str, Any], secrets: dict[str, bundle.UserSecret], message: str
) -> None:
    made = bundle.build(spec(auth), "ns", secrets)
    assert isinstance(made, bundle.SecretProblem)
    assert made.reason == Reason.SECRET_INVALID
    assert message in made.message
    assert "aw==" not in made.message and "cA==" not in made.message
