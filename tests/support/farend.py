"""The seed example's far end, configured by hand inside the lab node's guest.

As the lab's reference scenario does it: a network namespace joined to the node's host
network by a veth, a VTI6 with key 42, and a plain ``swanctl.conf`` loaded into a charon
of its own (own ``/run``, own VICI socket). These are shell scripts for
``LabNode.run``; everything they create lives in the guest, and `teardown` removes it.

    node (guest root ns)                         far end (netns rvfar)
    rvnode0 2001:db8:0:1::1/64  ───veth───  rvfar0 2001:db8:0:2::1/64
    rvlan   2001:db8:a::1/64 (dummy)        vti1 2001:db8:100::1/127, lo 2001:db8:b::1/64
"""

from __future__ import annotations

import shlex
from pathlib import Path

from . import swanctl as sw
from .charon import render_strongswan_conf

NS = "rvfar"
WORK = "/tmp/rvfar"  # not under /run: its charon gets a private /run
NODE_OUTER = "2001:db8:0:1::1"
FAR_OUTER = "2001:db8:0:2::1"
NODE_LAN = "2001:db8:a::1"
FAR_LAN = "2001:db8:b::1"
FAR_INSIDE = "2001:db8:100::1/127"
NODE_INSIDE = "2001:db8:100::"
FAR_KEY = 42  # the far end's own VTI key: marks are local to each end
VICI = f"unix://{WORK}/charon.vici"


def setup_script(psk: str) -> str:
    """Create the far end and start its charon; the PSK is written to a file only."""
    conn = sw.Conn(
        "to-node-a", FAR_OUTER, NODE_OUTER, FAR_OUTER, NODE_OUTER, psk,
        [sw.Child("to-node-a", esp_proposals="aes256gcm16-ecp384", mark=FAR_KEY)],
        proposals="aes256gcm16-prfsha384-ecp384",
    )  # fmt: skip
    swanctl_conf = sw.render([conn])
    strongswan_conf = render_strongswan_conf(
        Path(f"{WORK}/charon.vici"), Path(f"{WORK}/charon.log")
    )
    return f"""
mkdir -p {WORK}
cat > {WORK}/strongswan.conf <<'CONF'
{strongswan_conf}
CONF
umask 077
cat > {WORK}/swanctl.conf <<'CONF'
{swanctl_conf}
CONF
umask 022
ip netns add {NS}
ip link add rvnode0 type veth peer name rvfar0 netns {NS}
ip link set rvnode0 up
ip addr add {NODE_OUTER}/64 dev rvnode0 nodad
ip -6 route add 2001:db8:0:2::/64 dev rvnode0
ip link add rvlan type dummy
ip link set rvlan up
ip addr add {NODE_LAN}/64 dev rvlan nodad
ip -n {NS} link set lo up
ip -n {NS} link set rvfar0 up
ip -n {NS} addr add {FAR_OUTER}/64 dev rvfar0 nodad
ip -n {NS} -6 route add 2001:db8:0:1::/64 dev rvfar0
ip -n {NS} addr add {FAR_LAN}/64 dev lo nodad
ip -n {NS} link add vti1 type vti6 local {FAR_OUTER} remote {NODE_OUTER} key {FAR_KEY}
ip netns exec {NS} sysctl -qw net.ipv6.conf.vti1.disable_policy=1
ip -n {NS} link set vti1 up
ip -n {NS} addr add {FAR_INSIDE} dev vti1 nodad
ip -n {NS} -6 route add 2001:db8:a::/64 via {NODE_INSIDE} dev vti1
STRONGSWAN_CONF={WORK}/strongswan.conf setsid ip netns exec {NS} unshare --mount sh -c \\
    'mount --make-rprivate / && mount -t tmpfs tmpfs /var/run \\
     && exec /usr/lib/ipsec/charon' \\
    </dev/null >{WORK}/charon.stdout 2>&1 &
echo $! > {WORK}/charon.pid
for i in $(seq 1 100); do
    ip netns exec {NS} swanctl --stats --uri {VICI} >/dev/null 2>&1 && break
    sleep 0.2
done
ip netns exec {NS} swanctl --load-all --file {WORK}/swanctl.conf --uri {VICI} >/dev/null
echo far-end-ready
"""


def run_in_far(cmd: str) -> str:
    """A shell line running `cmd` inside the far end's namespace."""
    return f"ip netns exec {NS} {cmd}"


def ping_script(dst: str, src: str, *, far: bool, count: int = 5) -> str:
    """Ping `dst` from `src` (from the far end's namespace when `far`)."""
    line = f"ping -6 -c {count} -i 0.2 -W 2 -I {shlex.quote(src)} {shlex.quote(dst)}"
    return run_in_far(line) if far else line


def teardown_script() -> str:
    """Stop the far end's charon (by its PID) and remove what `setup_script` made."""
    return f"""
set +e
if [ -f {WORK}/charon.pid ]; then kill "$(cat {WORK}/charon.pid)"; fi
pid="$(cat {WORK}/charon.pid 2>/dev/null)"
for i in $(seq 1 50); do [ -n "$pid" ] && [ -e /proc/"$pid" ] || break; sleep 0.2; done
ip link del rvnode0
ip link del rvlan
ip netns del {NS}
rm -rf {WORK}
true
"""
