"""bgp.enabled: BIRD beside charon (three capabilities), the agent's flags, one write mount."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path
from typing import Any

from support.chart import Manifest, containers, find, render

DIR = "/run/routevpn/routevpn-system/rv"


def _pods(values: dict[str, Any], tmp: Path) -> tuple[Manifest, Manifest]:
    docs = render(values, tmp)
    return find(docs, "DaemonSet", "charon"), find(docs, "DaemonSet", "agent")


def test_off_by_default_no_bird_no_bgp_flags(tmp_path: Path) -> None:
    charon, agent = _pods({}, tmp_path)
    assert sorted(containers(charon)) == ["charon"]
    args = containers(agent)["agent"]["args"]
    assert not any(str(a).startswith("--bird") or str(a).startswith("--bgp") for a in args)


def test_enabled_bird_container_and_agent_wiring(tmp_path: Path) -> None:
    values = {"bgp": {"enabled": True, "localASN": 4200000001, "kernelMetric": 77}}
    charon, agent = _pods(values, tmp_path)
    bird = containers(charon)["bird"]
    assert bird["image"] == containers(charon)["charon"]["image"]
    command = " ".join(bird["command"])
    assert "bird -f -s /run/routevpn/bird.ctl -c /run/routevpn/bird/bird.conf" in command
    caps = bird["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"]}
    assert bird["securityContext"]["readOnlyRootFilesystem"] is True
    assert charon["spec"]["template"]["spec"]["hostNetwork"] is True

    container = containers(agent)["agent"]
    args = [str(a) for a in container["args"]]
    flags = dict(itertools.pairwise(args))
    assert flags["--bird-socket"] == "/run/routevpn/bird.ctl"
    assert flags["--bird-config-dir"] == "/run/routevpn/bird"
    assert flags["--bgp-local-asn"] == "4200000001"
    assert flags["--bgp-kernel-metric"] == "77"
    # the agent writes only the bird/ and agent/ subdirectories; the socket directory
    # stays read-only
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/run/routevpn"]["readOnly"] is True
    assert not mounts["/run/routevpn/bird"].get("readOnly", False)
    volumes = {v["name"]: v for v in agent["spec"]["template"]["spec"]["volumes"]}
    bird_volume = volumes[mounts["/run/routevpn/bird"]["name"]]
    assert bird_volume["hostPath"]["path"] == f"{DIR}/bird"
    writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
    assert {m["mountPath"] for m in writable} <= {
        "/run/routevpn/bird",
        "/run/routevpn/agent",
        "/tmp",
        "/host/proc/sys/net",
    }


def test_birds_first_configuration_is_written_once_and_parses(tmp_path: Path) -> None:
    """The container's command run with its paths moved under tmp_path (and `echo` for
    BIRD): it writes a configuration BIRD's parser accepts, and keeps an existing one."""
    charon, _ = _pods({"bgp": {"enabled": True}}, tmp_path)
    script = containers(charon)["bird"]["command"][2]
    root = tmp_path / "run"
    script = script.replace("/run/routevpn", str(root)).replace("exec /usr/sbin/bird", "exec echo")
    subprocess.run(["sh", "-c", script], check=True, capture_output=True)
    conf = root / "bird" / "bird.conf"
    bird = shutil.which("bird") or "/usr/sbin/bird"
    parsed = subprocess.run([bird, "-p", "-c", str(conf)], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    conf.write_text("the agent's\n")
    subprocess.run(["sh", "-c", script], check=True, capture_output=True)
    assert conf.read_text() == "the agent's\n"
