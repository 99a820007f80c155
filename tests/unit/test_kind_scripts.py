"""kind/: shellcheck-clean scripts, a dry run that shows every step, safe addresses.

No Docker engine runs here, so the scripts are proved up to what they would run: the
dry run prints each command in order, and the files they feed to kind, helm and the
peer are checked against the real schemas and the project's address rules.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "kind"
SCRIPT = KIND / "cluster.sh"

#: The only ranges the project may use (loopback, TEST-NETs, link-local, documentation v6).
ALLOWED = [
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "169.254.0.0/16",
        "::1/128",
        "2001:db8::/32",
    )
]
CRD_TEMPLATE = "{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(/\d{1,2})?(?![\d.])")


def _dry_run(*steps: str) -> str:
    # A PATH without docker, kind or kubectl: a dry run must need none of them.
    env = {**os.environ, "PATH": "/usr/bin:/bin", "ROUTEVPN_CACHE": "/nonexistent-cache"}
    res = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *steps],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_shellcheck_clean() -> None:
    scripts = [*sorted(str(p) for p in KIND.rglob("*.sh")), str(ROOT / "hack" / "tools.sh")]
    res = subprocess.run(
        ["shellcheck", "--severity=style", *scripts],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_dry_run_prints_every_step_in_order() -> None:
    out = _dry_run("up", "e2e", "down")
    commands = [line[2:] for line in out.splitlines() if line.startswith("+ ") and "#" not in line]
    expected = [
        "docker network create --driver bridge --subnet 198.51.100.0/24",
        "docker network create --driver bridge --subnet 192.0.2.128/25",
        "env KIND_EXPERIMENTAL_DOCKER_NETWORK=routevpn-kind kind create cluster --name routevpn",
        f"docker build -t routevpn:dev {ROOT}",
        f"docker build -t routevpn-charon:dev {ROOT}/images/charon",
        "kind load docker-image --name routevpn routevpn:dev routevpn-charon:dev",
        "kubectl create namespace routevpn-system",
        "label namespace routevpn-system --overwrite pod-security.kubernetes.io/enforce=restricted",
        f"upgrade --install routevpn {ROOT}/charts/routevpn --namespace routevpn-system -f "
        f"{ROOT}/kind/values.yaml",
        "docker rm -f routevpn-kind-peer",
        "docker run -d --name routevpn-kind-peer --network routevpn-kind --ip 198.51.100.100",
        "docker network connect --ip 192.0.2.129 routevpn-kind-lan routevpn-kind-peer",
        "kubectl -n default create secret generic kind-peer-psk",
        f"apply --server-side -f {ROOT}/kind/policy.yaml",
        f"apply --server-side --field-manager=argocd-controller -f {ROOT}/kind/example-tunnel.yaml",
        "wait --for=condition=Ready vpntunnel/kind-peer",
        "get vpntunnel kind-peer -o wide",
        # the node tier's end-to-end module, then the cluster suite, against kind
        f"ROUTEVPN_E2E_TUNNEL=default/kind-peer ROUTEVPN_E2E_MANIFEST={ROOT}/kind/example-"
        f"tunnel.yaml {ROOT}/.venv/bin/pytest {ROOT}/tests/node/test_e2e.py -m node",
        f"{ROOT}/.venv/bin/pytest {ROOT}/tests/cluster -m cluster",
        "kind delete cluster --name routevpn",
        "docker rm -f routevpn-kind-peer",
        "docker network rm routevpn-kind-lan routevpn-kind",
    ]
    pos = 0
    for want in expected:
        hits = [i for i in range(pos, len(commands)) if want in commands[i]]
        assert hits, f"step not printed (in order): {want!r}\n{out}"
        pos = hits[0] + 1
    suites = [c for c in commands if "/bin/pytest " in c]
    assert len(suites) == 2
    assert all(
        "ROUTEVPN_KUBECONFIG=/nonexistent-cache/kind/routevpn/kubeconfig" in c for c in suites
    )


def test_dry_run_runs_nothing(tmp_path: Path) -> None:
    _dry_run("up", "down")
    assert not Path("/nonexistent-cache").exists()


def test_unknown_step_fails() -> None:
    res = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "teleport"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert res.returncode != 0 and "unknown step" in res.stderr


def test_cluster_config_has_a_control_plane_and_two_gateway_workers() -> None:
    config = yaml.safe_load((KIND / "cluster.yaml").read_text())
    roles = [n["role"] for n in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]
    for node in config["nodes"][1:]:
        assert node["labels"]["routevpn.io/gateway"] == "true"
    net = config["networking"]
    pods = ipaddress.ip_network(net["podSubnet"])
    services = ipaddress.ip_network(net["serviceSubnet"])
    assert not pods.overlaps(services)
    # Three nodes, one /26 each, must fit in the pod subnet.
    patch = config["nodes"][0]["kubeadmConfigPatches"][0]
    mask = int(yaml.safe_load(patch)["controllerManager"]["extraArgs"]["node-cidr-mask-size"])
    assert 2 ** (mask - pods.prefixlen) >= len(config["nodes"])


def _addresses(text: str) -> list[str]:
    return [m.group(1) + (m.group(2) or "") for m in IPV4.finditer(text)]


@pytest.mark.parametrize(
    "path",
    [
        *sorted(KIND.rglob("*.y*ml")),
        *sorted(KIND.rglob("*.sh")),
        KIND / "peer" / "swanctl.conf.in",
        ROOT / "charts" / "routevpn" / "values.yaml",
        *sorted((ROOT / "examples" / "argocd").glob("*.yaml")),
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_documentation_addresses(path: Path) -> None:
    for addr in _addresses(path.read_text()):
        net = ipaddress.ip_network(addr, strict=False)
        assert any(
            net.subnet_of(a)  # type: ignore[arg-type]  # same version: checked first
            for a in ALLOWED
            if a.version == net.version
        ), f"{path.relative_to(ROOT)}: {addr} is outside the allowed ranges"


def test_example_tunnel_matches_the_peer() -> None:
    tunnel = yaml.safe_load((KIND / "example-tunnel.yaml").read_text())
    peer = (KIND / "peer" / "swanctl.conf.in").read_text()
    script = SCRIPT.read_text()
    remote = tunnel["spec"]["remote"]
    assert f"local_addrs = {remote['address']}" in peer
    assert f"PEER_ADDR={remote['address']}" in script
    assert f"id = {remote['id']}" in peer
    (inside,) = tunnel["spec"]["interface"]["addresses"]
    assert f"remote_ts = {ipaddress.ip_interface(inside).network}" in peer
    (route,) = tunnel["spec"]["routes"]
    assert f"local_ts = {route['to']}" in peer
    assert f"LAN_SUBNET={route['to']}" in script


def test_example_tunnel_is_valid_against_the_crd(tmp_path: Path) -> None:
    converter = ROOT / "hack" / "tools" / "openapi2jsonschema.py"
    crd = ROOT / "crds" / "vpntunnels.routevpn.io.yaml"
    subprocess.run([sys.executable, str(converter), "crd", str(tmp_path), str(crd)], check=True)
    res = subprocess.run(
        ["bash", str(ROOT / "hack" / "tools.sh"), "path", "kubeconform"],
        capture_output=True,
        text=True,
        check=False,
    )
    kubeconform = Path(res.stdout.strip())
    if res.returncode != 0 or not kubeconform.exists():
        from support.tiers import missing

        missing("kubeconform: run hack/tools.sh build")
    check = subprocess.run(
        [
            str(kubeconform),
            "-strict",
            "-summary",
            "-schema-location",
            f"{tmp_path}/{CRD_TEMPLATE}",
            str(KIND / "example-tunnel.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Valid: 1, Invalid: 0, Errors: 0, Skipped: 0" in check.stdout
