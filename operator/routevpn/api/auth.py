"""The two IKE endpoints and how they authenticate each other."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from routevpn.api.base import ApiModel, cel, cel_string, rules
from routevpn.api.fields import (
    DNS_NAME,
    UNICAST_CEL,
    UNICAST_MSG,
    AuthType,
    Identity,
    check_unicast,
)

# --- endpoints and auth ---------------------------------------------------------------


class LocalEndpoint(ApiModel):
    """This side of the tunnel: the node's IKE endpoint."""

    address: str | None = Field(
        default=None,
        max_length=45,
        description=(
            "Outer IP address IKE and ESP use on the node (IPv4 or IPv6). Must be configured "
            "on the node. Default: the node's InternalIP of the remote address's family."
        ),
        json_schema_extra=rules(
            cel("isIP(self)", "spec.local.address: must be an IP address, e.g. 2001:db8:0:1::1"),
            cel(f"!isIP(self) || {UNICAST_CEL}", f"spec.local.address: {UNICAST_MSG}"),
        ),
    )
    id: Identity | None = Field(
        default=None,
        description=(
            "IKE identity this side presents (an IP, a FQDN such as @vpn.example.org, an "
            "e-mail, or an X.509 DN). Default: the local address, or the certificate's "
            "subject with x509 auth."
        ),
    )

    @field_validator("address")
    @classmethod
    def _address_is_ip(cls, v: str | None) -> str | None:
        return None if v is None else check_unicast(v, "spec.local.address")


class RemoteEndpoint(ApiModel):
    """The far end: the peer's IKE endpoint."""

    address: str = Field(
        max_length=253,
        description=(
            "The peer's outer IP address, or a DNS name resolved by charon when it initiates."
        ),
        json_schema_extra=rules(
            cel(
                f"isIP(self) || self.matches('{cel_string(DNS_NAME.pattern)}')",
                "spec.remote.address: must be an IP address or a DNS name",
            ),
            cel(f"!isIP(self) || {UNICAST_CEL}", f"spec.remote.address: {UNICAST_MSG}"),
        ),
    )
    id: Identity | None = Field(
        default=None,
        description=(
            "IKE identity the peer must present. Default: the peer's address (with x509 auth "
            "set it to the peer certificate's subject or a subjectAltName)."
        ),
    )

    @field_validator("address")
    @classmethod
    def _address_is_ip_or_name(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
            return check_unicast(v, "spec.remote.address")
        except ValueError as err:
            if str(err).startswith("spec.remote.address"):
                raise
            if not DNS_NAME.match(v):
                raise ValueError(
                    f"spec.remote.address: must be an IP address or a DNS name (got {v!r})"
                ) from None
        return v


class SecretKeyRef(ApiModel):
    """A key of a Secret in the tunnel's own namespace."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Key within the Secret's data.",
    )


class PskAuth(ApiModel):
    """Pre-shared key authentication."""

    secret_ref: SecretKeyRef = Field(
        description=(
            "An Opaque Secret holding the pre-shared key (key default: `psk`), labelled "
            "`routevpn.io/usage: ike` (the opt-in without which no Secret is used). Use at "
            "least 32 random bytes; only that key is delivered to the node's agent, and it "
            "is never written to status."
        ),
    )


class X509Auth(ApiModel):
    """Certificate authentication, from a `kubernetes.io/tls` Secret as cert-manager writes it."""

    secret_ref: SecretKeyRef = Field(
        description=(
            "A `kubernetes.io/tls` Secret labelled `routevpn.io/usage: ike`, with `tls.crt` "
            "(this side's certificate, chain allowed) and `tls.key` (its private key). `key` "
            "is ignored."
        ),
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "The CA certificate(s) that issued the peer's certificate (key default: "
            "`ca.crt`), in a Secret labelled `routevpn.io/usage: ike`. Default: `ca.crt` of "
            "secretRef, as cert-manager writes it."
        ),
    )


class Auth(ApiModel):
    """How the peers authenticate each other."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            cel(
                "self.type != 'psk' || has(self.psk)",
                "spec.auth.psk: required when spec.auth.type is psk (a secretRef to the Secret "
                "holding the pre-shared key)",
            ),
            cel(
                "self.type != 'x509' || has(self.x509)",
                "spec.auth.x509: required when spec.auth.type is x509 (a secretRef to a "
                "kubernetes.io/tls Secret)",
            ),
            cel(
                "(self.type == 'psk' || !has(self.psk)) && "
                "(self.type == 'x509' || !has(self.x509))",
                "spec.auth: set only the block that spec.auth.type names (psk or x509)",
            ),
        )
    }

    type: AuthType = Field(description="`psk` (pre-shared key) or `x509` (certificates).")
    psk: PskAuth | None = Field(default=None, description="Pre-shared key; with type `psk`.")
    x509: X509Auth | None = Field(default=None, description="Certificates; with type `x509`.")

    @model_validator(mode="after")
    def _block_matches_type(self) -> Auth:
        if self.type is AuthType.PSK and self.psk is None:
            raise ValueError("spec.auth.psk: required when spec.auth.type is psk")
        if self.type is AuthType.X509 and self.x509 is None:
            raise ValueError("spec.auth.x509: required when spec.auth.type is x509")
        if (self.type is AuthType.PSK and self.x509 is not None) or (
            self.type is AuthType.X509 and self.psk is not None
        ):
            raise ValueError("spec.auth: set only the block that spec.auth.type names")
        return self
