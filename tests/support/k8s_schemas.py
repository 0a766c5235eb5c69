"""Validate Kubernetes manifests against the API's schemas, offline after the first run.

- Built-in kinds: the JSON schemas generated from the Kubernetes OpenAPI spec that the PyPI
  package ``kubernetes-validate`` ships (a dev dependency), in their strict variant (unknown
  fields are errors, as ``kubectl apply --validate=strict`` makes them).
- Custom resources of the Prometheus Operator: the ``openAPIV3Schema`` of its CRDs, taken
  from the Go module ``github.com/prometheus-operator/prometheus-operator`` (downloaded with
  ``go mod download`` into the Go module cache on first use, then read from there), made
  strict the same way (an object that lists its properties accepts no others).

Public test helper::

    for doc in load_documents(path):
        validate(doc)        # raises ManifestError naming the file, the object and the field
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

#: The Kubernetes minor the manifests are checked against (kubelet >= 1.28 reads our
#: cgroup driver; RuntimeClass, apps/v1 and rbac/v1 are long stable).
KUBERNETES_VERSION = "1.34"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
_CRD_FILES = {
    ("monitoring.coreos.com", "ScrapeConfig"): "monitoring.coreos.com_scrapeconfigs.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
}


class ManifestError(AssertionError):
    pass


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a manifest file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ManifestError("the Go toolchain is needed to fetch the Prometheus Operator CRDs (go mod download)")
    return go


@functools.cache
def prometheus_operator_dir() -> Path:
    """The Prometheus Operator module's directory in the Go module cache (downloaded once)."""
    res = subprocess.run(
        [_go(), "mod", "download", "-json", f"{PROMETHEUS_OPERATOR_MODULE}@{PROMETHEUS_OPERATOR_VERSION}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "GOFLAGS": "-mod=mod"}, cwd="/",
    )
    info = json.loads(res.stdout or "{}")
    if res.returncode != 0 or "Dir" not in info:
        raise ManifestError(f"go mod download {PROMETHEUS_OPERATOR_MODULE}: {info.get('Error') or res.stderr}")
    return Path(info["Dir"])


def _strict(schema: Any) -> Any:
    """A structural schema where objects with listed properties refuse unknown ones."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schema(group: str, kind: str, version: str) -> dict[str, Any]:
    """The strict JSON schema of a Prometheus Operator custom resource version."""
    name = _CRD_FILES.get((group, kind))
    if name is None:
        raise ManifestError(f"no CRD known for {kind}.{group}")
    crd = yaml.safe_load((prometheus_operator_dir() / "example" / "prometheus-operator-crd" / name).read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
            # metadata is an ObjectMeta, validated by the API server, not by the CRD
            schema["properties"]["metadata"] = {"type": "object"}
            return dict(_strict(schema))
    raise ManifestError(f"{kind}.{group} has no version {version}")


def validate(doc: dict[str, Any], source: str = "") -> None:
    """Raise ManifestError unless ``doc`` is a valid object of its kind."""
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    what = f"{source}: {kind}/{doc.get('metadata', {}).get('name', '?')}"
    group, _, version = api_version.rpartition("/")
    if group.endswith("monitoring.coreos.com"):
        try:
            jsonschema.validate(doc, crd_schema(group, kind, version), cls=jsonschema.Draft7Validator)
        except jsonschema.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            raise ManifestError(f"{what}: {path}: {exc.message}") from None
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise ManifestError(f"{what}: {path}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise ManifestError(f"{what}: {exc.message}") from None
