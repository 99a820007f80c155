"""The images and the chart agree: entrypoints, config paths, users, a slim runtime.

No Docker engine runs here, so the Dockerfiles are read, not built; what the images run
(`routevpn ...`, `/usr/lib/ipsec/charon` with STRONGSWAN_CONF) is what the tests run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from support.chart import ROOT, Manifest, containers, find, render

APP_DOCKERFILE = ROOT / "Dockerfile"
CHARON_DOCKERFILE = ROOT / "images" / "charon" / "Dockerfile"


def stages(dockerfile: Path) -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(line)
    return out


def instruction(stage: list[str], name: str) -> list[str]:
    return [s[len(name) + 1 :].strip() for s in stage if s.upper().startswith(name + " ")]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    return render({}, tmp_path_factory.mktemp("r"))


@pytest.fixture(scope="module")
def daemonset(rendered: list[Manifest]) -> Manifest:
    return find(rendered, "DaemonSet", "agent")


def test_app_image_is_multi_stage_and_slim() -> None:
    build, runtime = stages(APP_DOCKERFILE)
    assert any("pip wheel" in r for r in instruction(build, "RUN"))
    runtime_runs = " ".join(instruction(runtime, "RUN"))
    for heavy in ("pip", "gcc", "build-essential", "python3-dev", "python3-venv"):
        assert not re.search(rf"\b{re.escape(heavy)}\b", runtime_runs), heavy
    assert instruction(runtime, "COPY") == ["--from=build /opt/routevpn /opt/routevpn"]
    assert json.loads(instruction(runtime, "ENTRYPOINT")[0]) == ["routevpn"]
    (user,) = instruction(runtime, "USER")
    assert not user.startswith("0") and not user.startswith("root")


def test_both_images_are_debian_bookworm() -> None:
    for dockerfile in (APP_DOCKERFILE, CHARON_DOCKERFILE):
        args = " ".join(line for stage in stages(dockerfile) for line in stage)
        text = dockerfile.read_text()
        assert "ARG DEBIAN_IMAGE=debian:bookworm-slim" in text, dockerfile
        assert "FROM ${DEBIAN_IMAGE}" in args


def test_charon_image_matches_the_chart(rendered: list[Manifest]) -> None:
    (stage,) = stages(CHARON_DOCKERFILE)
    charon = containers(find(rendered, "DaemonSet", "charon"))["charon"]
    # the image's entrypoint, exec'd (PID 1) after the socket directory is made private
    (entrypoint,) = json.loads(instruction(stage, "ENTRYPOINT")[0])
    shell, flag, script = charon["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    assert script.endswith(f" && exec {entrypoint}"), script
    (env,) = instruction(stage, "ENV")
    image_conf = env.split("=", 1)[1]
    chart_env = {e["name"]: e["value"] for e in charon["env"]}
    assert chart_env["STRONGSWAN_CONF"] == image_conf
    mounts = {m["mountPath"] for m in charon["volumeMounts"]}
    assert str(Path(image_conf).parent) in mounts
    packages = " ".join(instruction(stage, "RUN"))
    for pkg in ("strongswan-charon", "strongswan-swanctl", "libstrongswan-standard-plugins"):
        assert pkg in packages


def test_agent_runs_the_app_image_entrypoint(daemonset: Manifest) -> None:
    agent = containers(daemonset)["agent"]
    assert "command" not in agent  # the image's ENTRYPOINT: routevpn
    assert agent["args"][0] == "agent"
    loader = containers(daemonset)["load-kernel-modules"]
    assert loader["image"] == agent["image"]  # kmod ships in the app image
    _, runtime = stages(APP_DOCKERFILE)
    assert re.search(r"\bkmod\b", " ".join(instruction(runtime, "RUN")))


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "operator/"}
    copied = {
        part
        for line in instruction(stages(APP_DOCKERFILE)[0], "COPY")
        for part in line.split()[:-1]
    }
    assert copied <= allowed
