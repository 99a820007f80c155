"""Nothing secret leaks (issue 17): find the PSKs and private keys a test used in text.

The secrets are registered as they are made (``REGISTRY``: the Secret-making helpers
feed it: ``support.operator.psk_secret``, ``support.pki``, the agent tests' delivered
Secret...); the text is what the processes and the API server show: log files,
Events, every VpnTunnel, metrics pages. ``find_leaks`` looks for each secret in every
form it could leak in:

- ``raw``           the value itself (a PSK is text);
- ``base64``        with and without padding (how a Secret's data carries it);
- ``hex``           lower and upper case, and ``0x``-prefixed (strongSwan prints secrets so);
- ``hex dump``      strongSwan's debug dump: bytes as ``7A 3F ...``, 16 to a line (a
                    last line of under 8 bytes is not looked for);
- ``pem line``      each full line of a private key's PEM body (a key logged as PEM, or
                    escaped into one JSON string, still has its lines whole);
- ``base64 of pem`` the whole PEM file base64'd (a Secret's ``tls.key`` in a log).

Short forms (under ``MIN_FORM`` characters) are not looked for: too many innocent
matches. A leak names where and in which form; never the secret.

The cluster tier scans at the end of its session (tests/cluster/conftest.py: ``kube``'s
teardown calls ``sweep_cluster`` and ``assert_no_leaks``). The lab tier can do the same:
register its PSKs and keys in ``REGISTRY`` where it makes them, ``REGISTRY.add_log(path)``
for the guest's logs it copies out (agent, charon, operator), ``REGISTRY.add_text(...)``
for the metrics it fetches, and call ``sweep_cluster(api, REGISTRY)`` then
``assert_no_leaks(REGISTRY)`` before its control plane goes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

#: Forms shorter than this are not looked for (a 4-byte PSK's hex would match anywhere).
MIN_FORM = 8
TUNNELS = ("routevpn.io", "v1alpha1", "vpntunnels")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----\s*(.*?)\s*-----END [A-Z ]+-----", re.S)


@dataclass(frozen=True)
class Leak:
    """One occurrence: where, which secret (its label), in which form. Never the value."""

    origin: str
    secret: str
    form: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.secret} ({self.form})"


def byte_forms(value: bytes) -> dict[str, str]:
    """The forms of a byte string: raw (when text), base64, hex, 0x hex, hex dump lines."""
    forms: dict[str, str] = {}
    with contextlib.suppress(UnicodeDecodeError):
        forms["raw"] = value.decode()
    b64 = base64.b64encode(value).decode()
    forms["base64"] = b64
    forms["base64 unpadded"] = b64.rstrip("=")
    forms["hex"] = value.hex()
    forms["HEX"] = value.hex().upper()
    forms["0x hex"] = "0x" + value.hex()
    for i in range(0, len(value), 16):
        chunk = value[i : i + 16]
        if len(chunk) < 8 and i:  # a short last line of a dump: too common a few bytes
            continue
        forms[f"hex dump line {i // 16}"] = chunk.hex(" ")
        forms[f"HEX dump line {i // 16}"] = chunk.hex(" ").upper()
    return forms


def psk_forms(psk: str | bytes) -> dict[str, str]:
    """Every form a PSK could leak in."""
    return byte_forms(psk.encode() if isinstance(psk, str) else psk)


def key_forms(pem: str) -> dict[str, str]:
    """Every form a PEM private key could leak in: its DER's forms, its body's lines, the
    PEM text base64'd."""
    found = _PEM.search(pem)
    if found is None:
        raise ValueError("not a PEM block")
    lines = [line.strip() for line in found.group(1).splitlines() if line.strip()]
    der = base64.b64decode("".join(lines))
    forms = {k: v for k, v in byte_forms(der).items() if k != "raw"}
    for i, line in enumerate(lines):
        forms[f"pem line {i}"] = line
    forms["base64 of pem"] = base64.b64encode(pem.encode()).decode()
    return forms


@dataclass
class SecretRegistry:
    """The secrets a session made, and the text to scan for them (see the module doc)."""

    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)
    #: What could not be fetched to scan (said in the session's summary).
    gaps: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_psk(self, psk: str | bytes, label: str) -> None:
        """Register a PSK (the value, not its base64) under `label`."""
        with self._lock:
            self.secrets[f"psk {label}"] = psk_forms(psk)

    def add_key(self, pem: str, label: str) -> None:
        """Register a PEM private key under `label`."""
        with self._lock:
            self.secrets[f"key {label}"] = key_forms(pem)

    def add_log(self, path: Path) -> None:
        """A log file to read at scan time (it may still grow until then)."""
        with self._lock:
            if path not in self.logs:
                self.logs.append(path)

    def add_text(self, origin: str, text: str) -> None:
        """Text fetched now (a metrics page, Events, objects) to scan later."""
        with self._lock:
            self.texts.append((origin, text))

    def sources(self) -> Iterator[tuple[str, str]]:
        """(origin, text) of everything to scan; log files are read now."""
        with self._lock:
            logs, texts = list(self.logs), list(self.texts)
        for path in logs:
            if path.exists():
                yield f"log {path.name} ({path.parent.name})", path.read_text(errors="replace")
        yield from texts


def find_leaks(
    secrets: dict[str, dict[str, str]], sources: Iterable[tuple[str, str]]
) -> list[Leak]:
    """Every (origin, secret, form) found; one per form and origin."""
    wanted = [
        (label, form, needle)
        for label, forms in secrets.items()
        for form, needle in forms.items()
        if len(needle) >= MIN_FORM
    ]
    leaks = []
    for origin, text in sources:
        for label, form, needle in wanted:
            if needle in text:
                leaks.append(Leak(origin, label, form))
    return leaks


def assert_no_leaks(registry: SecretRegistry) -> None:
    """Fail with where each secret was found (never the secret itself)."""
    leaks = find_leaks(registry.secrets, registry.sources())
    assert not leaks, "secrets leaked:\n" + "\n".join(str(leak) for leak in leaks)


def sweep_namespace(api: Any, registry: SecretRegistry, namespace: str | None) -> None:
    """Add the Events and VpnTunnels (whole, status included) of `namespace` (None: of all
    namespaces) as the API server has them now."""
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    where = namespace or "all namespaces"
    if namespace is None:
        events = core.list_event_for_all_namespaces()
    else:
        events = core.list_namespaced_event(namespace)
    registry.add_text(f"Events of {where}", json.dumps(api.sanitize_for_serialization(events)))
    try:
        if namespace is None:
            tunnels = custom.list_cluster_custom_object(*TUNNELS)
        else:
            tunnels = custom.list_namespaced_custom_object(*TUNNELS[:2], namespace, TUNNELS[2])
    except ApiException as e:
        if e.status != 404:  # no CRD (a test of the control plane alone): no VpnTunnel
            raise
        return
    registry.add_text(f"VpnTunnels of {where}", json.dumps(tunnels))


def sweep_cluster(api: Any, registry: SecretRegistry) -> None:
    """Add every Event and VpnTunnel the API server still has."""
    sweep_namespace(api, registry, None)


#: The session's registry (one per pytest process).
REGISTRY = SecretRegistry()
