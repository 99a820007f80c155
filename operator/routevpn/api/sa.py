"""The IKE SA and the CHILD SA (ESP): proposals, lifetimes, DPD, selectors."""

from __future__ import annotations

from typing import Final

from pydantic import Field, ValidationInfo, field_validator, model_validator

from routevpn.api.base import ApiModel, cel, item_rules, rules
from routevpn.api.fields import (
    Cidr,
    DpdAction,
    Duration,
    Encapsulation,
    Proposal,
    StartAction,
    Toggle,
    check_cidr,
    check_lifetimes,
    check_proposals,
    lifetime_rule,
    weak_proposal_rule,
)

# --- IKE and CHILD SA -------------------------------------------------------------------

IKE_DEFAULT_PROPOSALS: Final = ("aes256gcm16-prfsha384-ecp384", "aes256-sha384-ecp384")
ESP_DEFAULT_PROPOSALS: Final = ("aes256gcm16-ecp384", "aes256-sha384-ecp384")
IKE_LIFETIMES: Final = ("4h", "20m", "10m")
CHILD_LIFETIMES: Final = ("1h", "9m", "3m")


class Dpd(ApiModel):
    """Dead peer detection."""

    delay: Duration | None = Field(
        default=None, description="Interval of liveness checks when idle. Default: 30s."
    )
    timeout: Duration | None = Field(
        default=None,
        description="IKEv1 only: declare the peer dead after this long. Default: 150s.",
    )
    action: DpdAction | None = Field(
        default=None,
        description=(
            "What happens to the CHILD SA when the peer is dead: `restart` (re-initiate, the "
            "default: a route-based tunnel should come back by itself), `clear`, `trap`, `none`."
        ),
    )


class Ike(ApiModel):
    """The IKE SA (phase 1)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(
            lifetime_rule("spec.ike", *IKE_LIFETIMES),
            cel(
                "!has(self.dpd) || !has(self.dpd.timeout) || "
                "(has(self.version) && self.version == 1)",
                "spec.ike.dpd.timeout: only for IKEv1 (IKEv2 declares a peer dead when its "
                "retransmissions run out)",
            ),
        )
    }

    version: int | None = Field(
        default=None,
        ge=1,
        le=2,
        description="IKE version, 1 or 2. Default: 2 (use 1 only for peers that can't do 2).",
    )
    proposals: list[Proposal] | None = Field(
        default=None,
        max_length=16,
        description=(
            "IKE proposals in strongSwan syntax, most preferred first. Default: "
            + ", ".join(IKE_DEFAULT_PROPOSALS)
            + ". Never null encryption or a broken algorithm (DES, 3DES, MD5, modp768, "
            "modp1024)."
        ),
        json_schema_extra=item_rules(weak_proposal_rule("spec.ike.proposals[]")),
    )
    lifetime: Duration | None = Field(
        default=None,
        description=f"Hard lifetime of the IKE SA. Default: {IKE_LIFETIMES[0]}.",
    )
    rekey_margin: Duration | None = Field(
        default=None,
        description=f"Rekey this long before the lifetime ends. Default: {IKE_LIFETIMES[1]}.",
    )
    rekey_fuzz: Duration | None = Field(
        default=None,
        description=(
            "Rekey up to this much earlier still, at random, so both ends don't rekey at "
            f"once. Default: {IKE_LIFETIMES[2]}."
        ),
    )
    reauth_time: Duration | None = Field(
        default=None,
        description=(
            "Re-authenticate (make a new IKE SA) this often; 0s never. Default: 0s. A "
            "re-authentication loses up to a round trip of packets, a rekey none: "
            "prefer rekeying."
        ),
    )
    dpd: Dpd | None = Field(default=None, description="Dead peer detection.")
    encapsulation: Encapsulation | None = Field(
        default=None,
        description=(
            "`auto` (UDP-encapsulate ESP only when NAT is detected; the default) or `force` "
            "(always; for paths that drop plain ESP)."
        ),
    )
    mobike: Toggle | None = Field(
        default=None,
        description=(
            "IKEv2 MOBIKE (address changes without a new SA). Default: disabled, as fits a "
            "site-to-site tunnel between fixed addresses."
        ),
    )

    @field_validator("proposals")
    @classmethod
    def _strong(cls, v: list[str] | None) -> list[str] | None:
        return check_proposals("spec.ike.proposals", v)

    @model_validator(mode="after")
    def _lifetimes_ordered(self) -> Ike:
        if self.dpd is not None and self.dpd.timeout is not None and self.version != 1:
            raise ValueError("spec.ike.dpd.timeout: only for IKEv1")
        check_lifetimes(
            "spec.ike", self.lifetime, self.rekey_margin, self.rekey_fuzz, IKE_LIFETIMES
        )
        return self


class TrafficSelectors(ApiModel):
    """Which traffic the CHILD SA protects."""

    local: list[Cidr] = Field(
        min_length=1,
        max_length=32,
        description="Local subnets (CIDRs).",
        json_schema_extra=item_rules(
            cel("isCIDR(self)", "spec.child.trafficSelectors.local[]: must be a CIDR")
        ),
    )
    remote: list[Cidr] = Field(
        min_length=1,
        max_length=32,
        description="Remote subnets (CIDRs).",
        json_schema_extra=item_rules(
            cel("isCIDR(self)", "spec.child.trafficSelectors.remote[]: must be a CIDR")
        ),
    )

    @field_validator("local", "remote")
    @classmethod
    def _cidrs(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for item in v:
            check_cidr(item, f"spec.child.trafficSelectors.{info.field_name}")
        return v


class Child(ApiModel):
    """The CHILD SA (phase 2, ESP)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": rules(lifetime_rule("spec.child", *CHILD_LIFETIMES))
    }

    proposals: list[Proposal] | None = Field(
        default=None,
        max_length=16,
        description=(
            "ESP proposals in strongSwan syntax (a DH group gives PFS), most preferred first. "
            "Default: " + ", ".join(ESP_DEFAULT_PROPOSALS) + ". Never null encryption or a "
            "broken algorithm (DES, 3DES, MD5, modp768, modp1024)."
        ),
        json_schema_extra=item_rules(weak_proposal_rule("spec.child.proposals[]")),
    )
    lifetime: Duration | None = Field(
        default=None, description=f"Hard lifetime of the CHILD SA. Default: {CHILD_LIFETIMES[0]}."
    )
    rekey_margin: Duration | None = Field(
        default=None,
        description=f"Rekey this long before the lifetime ends. Default: {CHILD_LIFETIMES[1]}.",
    )
    rekey_fuzz: Duration | None = Field(
        default=None,
        description=(
            f"Rekey up to this much earlier still, at random. Default: {CHILD_LIFETIMES[2]}."
        ),
    )
    replay_window: int | None = Field(
        default=None,
        ge=0,
        le=4096,
        description="Anti-replay window in packets; 0 disables replay protection. Default: 32.",
    )
    start_action: StartAction | None = Field(
        default=None,
        description=(
            "`start` (bring the tunnel up at once and keep it up; the default), `trap` (on the "
            "first packet), `none` (only when the peer initiates)."
        ),
    )
    traffic_selectors: TrafficSelectors | None = Field(
        default=None,
        description=(
            "Protected traffic. Route mode: default 0.0.0.0/0 and ::/0 both ways (the interface "
            "and its routes decide what enters the tunnel). Policy mode: required."
        ),
    )
    per_family: bool | None = Field(
        default=None,
        description=(
            "Route mode: negotiate one CHILD SA per IP family (0.0.0.0/0 and ::/0 each) "
            "instead of one for both. For a peer that narrows the traffic selectors to one "
            "family (status: ChildSaInstalled False, reason TrafficSelectorsNarrowed). Both "
            "CHILD SAs share the interface's mark; the tunnel's routes are Active only while "
            "both are installed. Default: false."
        ),
    )

    @field_validator("proposals")
    @classmethod
    def _strong(cls, v: list[str] | None) -> list[str] | None:
        return check_proposals("spec.child.proposals", v)

    @model_validator(mode="after")
    def _lifetimes_ordered(self) -> Child:
        check_lifetimes(
            "spec.child", self.lifetime, self.rekey_margin, self.rekey_fuzz, CHILD_LIFETIMES
        )
        return self
