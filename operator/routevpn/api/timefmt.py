"""Kubernetes timestamps: the one place they are formatted and parsed.

`metav1.Time` is RFC 3339 in UTC to the second (`2026-12-01T08:00:00Z`); the API server
stores exactly that, so a value written with sub-seconds would never compare equal to
what comes back. `metav1.MicroTime` (Events' eventTime, Leases' renewTime) keeps
microseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime

_TIME = "%Y-%m-%dT%H:%M:%SZ"
_MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


def k8s_time(when: datetime) -> str:
    """`when` as a metav1.Time string."""
    return when.astimezone(UTC).strftime(_TIME)


def k8s_micro_time(when: datetime) -> str:
    """`when` as a metav1.MicroTime string."""
    return when.astimezone(UTC).strftime(_MICRO)


def parse_k8s_time(text: object) -> datetime | None:
    """A metav1.Time or MicroTime string (or any RFC 3339 with an offset), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
