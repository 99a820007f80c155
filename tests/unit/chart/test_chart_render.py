"""The chart lints, renders deterministically, and every object matches its schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from support.chart import (
    CHART,
    LONG_RELEASE,
    VALUE_SETS,
    containers,
    crd_schemas,
    find,
    helm,
    kubeconform,
    render,
    render_text,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def crd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crd_schemas(tmp_path_factory.mktemp("crd-schemas"))


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(name: str, tmp_path: Path) -> None:
    vfile = tmp_path / "values.yaml"
    vfile.write_text(yaml.safe_dump(VALUE_SETS[name]))
    res = helm("lint", "--strict", str(CHART), "-f", str(vfile), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in res.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_render_is_deterministic_and_schema_valid(name: str, tmp_path: Path, crd_dir: Path) -> None:
    first = render_text(VALUE_SETS[name], tmp_path, include_crds=True)
    second = render_text(VALUE_SETS[name], tmp_path, include_crds=True)
    assert first == second
    res = kubeconform(first, crd_dir)
    assert res.returncode == 0, res.stdout + res.stderr
    # Every object was checked against a schema: none skipped or missing one, except
    # the ServiceMonitors and the PrometheusRule (Prometheus Operator's CRDs, not shipped
    # here; promtool checks the rules).
    summary = res.stdout.strip().splitlines()[-1]
    docs = [d for d in yaml.safe_load_all(first) if d]
    skipped = sum(1 for d in docs if d["kind"] in ("ServiceMonitor", "PrometheusRule"))
    assert f"Invalid: 0, Errors: 0, Skipped: {skipped}" in summary, summary
    assert f"Valid: {len(docs) - skipped}," in summary, summary


def test_kubeconform_catches_a_misspelt_field(tmp_path: Path, crd_dir: Path) -> None:
    """The strict schemas really refuse unknown fields (the check above can fail)."""
    text = render_text({}, tmp_path).replace("hostNetwork: true", "hostNetwrk: true", 1)
    res = kubeconform(text, crd_dir)
    assert res.returncode != 0
    assert "hostNetwrk" in res.stdout


@pytest.mark.parametrize(
    "values",
    [
        {"operator": {"replicas": 0}},
        {"agent": {"httpPort": 70000}},
        {"agent": {"namespace": "Not_A_Namespace"}},
        {"operator": {"unknownKey": 1}},
        {"image": {"digest": "latest"}},
        {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], tmp_path: Path) -> None:
    vfile = tmp_path / "values.yaml"
    vfile.write_text(yaml.safe_dump(values))
    res = helm("template", "rv", str(CHART), "-f", str(vfile), check=False)
    assert res.returncode != 0, f"accepted: {values}"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_names_fit_in_63_characters(name: str, tmp_path: Path) -> None:
    docs = render(VALUE_SETS[name], tmp_path, release=LONG_RELEASE)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        assert not doc["metadata"]["name"].endswith("-")
        for key, value in doc["metadata"].get("labels", {}).items():
            assert len(str(value)) <= 63, (doc["metadata"]["name"], key, value)


def test_names_stay_distinct_when_truncated(tmp_path: Path) -> None:
    docs = render({}, tmp_path, release=LONG_RELEASE)
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys))


def test_every_object_carries_the_standard_labels(tmp_path: Path) -> None:
    for doc in render(VALUE_SETS["customised"], tmp_path):
        labels = doc["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/part-of",
            "helm.sh/chart",
        ):
            assert key in labels, (doc["kind"], doc["metadata"]["name"], key)
        assert labels["team"] == "network"


@pytest.mark.parametrize(
    "name", ["vpntunnels.routevpn.io.yaml", "vpntunnelpolicies.routevpn.io.yaml"]
)
def test_chart_crd_is_the_generated_file_byte_for_byte(name: str) -> None:
    generated = ROOT / "crds" / name
    copy = CHART / "crds" / name
    assert copy.read_bytes() == generated.read_bytes(), (
        "charts/routevpn/crds/ is stale: run bash hack/generate.sh"
    )


def test_strongswan_conf_is_the_charon_image_default() -> None:
    chart_conf = CHART / "files" / "strongswan.conf"
    image_conf = ROOT / "images" / "charon" / "strongswan.conf"
    assert chart_conf.read_bytes() == image_conf.read_bytes()


def test_agent_and_charon_share_the_vici_socket_path(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["strongswan.conf"]
    settings = [line.strip() for line in conf.splitlines()]
    assert "socket = unix:///run/routevpn/charon.vici" in settings
    assert "install_routes = no" in settings
    assert "install_virtual_ip = no" in settings
    assert "load_modular = no" in settings
    load = next(s for s in settings if s.startswith("load = ")).split()[2:]
    assert load == [
        *("random", "nonce", "aes", "sha1", "sha2", "hmac", "gmp", "pem", "pkcs1", "pkcs8"),
        *("pubkey", "x509", "kdf", "openssl", "kernel-netlink", "socket-default", "vici"),
    ]
    agent = containers(find(docs, "DaemonSet", "agent"))["agent"]
    assert agent["args"][agent["args"].index("--vici-socket") + 1] == "/run/routevpn/charon.vici"
    # the directory is mounted at /run/routevpn in both pods, from the same node path
    host_dirs = set()
    for component in ("agent", "charon"):
        ds = find(docs, "DaemonSet", component)
        (mount,) = [m for m in containers(ds)[component]["volumeMounts"] if m["name"] == "vici"]
        assert mount["mountPath"] == "/run/routevpn"
        (vol,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "vici"]
        host_dirs.add(vol["hostPath"]["path"])
    assert host_dirs == {"/run/routevpn/routevpn-system/rv"}


def test_strongswan_conf_override(tmp_path: Path) -> None:
    docs = render({"charon": {"strongswanConf": "charon {\n}\n"}}, tmp_path)
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["strongswan.conf"]
    assert conf == "charon {\n}\n"


def test_kind_values_render_with_the_locally_loaded_images(tmp_path: Path, crd_dir: Path) -> None:
    values = yaml.safe_load((ROOT / "kind" / "values.yaml").read_text())
    text = render_text(values, tmp_path, include_crds=True)
    assert kubeconform(text, crd_dir).returncode == 0
    docs = [d for d in yaml.safe_load_all(text) if d]
    images = set()
    for ds in (d for d in docs if d["kind"] == "DaemonSet"):
        assert ds["metadata"]["namespace"] == "routevpn-agent"
        pod = ds["spec"]["template"]["spec"]
        assert pod["nodeSelector"]["routevpn.io/gateway"] == "true"
        images |= {(c["image"], c["imagePullPolicy"]) for c in pod["containers"]}
    # `kind load` puts these in the nodes; Never makes a missing load fail loudly.
    assert images == {("routevpn:dev", "Never"), ("routevpn-charon:dev", "Never")}
