"""The Prometheus job of k8s-manifests/prometheus/scrape-config.yaml, and the same job with its
Kubernetes node discovery replaced by a static target, for a local Prometheus (public test
helper: the manifest test and the Prometheus test use it)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from cri_shim.config import MetricsConfig

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "k8s-manifests"
SCRAPE_CONFIG = MANIFESTS / "prometheus" / "scrape-config.yaml"
#: The node label the RuntimeClass schedules on and the scrape configs keep.
NODE_LABEL = "cri-shim.io/runtime"


def meta_label(node_label: str) -> str:
    """Prometheus' name for a node label in node discovery (non-word characters become _)."""
    return "__meta_kubernetes_node_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", node_label)


def default_metrics_port() -> int:
    return int(MetricsConfig().address.rpartition(":")[2])


def prometheus_job(path: Path = SCRAPE_CONFIG) -> dict[str, Any]:
    """The one scrape job in the ConfigMap's prometheus.yml."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    (job,) = yaml.safe_load(cm["data"]["prometheus.yml"])["scrape_configs"]
    return dict(job)


def static_job(job: dict[str, Any], host: str, port: int, node: str = "test-node") -> dict[str, Any]:
    """``job`` with node discovery replaced by one static target that looks like what node
    discovery yields (the node's address at the kubelet's port, node name and label as meta
    labels), and the metrics port in the relabelling replaced by ``port``. The relabelling
    itself is kept: Prometheus has to move the target to ``host:port`` exactly as it would
    in a cluster."""
    out = copy.deepcopy(job)
    del out["kubernetes_sd_configs"]
    out["static_configs"] = [{
        "targets": [f"{host}:10250"],
        "labels": {"__meta_kubernetes_node_name": node, meta_label(NODE_LABEL): "true"},
    }]
    default = default_metrics_port()
    for r in out["relabel_configs"]:
        if "replacement" in r:
            r["replacement"] = r["replacement"].replace(f":{default}", f":{port}")
    return out
