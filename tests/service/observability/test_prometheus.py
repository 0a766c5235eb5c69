"""A real Prometheus scrapes a running daemon with the job of k8s-manifests/prometheus/
(node discovery replaced by a static target that looks like a node; the relabelling moves it
to the daemon's metrics port): the target is up, our families are there, and the RPC
counters and latency histograms move for every RPC crictl used."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri_shim.api.gen import api_pb2 as pb
from cri_shim.metrics import RPC_BUCKETS
from tests.support.daemon import DaemonProcess
from tests.support.pods import container_config, pod_config, to_json_file
from tests.support.prometheus import running_prometheus
from tests.support.scrape import prometheus_job, static_job

pytestmark = [pytest.mark.service, pytest.mark.peers, pytest.mark.root, pytest.mark.timeout(240)]

FAMILIES = (
    "cri_shim_build_info", "cri_shim_runtime_ready", "cri_shim_grpc_requests_total",
    "cri_shim_grpc_request_duration_seconds_bucket", "cri_shim_pods", "cri_shim_containers",
    "cri_shim_pod_shims_running", "cri_shim_image_pulls_total", "cri_shim_image_pull_bytes_total",
    "cri_shim_image_pull_duration_seconds_bucket", "cri_shim_image_pull_layers_reused_total",
    "cri_shim_network_operation_duration_seconds_bucket", "cri_shim_streaming_sessions_active",
    "cri_shim_recovery_duration_seconds", "cri_shim_recovery_items", "cri_shim_container_events_total",
    "cri_shim_container_oom_kills_total", "cri_shim_container_events_dropped_total",
    "cri_shim_container_event_streams", "process_cpu_seconds_total", "process_resident_memory_bytes",
)


def _daemon_counts(d: DaemonProcess) -> dict[str, float]:
    """RuntimeService/ImageService method -> calls, as the daemon's own /metrics says."""
    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    counts: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "cri_shim_grpc_request_duration_seconds":
            continue
        for s in fam.samples:
            if s.name.endswith("_count"):
                counts[s.labels["method"]] = counts.get(s.labels["method"], 0) + s.value
    return counts


def test_prometheus_scrapes_the_daemon(d: DaemonProcess, tmp_path: Path, busybox: str) -> None:
    job = static_job(prometheus_job(), "127.0.0.1", d.metrics_port, node="test-node")
    job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
    with running_prometheus(tmp_path / "prom", [job]) as prom:
        target = prom.wait_target_up("cri-shim")
        # the relabelling moved the "kubelet" address to the metrics port and named the node
        assert target["labels"]["instance"] == f"127.0.0.1:{d.metrics_port}"
        assert target["labels"]["node"] == "test-node"
        assert target["scrapeUrl"] == f"http://127.0.0.1:{d.metrics_port}/metrics"
        assert prom.value('up{job="cri-shim"}') == 1
        names = {r["metric"]["__name__"] for r in prom.query('{job="cri-shim"}')}
        missing = [f for f in FAMILIES if f not in names]
        assert not missing, missing
        before = _daemon_counts(d)

        # crictl works: images, a pod with a container, stats, events-free lifecycle
        d.crictl("version")
        d.crictl("info")
        d.crictl("pull", busybox)
        d.crictl("images")
        pcfg = pod_config()
        pod = d.crictl("runp", str(to_json_file(pcfg, tmp_path / "pod.json"))).stdout.strip()
        ccfg = container_config("app", busybox, ["sleep", "3600"])
        ccfg.linux.security_context.namespace_options.pid = pb.CONTAINER
        cid = d.crictl("create", pod, str(to_json_file(ccfg, tmp_path / "c.json")),
                       str(tmp_path / "pod.json")).stdout.strip()
        d.crictl("start", cid)
        d.crictl("ps")
        d.crictl("pods")
        d.crictl("inspect", cid)
        d.crictl("stats", "-o", "json")
        d.crictl("statsp", "-o", "json")
        d.crictl("exec", "-s", cid, "true")
        d.crictl("exec", cid, "true")  # a streaming session (SPDY) through the streaming server
        d.crictl("stop", "--timeout", "0", cid)
        d.crictl("rm", cid)
        d.crictl("stopp", pod)
        d.crictl("rmp", pod)
        after = _daemon_counts(d)
        used = sorted(m for m, n in after.items() if n > before.get(m, 0))
        for method in ("Version", "Status", "PullImage", "ListImages", "RunPodSandbox", "CreateContainer",
                       "StartContainer", "ListContainers", "ListPodSandbox", "ContainerStatus",
                       "ListContainerStats", "ListPodSandboxStats", "ExecSync", "StopContainer",
                       "RemoveContainer", "StopPodSandbox", "RemovePodSandbox"):
            assert method in used, (method, used)

        # Prometheus sees every RPC crictl used, with its whole latency histogram
        for method in used:
            count = f'sum(cri_shim_grpc_request_duration_seconds_count{{job="cri-shim",method="{method}"}})'
            prom.wait_value(count, after[method])
            buckets = prom.query(f'cri_shim_grpc_request_duration_seconds_bucket{{job="cri-shim",method="{method}"}}')
            assert len(buckets) == len(RPC_BUCKETS) + 1, (method, len(buckets))
            inf = [b for b in buckets if b["metric"]["le"] == "+Inf"]
            assert float(inf[0]["value"][1]) == after[method]
            calls = f'sum(cri_shim_grpc_requests_total{{job="cri-shim",method="{method}"}})'
            assert prom.value(calls) == after[method]
        # a counter that existed before the work moved between scrapes: increase() sees it
        status = 'sum(increase(cri_shim_grpc_requests_total{job="cri-shim",method="Status"}[1m]))'
        assert (prom.value(status) or 0) > 0
        prom.wait_value('cri_shim_image_pulls_total{job="cri-shim",result="success"}', 1)
        prom.wait_value('cri_shim_streaming_sessions_total{job="cri-shim",kind="exec",protocol="spdy"}', 1)
        assert prom.value('cri_shim_streaming_sessions_active{job="cri-shim",kind="exec"}') == 0
        assert "Exec" in used
        prom.wait_value('cri_shim_pods{job="cri-shim",state="ready"}', 0)
        # the 50th percentile of Version calls is answerable from the histogram
        p50 = prom.value('histogram_quantile(0.5, sum by (le) (cri_shim_grpc_request_duration_seconds_bucket'
                         '{job="cri-shim",method="Version"}))')
        assert p50 is not None and 0 < p50 <= 1
        metadata = prom.api("metadata", metric="cri_shim_grpc_request_duration_seconds")
        assert json.dumps(metadata).count("histogram") >= 1
