"""A throwaway X.509 CA and end-entity certificates for IKE tests, made with openssl.

Keys are ECDSA P-256 (fast to generate, understood by charon's openssl plugin). Each
end-entity certificate carries its identity as a subjectAltName (DNS name), which
is what charon matches an IKE identity against. Every private key made here is registered
for the secret scan (support.secretscan).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.secretscan import REGISTRY


def have_openssl() -> bool:
    """True when the `openssl` command is available."""
    return shutil.which("openssl") is not None


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


@dataclass(frozen=True)
class Issued:
    """An end-entity certificate and its key (PEM text and the files they live in)."""

    identity: str
    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> str:
        """The certificate as PEM text."""
        return self.cert_path.read_text()

    @property
    def key_pem(self) -> str:
        """The private key as PEM text (PKCS#8)."""
        return self.key_path.read_text()


class TestCA:
    """A self-signed CA in `workdir` that issues certificates for IKE identities."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, workdir: Path, name: str = "routevpn test CA") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.key_path = workdir / "ca.key"
        self.cert_path = workdir / "ca.pem"
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", str(self.key_path))  # fmt: skip
        _openssl("req", "-x509", "-new", "-key", str(self.key_path), "-days", "2",
                 "-subj", f"/CN={name}", "-out", str(self.cert_path),
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
        REGISTRY.add_key(self.key_path.read_text(), f"CA {name}")

    @property
    def cert_pem(self) -> str:
        """The CA certificate as PEM text."""
        return self.cert_path.read_text()

    def issue(self, identity: str) -> Issued:
        """A certificate for `identity` (a DNS-style IKE id), signed by this CA."""
        # identities hold dots ("peer.example"): append suffixes, never replace one
        stem = str(self.workdir / identity.replace("/", "_"))
        key, csr, cert, ext = (Path(f"{stem}.{s}") for s in ("key", "csr", "pem", "ext"))
        ext.write_text(f"subjectAltName=DNS:{identity}\nkeyUsage=critical,digitalSignature\n")
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", str(key))  # fmt: skip
        _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={identity}", "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert_path),
                 "-CAkey", str(self.key_path), "-CAcreateserial", "-days", "2",
                 "-extfile", str(ext), "-out", str(cert))  # fmt: skip
        REGISTRY.add_key(key.read_text(), identity)  # for the secret scan
        return Issued(identity, cert, key)
