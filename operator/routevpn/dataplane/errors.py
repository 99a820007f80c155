"""Typed data-plane errors: each names the tunnel (`namespace/name`) it is about.

The agent turns these into conditions (reason + message); nothing here ever carries a
key or a whole VICI message.
"""

from __future__ import annotations

import errno as _errno


class DataplaneError(Exception):
    """Base: something on the node could not be made as the plan says."""

    reason = "DataplaneError"

    def __init__(self, ref: str, message: str) -> None:
        super().__init__(f"tunnel {ref}: {message}")
        self.ref = ref
        self.message = message


class NetlinkOperationError(DataplaneError):
    """A netlink request failed with an errno that does not mean "already so"."""

    reason = "NetlinkError"

    def __init__(self, ref: str, operation: str, code: int, detail: str = "") -> None:
        name = _errno.errorcode.get(code, str(code))
        extra = f" ({detail})" if detail else ""
        super().__init__(ref, f"{operation} failed: {name} {code}{extra}")
        self.operation = operation
        self.code = code


class LinkNotOwnedError(DataplaneError):
    """The plan's interface name is taken by a link routevpn did not create."""

    reason = "InterfaceNameTaken"


class SysctlError(DataplaneError):
    """A sysctl could not be read or written."""

    reason = "SysctlFailed"


class IpsecError(DataplaneError):
    """charon refused a VICI command (load-conn, load-shared, initiate, ...)."""

    reason = "IpsecConfigRejected"


class CharonUnavailableError(DataplaneError):
    """The VICI socket cannot be reached (charon down or restarting)."""

    reason = "CharonUnavailableError"


class RouteNotOwnedError(DataplaneError):
    """A route with the plan's (dst, table, metric) exists and is not routevpn's."""

    reason = "RouteConflict"
