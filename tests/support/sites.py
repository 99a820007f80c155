"""The reference two-site topology: two namespaces joined by a veth, a charon each.

This is the yardstick routevpn must match. The lab's reference scenario configures
both sites by hand (``ip`` commands, swanctl.conf); routevpn's end-to-end test reuses
the same topology with one site configured by routevpn instead.

    site "left"  wan 192.0.2.1/24, 2001:db8:0:1::1/64  ── veth ──  site "right"
                 lan 198.51.100.1/24, 2001:db8:a::1/64      wan 192.0.2.2/24, 2001:db8:0:2::1/64
                                                             lan 203.0.113.1/24, 2001:db8:b::1/64
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .charon import Charon, running
from .netns import Netns, check_test_address, netns, veth


@dataclass(frozen=True)
class SitePlan:
    """Addresses of one site (all in test ranges)."""

    name: str
    wan4: str
    wan6: str
    lan4: str
    lan6: str

    @property
    def outer4(self) -> str:
        """The IPv4 IKE endpoint (wan address without prefix length)."""
        return self.wan4.split("/")[0]

    @property
    def outer6(self) -> str:
        """The IPv6 IKE endpoint."""
        return self.wan6.split("/")[0]

    @property
    def host4(self) -> str:
        """The LAN's own IPv4 address: the source of test traffic."""
        return self.lan4.split("/")[0]

    @property
    def host6(self) -> str:
        """The LAN's own IPv6 address."""
        return self.lan6.split("/")[0]

    @property
    def net4(self) -> str:
        """The LAN's IPv4 prefix (what the far side routes into the tunnel)."""
        return str(ipaddress.ip_interface(self.lan4).network)

    @property
    def net6(self) -> str:
        """The LAN's IPv6 prefix."""
        return str(ipaddress.ip_interface(self.lan6).network)


LEFT = SitePlan("left", "192.0.2.1/24", "2001:db8:0:1::1/64", "198.51.100.1/24", "2001:db8:a::1/64")
RIGHT = SitePlan(
    "right", "192.0.2.2/24", "2001:db8:0:2::1/64", "203.0.113.1/24", "2001:db8:b::1/64"
)


@dataclass
class Site:
    """One live site: its namespace, plan, WAN interface and (optional) charon."""

    plan: SitePlan
    ns: Netns
    wan: str
    workdir: Path
    charon: Charon | None

    @property
    def uri(self) -> str:
        """VICI URI of this site's charon."""
        assert self.charon is not None, f"site {self.plan.name} runs no charon"
        return self.charon.uri

    def vti(self, name: str, local: str, remote: str, key: int) -> None:
        """A VTI (``vti``, or ``vti6`` for IPv6 endpoints) bound to mark `key`, up.

        The policy check on the interface is off: the SA's mark, not a policy lookup,
        decides what the tunnel accepts.
        """
        kind = "vti6" if ipaddress.ip_address(local).version == 6 else "vti"
        self.ns.ip(
            "link", "add", name, "type", kind, "local", local, "remote", remote, "key", str(key)
        )
        self.ns.sysctl(f"net.ipv4.conf.{name}.disable_policy", "1")
        self.ns.sysctl(f"net.ipv6.conf.{name}.disable_policy", "1")
        self.ns.ip("link", "set", name, "up")

    def xfrm(self, name: str, if_id: int) -> None:
        """An XFRM interface with `if_id` on top of the WAN link, up."""
        self.ns.ip("link", "add", name, "type", "xfrm", "dev", self.wan, "if_id", str(if_id))
        self.ns.ip("link", "set", name, "up")

    def address(self, dev: str, cidr: str) -> None:
        """Add a (test-range) address to `dev`."""
        self.ns.add_address(dev, cidr)

    def route(self, prefix: str, *, via: str | None = None, dev: str | None = None) -> None:
        """``ip route replace PREFIX [via VIA] [dev DEV]`` in this site."""
        check_test_address(prefix)
        fam = "-6" if ipaddress.ip_network(prefix).version == 6 else "-4"
        args = [fam, "route", "replace", prefix]
        args += ["via", via] if via else []
        args += ["dev", dev] if dev else []
        self.ns.ip(*args)

    def ping(self, dst: str, *, src: str | None = None, count: int = 3) -> str:
        """Ping `dst` (from `src`); raise AssertionError with ping's output on loss."""
        argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "5", "-n"]
        argv += ["-I", src] if src else []
        proc = subprocess.run(self.ns.argv(*argv, dst), capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(
                f"{self.plan.name}: ping {dst} from {src} failed: {proc.stdout}{proc.stderr}"
            )
        return proc.stdout


def _bring_up(site: Site) -> None:
    ns, p = site.ns, site.plan
    site.address(site.wan, p.wan4)
    site.address(site.wan, p.wan6)
    ns.ip("link", "add", "lan", "type", "dummy")
    ns.ip("link", "set", "lan", "up")
    site.address("lan", p.lan4)
    site.address("lan", p.lan6)


@contextmanager
def two_sites(
    workdir: Path,
    *,
    left: SitePlan = LEFT,
    right: SitePlan = RIGHT,
    wan: str = "wan",
    charons: tuple[bool, bool] = (True, True),
    charon_extra: Mapping[str, str] | None = None,
) -> Iterator[tuple[Site, Site]]:
    """Both sites, linked and addressed, each with a running charon unless told not to
    (`charon_extra`: strongswan.conf settings for both, see `render_strongswan_conf`).

    The IPv6 WAN addresses sit in different /64s (as real sites do), so each side
    gets an on-link host route to the other's. Everything is torn down on exit.
    """
    with ExitStack() as stack:
        a = stack.enter_context(netns(left.name[:6]))
        b = stack.enter_context(netns(right.name[:6]))
        stack.enter_context(veth(a, wan, b, wan))
        sites = []
        for ns, plan in ((a, left), (b, right)):
            site = Site(plan, ns, wan, workdir / plan.name, None)
            _bring_up(site)
            sites.append(site)
        lsite, rsite = sites
        lsite.route(f"{right.outer6}/128", dev=wan)
        rsite.route(f"{left.outer6}/128", dev=wan)
        for site, want in zip(sites, charons, strict=True):
            if want:
                site.charon = stack.enter_context(
                    running(site.ns, site.workdir / "charon", extra=charon_extra)
                )
        yield lsite, rsite
