"""The end-of-session secret check reads what the API server has: a PSK planted in an
Event and in a VpnTunnel is found in each, and the check fails naming where.

A registry of its own (not the session's): the planted leak must fail this check, not the
session's."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from support.operator import create_tunnel, tunnel_body
from support.secretscan import SecretRegistry, assert_no_leaks, sweep_cluster, sweep_namespace


def _plant_event(kube: client.ApiClient, ns: str, text: str) -> None:
    now = datetime.now(UTC)
    core: Any = client.CoreV1Api(kube)
    core.create_namespaced_event(ns, {
        "metadata": {"name": f"planted.{secrets.token_hex(4)}"},
        "involvedObject": {"kind": "VpnTunnel", "name": "t", "namespace": ns},
        "reason": "Planted", "message": text, "type": "Normal",
        "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(),
    })  # fmt: skip


def test_a_planted_psk_in_events_and_tunnels_fails_the_check(
    kube: client.ApiClient, namespace: str, crd: list[str]
) -> None:
    psk = secrets.token_urlsafe(24)
    reg = SecretRegistry()
    reg.add_psk(psk, "planted")
    body = tunnel_body("t")
    create_tunnel(kube, namespace, body)
    sweep_namespace(kube, reg, namespace)
    assert_no_leaks(reg)  # nothing there yet
    _plant_event(kube, namespace, f"loaded {base64.b64encode(psk.encode()).decode()}")
    client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        "routevpn.io", "v1alpha1", namespace, "vpntunnels", "t",
        {"metadata": {"annotations": {"note": f"0x{psk.encode().hex()}"}}},
    )  # fmt: skip
    sweep_namespace(kube, reg, namespace)
    with pytest.raises(AssertionError) as failed:
        assert_no_leaks(reg)
    message = str(failed.value)
    assert f"Events of {namespace}: psk planted (base64)" in message
    assert f"VpnTunnels of {namespace}: psk planted (0x hex)" in message
    assert psk not in message
    # the whole cluster's sweep (the session's end) sees them too
    whole = SecretRegistry(secrets=reg.secrets)
    sweep_cluster(kube, whole)
    with pytest.raises(AssertionError, match="of all namespaces"):
        assert_no_leaks(whole)
