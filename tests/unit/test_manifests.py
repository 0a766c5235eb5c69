"""k8s-manifests/: every object is valid against the Kubernetes API schemas (and the Prometheus
Operator's CRD schema); the pieces agree with each other and with the code (handler name,
node label, metrics port); the scrape configs say the same thing; promtool accepts the
Prometheus job once its discovery is replaced by a static target."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cri_shim.config_doc import EXAMPLE_RUNTIME_HANDLERS
from runtime.sandbox.validate import RUNTIME_HANDLERS
from tests.support.k8s_schemas import ManifestError, load_documents, validate
from tests.support.scrape import (
    MANIFESTS,
    NODE_LABEL,
    REPO,
    default_metrics_port,
    meta_label,
    prometheus_job,
    static_job,
)

pytestmark = pytest.mark.timeout(300)



def _all() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, doc) for p in sorted(MANIFESTS.rglob("*.yaml")) for doc in load_documents(p)]


def _one(kind: str, name: str = "") -> dict[str, Any]:
    (doc,) = [d for _, d in _all() if d["kind"] == kind and (not name or d["metadata"]["name"] == name)]
    return doc


def _prometheus_job() -> dict[str, Any]:
    return prometheus_job()


def test_the_expected_objects_are_there() -> None:
    kinds = sorted(d["kind"] for _, d in _all())
    assert kinds == sorted(["RuntimeClass"] * 4 + ["Pod", "Deployment", "Service", "Namespace", "ServiceAccount",
                                                   "ClusterRole", "ClusterRoleBinding", "ConfigMap", "ScrapeConfig"])


@pytest.mark.parametrize("path", sorted(MANIFESTS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_object_is_valid_against_the_api_schemas(path: Path) -> None:
    for doc in load_documents(path):
        validate(doc, str(path.relative_to(REPO)))


def test_the_validator_catches_mistakes() -> None:
    rc = copy.deepcopy(_one("RuntimeClass", "cri-shim"))
    rc["handlr"] = rc["handler"]  # a typo: strict schemas refuse unknown fields
    with pytest.raises(ManifestError, match="handlr"):
        validate(rc)
    del rc["handlr"], rc["handler"]
    with pytest.raises(ManifestError, match="'handler' is a required property"):
        validate(rc)
    pod = copy.deepcopy(_one("Pod"))
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = {"bad": 1}
    with pytest.raises(ManifestError):
        validate(pod)
    sc = copy.deepcopy(_one("ScrapeConfig"))
    sc["spec"]["kubernetesSDConfigs"][0]["role"] = "node"  # the CRD's enum is capitalised
    with pytest.raises(ManifestError, match="role"):
        validate(sc)
    sc = copy.deepcopy(_one("ScrapeConfig"))
    sc["spec"]["relabelings"][0]["sourcelabels"] = ["x"]
    with pytest.raises(ManifestError, match="sourcelabels"):
        validate(sc)


def test_runtime_class_matches_the_runtime_and_the_workloads() -> None:
    rc = _one("RuntimeClass", "cri-shim")
    assert rc["handler"] in RUNTIME_HANDLERS and rc["handler"]
    assert rc["scheduling"]["nodeSelector"] == {NODE_LABEL: "true"}
    pod = _one("Pod")
    deployment = _one("Deployment")
    assert pod["spec"]["runtimeClassName"] == rc["metadata"]["name"]
    assert deployment["spec"]["template"]["spec"]["runtimeClassName"] == rc["metadata"]["name"]
    service = _one("Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def _relabel_from_operator(r: dict[str, Any]) -> dict[str, Any]:
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {names.get(k, k): (v.lower() if k == "action" else v) for k, v in r.items()}


def test_both_scrape_configs_discover_and_relabel_alike() -> None:
    job = _prometheus_job()
    sc = _one("ScrapeConfig")["spec"]
    assert job["kubernetes_sd_configs"] == [{"role": "node"}]
    assert [c["role"].lower() for c in sc["kubernetesSDConfigs"]] == ["node"]
    assert [_relabel_from_operator(r) for r in sc["relabelings"]] == job["relabel_configs"]
    assert (sc["jobName"], sc["metricsPath"], sc["scrapeInterval"]) == (
        job["job_name"], job["metrics_path"], job["scrape_interval"])
    # the node label kept is the RuntimeClass's, in Prometheus' sanitised form
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep"
    assert keep["source_labels"] == [meta_label(NODE_LABEL)]
    # and the port it moves to is the daemon's default metrics port
    assert job["relabel_configs"][1]["replacement"] == f"${{1}}:{default_metrics_port()}"


def test_promtool_accepts_the_job_with_a_static_target(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is installed by scripts/install.sh"
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [static_job(_prometheus_job(), "127.0.0.1", 19472)]}))
    res = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    broken = yaml.safe_load(config.read_text())
    broken["scrape_configs"][0]["relabel_configs"][0]["action"] = "keepp"
    config.write_text(yaml.safe_dump(broken))
    res = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0


def test_a_runtime_class_per_example_handler() -> None:
    """Each RuntimeClass names the built-in handler or one config.example.toml shows, and
    schedules like the default one."""
    classes = {d["handler"]: d for _, d in _all() if d["kind"] == "RuntimeClass"}
    assert set(classes) == {"cri-shim", *(h.name for h in EXAMPLE_RUNTIME_HANDLERS)}
    example = (REPO / "config.example.toml").read_text()
    for h in EXAMPLE_RUNTIME_HANDLERS:
        assert f'#   name = "{h.name}"' in example
        rc = classes[h.name]
        assert rc["metadata"]["name"] == h.name
        assert rc["scheduling"] == classes["cri-shim"]["scheduling"]
