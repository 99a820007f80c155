"""The secret scanner (support.secretscan) finds a PSK and a private key in every form
they could leak in, names where without the secret, and its check fails on a leak.

The leaks are planted here the way each would happen (written out independently of the
scanner's own list of forms), so a form the scanner forgot fails here."""

from __future__ import annotations

import base64
import json
import secrets
import textwrap
from pathlib import Path

import pytest

from support.secretscan import SecretRegistry, assert_no_leaks, find_leaks, psk_forms

pytestmark = pytest.mark.unit

PSK = "Pre-Shared-" + secrets.token_urlsafe(18)


def _pem() -> tuple[str, bytes]:
    """A PEM private key (random DER: the scanner never parses it) and its DER."""
    der = secrets.token_bytes(138)
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n", der


def _strongswan_dump(data: bytes) -> str:
    """charon's `%B` debug dump: offset, 16 bytes as upper-case hex, the ASCII column."""
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{i:4d}: {chunk.hex(' ').upper():<47}  {ascii_}")
    return "=> 32 bytes @ 0x7f00aa\n" + "\n".join(lines)


PSK_LEAKS = {
    "raw": f'level=info msg="loaded" psk={PSK}',
    "base64": f'"data": {{"psk": "{base64.b64encode(PSK.encode()).decode()}"}}',
    "hex": f"secret {PSK.encode().hex()} loaded",
    "HEX": f"SECRET={PSK.encode().hex().upper()}",
    "0x hex": f"secret = 0x{PSK.encode().hex()}",
    "strongSwan hex dump": _strongswan_dump(PSK.encode()),
    "in a JSON log line": json.dumps({"msg": "shared key", "key": PSK}),
}


@pytest.mark.parametrize("how", sorted(PSK_LEAKS))
def test_finds_a_psk_in_each_form(how: str) -> None:
    reg = SecretRegistry()
    reg.add_psk(PSK, "ns/psk")
    leaks = find_leaks(reg.secrets, [("agent.log", f"before\n{PSK_LEAKS[how]}\nafter")])
    assert leaks and {leak.secret for leak in leaks} == {"psk ns/psk"}


def _key_leaks(pem: str, der: bytes) -> dict[str, str]:
    lines = pem.splitlines()
    return {
        "PEM as is": f"key:\n{pem}",
        "one PEM body line": f"... {lines[2]} ...",
        "PEM in a JSON string": json.dumps({"tls.key": pem}),
        "base64 of the PEM (a Secret's data)": base64.b64encode(pem.encode()).decode(),
        "DER base64 on one line": base64.b64encode(der).decode(),
        "DER hex": der.hex(),
        "DER 0x hex": "0x" + der.hex(),
        "strongSwan hex dump of the DER": _strongswan_dump(der),
    }


def test_finds_a_private_key_in_each_form() -> None:
    pem, der = _pem()
    reg = SecretRegistry()
    reg.add_key(pem, "peer.example")
    for how, text in _key_leaks(pem, der).items():
        leaks = find_leaks(reg.secrets, [("Events", f"x {text} y")])
        assert leaks, f"missed: {how}"
        assert {leak.secret for leak in leaks} == {"key peer.example"}


def test_clean_text_and_other_secrets_find_nothing() -> None:
    pem, _ = _pem()
    reg = SecretRegistry()
    reg.add_psk(PSK, "a")
    reg.add_key(pem, "b")
    other = "Pre-Shared-" + secrets.token_hex(12)
    texts = [("log", f"psk={other} {base64.b64encode(other.encode()).decode()}"),
             ("status", json.dumps({"conditions": [{"reason": "Ready"}]}))]  # fmt: skip
    assert find_leaks(reg.secrets, texts) == []


def test_short_forms_are_not_looked_for() -> None:
    # a 3-byte PSK's raw and hex forms would match innocent text everywhere
    forms = psk_forms("abc")
    assert find_leaks({"psk tiny": forms}, [("log", "abc 616263 YWJj")]) == []


def test_the_check_fails_on_a_planted_leak_and_never_shows_the_secret(tmp_path: Path) -> None:
    reg = SecretRegistry()
    reg.add_psk(PSK, "tenant/psk")
    log = tmp_path / "operator-0.log"
    log.write_text("started\nall good\n")
    reg.add_log(log)
    reg.add_text("operator /metrics", "routevpn_operator_leader 1\n")
    assert_no_leaks(reg)  # clean so far
    with log.open("a") as f:  # the log grows after it was registered: read at scan time
        f.write(f"oops {base64.b64encode(PSK.encode()).decode()}\n")
    reg.add_text("VpnTunnels of all namespaces", json.dumps({"status": {"x": PSK}}))
    with pytest.raises(AssertionError) as failed:
        assert_no_leaks(reg)
    message = str(failed.value)
    assert "operator-0.log" in message and "VpnTunnels of all namespaces" in message
    assert "psk tenant/psk (base64)" in message and "psk tenant/psk (raw)" in message
    assert PSK not in message and base64.b64encode(PSK.encode()).decode() not in message


def test_a_missing_log_is_skipped() -> None:
    reg = SecretRegistry()
    reg.add_psk(PSK, "p")
    reg.add_log(Path("/nonexistent/relcl/agent.log"))
    assert_no_leaks(reg)
