"""Real ServiceAccount credentials on the cluster tier: Pod-bound tokens, as kubelet gets them.

There is no kubelet, but a Pod object with ``spec.nodeName`` is enough for a TokenRequest
bound to it: the API server puts the Pod's node into the token
(``authentication.kubernetes.io/node-name`` in the user's extra), exactly as for a
running agent. The Pod never starts.

``bound_token(api, namespace, service_account, node)`` -> token (its Pod is left for the
namespace's deletion to remove) · ``token_client(kubeconfig, token)`` -> ``ApiClient``
· ``service_account_token(api, namespace, service_account)`` (not bound to a Pod)
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from support.kube import api_client

#: The API server's default audience (its --service-account-issuer).
AUDIENCES = ["https://kubernetes.default.svc.cluster.local"]


def _core(api: client.ApiClient) -> Any:
    return client.CoreV1Api(api)


def _request(api: client.ApiClient, namespace: str, sa: str, bound: dict[str, str] | None) -> str:
    spec: dict[str, Any] = {"audiences": AUDIENCES, "expirationSeconds": 3600}
    if bound is not None:
        spec["boundObjectRef"] = bound
    got = _core(api).create_namespaced_service_account_token(sa, namespace, {"spec": spec})
    token: str = got.status.token
    return token


def bound_token(api: client.ApiClient, namespace: str, service_account: str, node: str) -> str:
    """A token of `service_account`, bound to a new Pod placed on `node` (which must exist)."""
    name = f"token-{secrets.token_hex(4)}"
    pod = _core(api).create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "serviceAccountName": service_account,
                "automountServiceAccountToken": False,
                "containers": [{"name": "c", "image": "registry.invalid/none:0"}],
                # No kubelet heartbeats: don't let the taint manager evict it meanwhile.
                "tolerations": [{"operator": "Exists"}],
            },
        },
    )
    ref = {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": pod.metadata.uid}
    return _request(api, namespace, service_account, ref)


def service_account_token(api: client.ApiClient, namespace: str, service_account: str) -> str:
    """A token of `service_account` bound to no object (it carries no node name)."""
    return _request(api, namespace, service_account, None)


def token_client(kubeconfig: Path, token: str) -> client.ApiClient:
    """A client for the same API server (and CA) as `kubeconfig`, authenticated by `token`."""
    admin = api_client(kubeconfig)
    conf = client.Configuration()
    conf.host = admin.configuration.host
    conf.ssl_ca_cert = admin.configuration.ssl_ca_cert
    conf.verify_ssl = admin.configuration.verify_ssl
    conf.api_key = {"authorization": f"Bearer {token}"}
    admin.close()  # type: ignore[no-untyped-call]
    return client.ApiClient(conf)


def token_kubeconfig(kubeconfig: Path, token: str, out: Path) -> Path:
    """A copy of `kubeconfig` whose one user authenticates by `token` (no client cert)."""
    conf = yaml.safe_load(kubeconfig.read_text())
    for entry in conf.get("users", []):
        entry["user"] = {"token": token}
    out.write_text(yaml.safe_dump(conf))
    out.chmod(0o600)
    return out
