"""Shared pieces of the API models: the base class and the CEL-rule helper.

Every model is strict about unknown fields (a typo must fail, not be ignored), speaks
camelCase on the wire like every Kubernetes API, and is immutable once parsed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

#: Key under which models and fields carry their CEL rules into the generated CRD.
CEL_KEY = "x-kubernetes-validations"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; `message` must name the field at fault."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def cel_string(text: str) -> str:
    """`text` as the body of a single-quoted CEL string literal (backslashes doubled)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules for a model or a field."""
    return {CEL_KEY: list(entries)}


#: Key under which a list field carries CEL rules for each of its items; the CRD generator
#: moves them into `items` (pydantic would otherwise replace the generated `items` schema).
ITEMS_CEL_KEY = "x-routevpn-item-validations"


def item_rules(*entries: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules for each item of a list field."""
    return {ITEMS_CEL_KEY: list(entries)}


class ApiModel(BaseModel):
    """Base of every VpnTunnel API type."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
        validate_default=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude_unset=True)
