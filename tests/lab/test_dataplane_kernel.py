"""routevpn's data plane on a real IPsec kernel (runs inside the lab's QEMU guest).

Real VTI, VTI6 and XFRM links made by the netlink adapter, and a route-based tunnel
whose CHILD SA reaches INSTALLED with traffic passing (the peer hand-configured).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support import charon, swanctl
from support.netns import netns, veth

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "netns"))
from routevpn.api import naming
from routevpn.dataplane.facts import Change, LinkFacts
from routevpn.dataplane.ipsec import IpsecAdapter
from routevpn.dataplane.netlink import NetlinkAdapter
from routevpn.dataplane.plan import (
    ChildPlan,
    ConnPlan,
    LinkPlan,
    PskCredential,
    RoutePlan,
    Secret,
    TunnelPlan,
)
from support.dataplane import NetnsCallError, in_netns

ip = ipaddress.ip_address
LINKS = [
    LinkPlan(name="vti4096", kind="vti", alias=naming.link_alias("lab", "v4"),
             local=ip("192.0.2.1"), remote=ip("192.0.2.2"), key=4096),
    LinkPlan(name="vti6x", kind="vti6", alias=naming.link_alias("lab", "v6"),
             local=ip("2001:db8::1"), remote=ip("2001:db8::2"), key=4097, mtu=1380),
    LinkPlan(name="xfrm4098", kind="xfrm", alias=naming.link_alias("lab", "x"),
             if_id=4098, underlay="eth0"),
]  # fmt: skip


async def _ensure_all(links: list[LinkPlan]) -> tuple[list[Change], list[Change], list[LinkFacts]]:
    async with NetlinkAdapter() as nl:
        first: list[Change] = []
        second: list[Change] = []
        for link in links:
            first += (await nl.ensure_link("lab/t", link))[1]
        for link in links:
            second += (await nl.ensure_link("lab/t", link))[1]
        return first, second, await nl.links()


def test_vti_vti6_and_xfrm_links_are_created_idempotently() -> None:
    with netns("lablk") as ns:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        first, second, links = in_netns(ns, _ensure_all, LINKS)
        assert [c.action for c in first] == ["created", "configured"] * 3
        assert second == []
        by_name = {link.name: link for link in links}
        v4, v6, x = by_name["vti4096"], by_name["vti6x"], by_name["xfrm4098"]
        assert (v4.kind, v4.ikey, v4.okey, str(v4.remote), v4.up) == (
            "vti",
            4096,
            4096,
            "192.0.2.2",
            True,
        )
        assert (v6.kind, v6.ikey, str(v6.local), v6.mtu) == ("vti6", 4097, "2001:db8::1", 1380)
        assert (x.kind, x.if_id, x.underlay_index) == ("xfrm", 4098, by_name["eth0"].index)
        assert v4.alias == "routevpn:lab/v4"
        assert {lk.group for lk in (v4, v6, x)} == {naming.LINK_GROUP}
        # change an immutable attribute: the link is recreated with the new key
        changed = [dataclasses.replace(LINKS[0], key=5000)]
        again, _, links = in_netns(ns, _ensure_all, changed)
        assert [c.action for c in again][:2] == ["deleted", "created"]
        assert {lk.name: lk for lk in links}["vti4096"].ikey == 5000


async def _finish_then_collect(link: LinkPlan) -> tuple[list[Change], list[Change]]:
    async with NetlinkAdapter() as nl:
        finished = (await nl.ensure_link("lab/t", link))[1]
        return finished, await nl.garbage_collect([])


def test_a_link_created_but_never_marked_is_finished_and_a_foreign_one_left() -> None:
    """The agent killed between a link's create (in routevpn's device group) and its
    alias: the next agent finishes that link; one without the group is someone else's;
    an unmarked one no tunnel wants is collected."""
    x = LINKS[2]
    with netns("labhm") as ns:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        # as routevpn's first request leaves it (builders.build_link): group, no alias
        ns.ip("link", "add", x.name, "group", str(naming.LINK_GROUP), "type", "xfrm",
              "dev", "eth0", "if_id", str(x.if_id))  # fmt: skip
        # the same shape made by someone else: no group
        ns.ip("link", "add", "xfrm4099", "type", "xfrm", "dev", "eth0", "if_id", "4099")
        # a half-made one whose tunnel is gone
        ns.ip("link", "add", "xfrm4100", "group", str(naming.LINK_GROUP), "type", "xfrm",
              "dev", "eth0", "if_id", "4100")  # fmt: skip
        finished, collected = in_netns(ns, _finish_then_collect, x)
        assert [c.action for c in finished] == ["configured"], finished
        collected_links = [c.detail for c in collected if c.what == "link"]
        # the finished one is routevpn's now (its alias), so an empty desired collects it
        # too; the foreign one stays
        assert sorted(collected_links) == [f"{x.name}", "xfrm4100 (created, never marked)"]
        assert "xfrm4099" in ns.ip("-o", "link", "show")
        foreign = dataclasses.replace(x, name="xfrm4099", if_id=4099)
        with pytest.raises(NetnsCallError) as err:
            in_netns(ns, _finish_then_collect, foreign)
        assert err.value.type_name == "LinkNotOwnedError", err.value
        assert "xfrm4099" in ns.ip("-o", "link", "show")


PSK = "lab-psk-0123456789"


async def _apply_links(plan: TunnelPlan) -> list[Change]:
    async with NetlinkAdapter() as nl:
        return await nl.apply(plan)


def test_route_based_tunnel_installs_child_sa_and_passes_traffic() -> None:
    work = Path(tempfile.mkdtemp(prefix="rvlab-"))
    with netns("labn") as node, netns("labp") as peer, veth(node, "eth0", peer, "eth0"):
        node.add_address("eth0", "192.0.2.1/24")
        peer.add_address("eth0", "192.0.2.2/24")
        # the far end, by hand: VTI key 42, inside 169.254.42.2/30
        peer.ip("link", "add", "vti42", "type", "vti", "local", "192.0.2.2",
                "remote", "192.0.2.1", "key", "42")  # fmt: skip
        peer.sysctl("net.ipv4.conf.vti42.disable_policy", "1")
        peer.ip("addr", "add", "169.254.42.2/30", "dev", "vti42")
        peer.ip("link", "set", "vti42", "up")
        conn = naming.conn_name("lab", "t")
        plan = TunnelPlan(
            ref="lab/t",
            conn=ConnPlan(name=conn, local_addrs=("192.0.2.1",), remote_addrs=("192.0.2.2",),
                          local_id="node.example", remote_id="peer.example",
                          proposals=("aes256-sha256-x25519",),
                          child=ChildPlan(esp_proposals=("aes256gcm16-x25519",))),
            auth=PskCredential(Secret(PSK)),
            link=LinkPlan(name="vti4096", kind="vti", alias=naming.link_alias("lab", "t"),
                          local=ip("192.0.2.1"), remote=ip("192.0.2.2"), key=4096),
            addresses=(ipaddress.ip_interface("169.254.42.1/30"),),
            routes=(RoutePlan(ipaddress.ip_network("203.0.113.0/24"), "vti4096",
                              via=ip("169.254.42.2")),),
        )  # fmt: skip
        with charon.running(node, work / "node") as nc, charon.running(peer, work / "peer") as pc:
            swanctl.write_and_load(peer, pc.uri, work / "peer/swanctl.conf", [swanctl.Conn(
                name="peer", local_addrs="192.0.2.2", remote_addrs="192.0.2.1",
                local_id="peer.example", remote_id="node.example", psk=PSK,
                children=[swanctl.Child("peer", mark=42)])])  # fmt: skip
            assert in_netns(node, _apply_links, plan)
            assert in_netns(node, _apply_links, plan) == []

            async def up() -> str:
                ad = IpsecAdapter(str(nc.vici_socket))
                await ad.load(plan)
                await ad.initiate(conn)
                deadline = time.monotonic() + 60
                while True:
                    sas = await ad.sas(conn)
                    states = [c.state for sa in sas for c in sa.children]
                    if "INSTALLED" in states:
                        ad.close()
                        return states[0]
                    assert time.monotonic() < deadline, f"CHILD SA not installed: {sas}"
                    await asyncio.sleep(0.2)

            assert asyncio.run(up()) == "INSTALLED"
            deadline = time.monotonic() + 30
            while True:
                out = node.run("busybox", "ping", "-c", "1", "-W", "2", "169.254.42.2", check=False)
                if " 0% packet loss" in out:
                    break
                assert time.monotonic() < deadline, out
            xfrm = node.ip("-s", "xfrm", "state")
            assert "mark 0x1000/0xffffffff" in xfrm
