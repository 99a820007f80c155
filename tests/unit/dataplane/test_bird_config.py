"""BIRD's configuration from BgpPlans: the text, the tenants kept apart, and BIRD's own parser.

The parser check runs the real `bird -p` (parse only: no privileges, no sockets, no
network namespace), so a rendered file BIRD would refuse fails here, not on a node.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from routevpn.api import naming
from routevpn.dataplane.bird_config import BirdSettings, render
from routevpn.dataplane.plan import BgpPlan, PlanError
from support.tiers import missing

net = ipaddress.ip_network
ip = ipaddress.ip_address
SETTINGS = BirdSettings(router_id=ipaddress.IPv4Address("192.0.2.1"))
FORBIDDEN4 = (net("127.0.0.0/8"), net("169.254.0.0/16"), net("192.0.2.1/32"))
FORBIDDEN6 = (net("::1/128"), net("fe80::/10"), net("2001:db8:0:1::1/128"))


def session(
    ifname: str = "vti1",
    version: int = 4,
    ref: str = "team-a/site-b",
    **changes: object,
) -> BgpPlan:
    """A typical session; `changes` replace fields."""
    v4 = version == 4
    plan = BgpPlan(
        ref=ref,
        protocol=naming.bgp_protocol(ifname, version),
        interface=ifname,
        local_address=ip("169.254.10.1" if v4 else "2001:db8:ff::1"),
        peer_address=ip("169.254.10.2" if v4 else "2001:db8:ff::2"),
        local_asn=64512,
        peer_asn=65001,
        accept=(net("198.51.100.0/24" if v4 else "2001:db8:200::/48"),),
        advertise=(net("192.0.2.0/24" if v4 else "2001:db8:100::/48"),),
        forbidden=FORBIDDEN4 if v4 else FORBIDDEN6,
    )
    return replace(plan, **changes)  # type: ignore[arg-type]


def block(text: str, head: str) -> str:
    """The `{...}` block that starts with `head` (nested braces included)."""
    start = text.index(head + " {")
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0 and text[i] == "}":
            return text[start : i + 1]
    raise AssertionError(f"unterminated block {head}")


def bird_parse(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    bird = shutil.which("bird") or ("/usr/sbin/bird" if Path("/usr/sbin/bird").exists() else None)
    if bird is None:
        missing("bird (Debian bird2): apt-get install bird2")
        raise AssertionError("unreachable")
    conf = tmp_path / "bird.conf"
    conf.write_text(text)
    return subprocess.run(
        [bird, "-p", "-c", str(conf)], capture_output=True, text=True, check=False, timeout=60
    )


# --- the text ------------------------------------------------------------------------------


def test_typical_session_renders_its_filters_protocols_and_kernel() -> None:
    text = render([session(bfd=True)], SETTINGS)
    assert "router id 192.0.2.1;" in text
    imp = block(text, "filter bgp4_vti1_in")
    assert "if net.type != NET_IP4 then reject;" in imp
    assert "if net.len = 0 then reject;" in imp
    assert "if ! (net ~ [ 198.51.100.0/24+ ]) then reject;" in imp
    assert "if net ~ [ 127.0.0.0/8+, 169.254.0.0/16+, 192.0.2.1/32+ ] then reject;" in imp
    assert "if 192.0.2.1/32 ~ net then reject;" in imp  # a supernet of the node's address
    # the next hop is the peer on the tunnel's own interface, whatever the peer said
    assert imp.index('ifname = "vti1";') < imp.index("gw = 169.254.10.2;")
    assert imp.rstrip("}").rstrip().endswith("accept;")
    exp = block(text, "filter bgp4_vti1_out")
    assert 'if proto != "bgp4_vti1_adv" then reject;' in exp
    assert "if net ~ [ 192.0.2.0/24 ] then accept;" in exp
    bgp = block(text, "protocol bgp bgp4_vti1")
    for line in (
        "local 169.254.10.1 as 64512;",
        "neighbor 169.254.10.2 as 65001;",
        'interface "vti1";',
        "hold time 30;",
        "keepalive time 10;",
        "error wait time 5, 60;",  # a repaired tunnel is not kept waiting a minute
        "bfd on;",
        "table bgp4_vti1_t;",
        "import limit 100 action disable;",
        "receive limit 1100 action disable;",  # refused prefixes count here
    ):
        assert line in bgp
    assert "route 192.0.2.0/24 unreachable;" in block(text, "protocol static bgp4_vti1_adv")
    pipe = block(text, "protocol pipe bgp4_vti1_pipe")
    assert "peer table kernel4_t254;" in pipe and "export where source = RTS_BGP;" in pipe
    kernel = block(text, "protocol kernel kernel4_254")
    for line in ("kernel table 254;", "metric 157;", "learn off;", "persist off;", "scan time 30;"):
        assert line in kernel
    assert 'interface "vti1" {' in block(text, "protocol bfd rv_bfd")
    assert "protocol device rv_device" in text


def test_render_is_deterministic_whatever_the_order_of_plans() -> None:
    plans = [session("vti2"), session("vti1", 6), session("vti1"), session("xfrm-a.1", 6)]
    assert render(plans, SETTINGS) == render(list(reversed(plans)), SETTINGS)
    text = render(plans, SETTINGS)
    order = [m.group(1) for m in re.finditer(r"^protocol bgp (\S+) \{", text, re.M)]
    assert order == sorted(order)


def test_one_kernel_protocol_per_family_and_table_in_use() -> None:
    plans = [session("vti1"), session("vti2", table=100), session("vti3", table=100),
             session("vti1", 6)]  # fmt: skip
    text = render(plans, replace(SETTINGS, kernel_metric=77))
    kernels = re.findall(r"^protocol kernel (\S+) \{", text, re.M)
    assert kernels == ["kernel4_100", "kernel4_254", "kernel6_254"]
    assert text.count("metric 77;") == 3
    assert "peer table kernel4_t100;" in block(text, "protocol pipe bgp4_vti2_pipe")


def test_edges_nothing_advertised_nothing_accepted_default_accepted_no_bfd() -> None:
    quiet = session("vti1", advertise=(), accept=())
    wide = session("vti2", accept=(net("0.0.0.0/0"),), hold_time=3)
    text = render([quiet, wide], SETTINGS)
    assert block(text, "filter bgp4_vti1_out") == "filter bgp4_vti1_out {\n  reject;\n}"
    assert "protocol static bgp4_vti1_adv" not in text
    assert block(text, "filter bgp4_vti1_in").endswith("  reject;\n}")
    assert "accept;" not in block(text, "filter bgp4_vti1_in")
    wide_in = block(text, "filter bgp4_vti2_in")
    assert "net.len = 0 then reject" not in wide_in  # listed: a default route is accepted
    assert "if net.len > 0 then {" in wide_in  # ...and only it skips the forbidden check
    assert "keepalive time 1;" in block(text, "protocol bgp bgp4_vti2")
    assert "bfd" not in text
    empty = render([], SETTINGS).splitlines()
    assert sum(line.startswith("protocol ") for line in empty) == 1  # the device protocol only


def test_no_forbidden_networks_no_overlap_check() -> None:
    text = render([session(forbidden=())], SETTINGS)
    assert "net.len > 0" not in block(text, "filter bgp4_vti1_in")


def test_interface_names_with_dots_and_dashes_become_distinct_symbols() -> None:
    names = {naming.bgp_protocol(n, 4) for n in ("vti.1", "vti_d1", "vti-1", "vti_h1", "vti1")}
    assert len(names) == 5
    assert all(re.fullmatch(r"bgp4_[A-Za-z0-9_]+", n) for n in names)


def test_two_sessions_with_one_protocol_name_are_refused() -> None:
    with pytest.raises(PlanError, match="bgp4_vti1"):
        render([session(), session(ref="team-b/other")], SETTINGS)


def test_settings_are_checked() -> None:
    with pytest.raises(PlanError, match="IPv4"):
        BirdSettings(router_id=ip("2001:db8::1"))  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="metric"):
        BirdSettings(router_id=ipaddress.IPv4Address("192.0.2.1"), kernel_metric=0)


# --- hostile tenants --------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"ref": 'team-a/x";\nprotocol static evil {'},
        {"ref": "team-a/x\n}"},
        {"interface": 'vti1" { }', "protocol": "bgp4_vti1"},
        {"interface": "vti*", "protocol": "bgp4_vti"},
        {"protocol": "bgp4_vti1 { }"},
        {"protocol": "bgp4_other"},
        {"peer_asn": naming.AS_TRANS},
        {"local_asn": 0},
        {"peer_asn": 2**32},
        {"hold_time": 2},
        {"max_prefixes": 0},
        {"max_prefixes": 10001},
        {"table": 255},
        {"accept": (net("2001:db8::/32"),)},
        {"peer_address": ip("169.254.10.1")},
    ],
)
def test_a_plan_that_could_carry_anything_unparsed_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(PlanError):
        session(**changes)  # type: ignore[arg-type]


def test_two_tenants_filters_and_tables_never_mix() -> None:
    # Tenant B accepts what tenant A advertises, and advertises what A accepts.
    a = session("vti1", ref="team-a/site")
    b = session(
        "vti2",
        ref="team-b/site",
        accept=(net("192.0.2.0/24"),),
        advertise=(net("198.51.100.0/24"), net("203.0.113.0/24")),
        peer_asn=65002,
    )
    text = render([a, b], SETTINGS)
    for me, other in (("bgp4_vti1", "bgp4_vti2"), ("bgp4_vti2", "bgp4_vti1")):
        for head in (f"filter {me}_in", f"filter {me}_out", f"protocol bgp {me}"):
            assert other not in block(text, head)
        # a session's table holds its own peer's routes and its own static ones only
        writers = re.findall(rf"^protocol (\S+) (\S+) \{{[^}}]*?table {me}_t;", text, re.M)
        assert {name for _, name in writers} == {me, f"{me}_adv", f"{me}_pipe"}
    assert "203.0.113.0/24" not in block(text, "filter bgp4_vti1_out")
    assert "192.0.2.0/24" not in block(text, "filter bgp4_vti2_out")
    # static (advertised) routes never reach the kernel's table: only BGP routes are piped
    assert text.count("export where source = RTS_BGP;") == 2 + 1  # two pipes, one kernel


def test_a_tenant_cannot_export_another_tenants_prefixes() -> None:
    a = session("vti1", ref="team-a/site", advertise=(net("192.0.2.0/24"),))
    b = session("vti2", ref="team-b/site", advertise=(net("192.0.2.0/25"),))
    text = render([a, b], SETTINGS)
    out_b = block(text, "filter bgp4_vti2_out")
    assert 'if proto != "bgp4_vti2_adv" then reject;' in out_b
    assert "source != RTS_STATIC" in out_b  # nothing learned is ever re-advertised
    assert "table bgp4_vti2_t;" in block(text, "protocol static bgp4_vti2_adv")
    assert "bgp4_vti1" not in block(text, "protocol static bgp4_vti2_adv")


# --- BIRD's own parser ------------------------------------------------------------------


def test_bird_parses_rendered_configs(tmp_path: Path) -> None:
    plans = [
        session("vti1", bfd=True),
        session("vti1", 6, accept=(net("::/0"),), table=100, max_prefixes=10000),
        session("xfrm-b.2", advertise=(), accept=()),
        session("vti3", ref="team-b/x", forbidden=(), local_asn=65001),  # iBGP
        session(
            "vti4",
            6,
            local_address=ip("fe80::1"),
            peer_address=ip("fe80::2"),
            hold_time=65535,
            peer_asn=naming.ASN_MAX,
        ),
    ]
    for chosen in ([], plans[:1], plans):
        res = bird_parse(tmp_path, render(chosen, SETTINGS))
        assert res.returncode == 0, res.stderr + res.stdout


def test_bird_parse_check_can_fail(tmp_path: Path) -> None:
    broken = render([session()], SETTINGS).replace("import limit 100", "import limit x100")
    res = bird_parse(tmp_path, broken)
    assert res.returncode != 0
