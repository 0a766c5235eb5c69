"""The metric families: names by convention, help text, values from observers and from the
engine's state at scrape time; the text parses with prometheus-client's parser."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri_shim.metrics import Metrics
from cri_shim.metrics_engine import EngineCollector
from runtime.engine import RecoveryReport
from runtime.events import EventBus, EventKind
from runtime.image.pull import PullReport
from runtime.linux.proc import ProcessRef
from runtime.model.container import ContainerState
from runtime.model.network import NetworkEvent, NetworkMode
from runtime.model.sandbox import SandboxState
from tests.unit.stats.conftest import FakeView, container, sandbox

pytestmark = pytest.mark.timeout(20)


@dataclass
class FakeEngine:
    ready: bool = False
    recovery: RecoveryReport | None = None
    events: EventBus = field(default_factory=EventBus)


@dataclass
class FakeStreams:
    dropped_total: int = 0
    streams: int = 0


def families(m: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    m.refresh()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_every_family_has_help_and_conventional_names() -> None:
    m = Metrics()
    m.registry.register(EngineCollector(FakeEngine(ready=True), FakeView(), FakeStreams()))
    text = m.exposition().decode()
    fams = list(text_string_to_metric_families(text))
    ours = [f for f in fams if f.name.startswith("cri_shim_")]
    assert len(ours) >= 25
    for f in fams:
        assert f.documentation, f.name
        assert f.name.startswith(("cri_shim_", "process_", "python_")), f.name
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name
        if f.type == "histogram":
            assert f.name.endswith("_seconds"), f.name
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)$", f.name), f.name
    for name in ("cri_shim_grpc_requests", "cri_shim_grpc_request_duration_seconds", "cri_shim_pods",
                 "cri_shim_containers", "cri_shim_image_pulls", "cri_shim_image_pull_bytes",
                 "cri_shim_image_pull_duration_seconds", "cri_shim_image_pull_layers_reused",
                 "cri_shim_network_operation_duration_seconds", "cri_shim_network_operation_errors",
                 "cri_shim_container_oom_kills", "cri_shim_pod_shims_running", "cri_shim_streaming_sessions_active",
                 "cri_shim_recovery_duration_seconds", "cri_shim_container_events_dropped", "process_cpu_seconds"):
        assert name in {f.name for f in fams}, name


def test_rpc_pull_and_network_observers() -> None:
    m = Metrics()
    m.observe("RuntimeService", "Version", "OK", 0.002)
    m.observe("ImageService", "PullImage", "NOT_FOUND", 0.3)
    m.pull_started("busybox")
    assert families(m)["cri_shim_image_pulls_in_progress"][()] == 1
    m.pull_finished(PullReport("busybox", "sha256:x", "reg", 1000, 1200, 3, 1, 2.0, "success"))
    m.pull_started("nope")
    m.pull_finished(PullReport("nope", "", "reg", 10, 0, 0, 0, 0.5, "NotFound", "no such image"))
    m.network_event(NetworkEvent("attach", NetworkMode.BUILTIN, "s1", 0.004))
    m.network_event(NetworkEvent("teardown", NetworkMode.CNI, "s1", 0.2, "FailedPrecondition", "DEL failed"))
    m.network_event(NetworkEvent("status", None, "", 0.001))
    f = families(m)
    version_ok = (("code", "OK"), ("method", "Version"), ("service", "RuntimeService"))
    assert f["cri_shim_grpc_requests_total"][version_ok] == 1
    assert f["cri_shim_grpc_errors_total"][(("code", "NOT_FOUND"), ("method", "PullImage"),
                                             ("service", "ImageService"))] == 1
    assert (("code", "OK"), ("method", "Version"), ("service", "RuntimeService")) not in f.get(
        "cri_shim_grpc_errors_total", {})
    assert f["cri_shim_grpc_request_duration_seconds_count"][(("method", "PullImage"),
                                                              ("service", "ImageService"))] == 1
    assert f["cri_shim_image_pulls_total"][(("result", "success"),)] == 1
    assert f["cri_shim_image_pulls_total"][(("result", "NotFound"),)] == 1
    assert f["cri_shim_image_pulls_in_progress"][()] == 0
    assert f["cri_shim_image_pull_bytes_total"][()] == 1010
    assert f["cri_shim_image_pull_layers_total"][()] == 3
    assert f["cri_shim_image_pull_layers_reused_total"][()] == 1
    assert f["cri_shim_image_pull_duration_seconds_sum"][(("result", "success"),)] == 2.0
    assert f["cri_shim_network_operation_duration_seconds_count"][(("operation", "attach"),
                                                                   ("plugin", "builtin"))] == 1
    assert f["cri_shim_network_operation_duration_seconds_count"][(("operation", "status"), ("plugin", "none"))] == 1
    assert f["cri_shim_network_operation_errors_total"][(("error", "FailedPrecondition"), ("operation", "teardown"),
                                                          ("plugin", "cni"))] == 1


def test_engine_state_is_read_at_scrape_time() -> None:
    sid, sid2, cid = "a" * 64, "b" * 64, "c" * 64
    view = FakeView(
        [replace(sandbox(sid), shim=ProcessRef(1, 0)), replace(sandbox(sid2, state=SandboxState.NOTREADY))],
        [container(cid, sid), container("d" * 64, sid, state=ContainerState.EXITED)],
    )
    engine = FakeEngine()
    streams = FakeStreams()
    m = Metrics()
    collector = EngineCollector(engine, view, streams)
    m.registry.register(collector)
    m.add_scrape_source(collector)
    f = families(m)
    assert f["cri_shim_runtime_ready"][()] == 0
    assert "cri_shim_recovery_duration_seconds" not in f
    assert f["cri_shim_pods"][(("state", "ready"),)] == 1
    assert f["cri_shim_pods"][(("state", "notready"),)] == 1
    assert f["cri_shim_pods"][(("state", "creating"),)] == 0
    assert f["cri_shim_containers"][(("state", "running"),)] == 1
    assert f["cri_shim_containers"][(("state", "exited"),)] == 1
    # pid 1 is alive but its start time is not 0: a stale reference is not a running shim
    assert f["cri_shim_pod_shims_running"][()] == 0
    # the state changes; nothing is pushed: the next scrape sees it
    view.containers.append(container("e" * 64, sid))
    engine.ready = True
    engine.recovery = RecoveryReport(1.25, {"images": 3, "sandboxes": 1}, ("network: boom",))
    engine.events.publish(EventKind.CONTAINER_OOM, sid, cid)
    engine.events.publish(EventKind.CONTAINER_STOPPED, sid, cid)
    sub = engine.events.subscribe(maxsize=1)
    engine.events.publish(EventKind.CONTAINER_DELETED, sid, cid)
    engine.events.publish(EventKind.CONTAINER_DELETED, sid, cid)  # the subscriber's queue is full
    sub.close()
    streams.dropped_total, streams.streams = 2, 3
    f = families(m)
    assert f["cri_shim_runtime_ready"][()] == 1
    assert f["cri_shim_containers"][(("state", "running"),)] == 2
    assert f["cri_shim_recovery_duration_seconds"][()] == 1.25
    assert f["cri_shim_recovery_items"][(("step", "images"),)] == 3
    assert f["cri_shim_recovery_errors"][()] == 1
    assert f["cri_shim_container_oom_kills_total"][()] == 1
    assert f["cri_shim_container_events_total"][(("type", "container_deleted"),)] == 2
    assert f["cri_shim_container_events_total"][(("type", "container_created"),)] == 0
    assert f["cri_shim_container_events_dropped_total"][()] == 1 + 2
    assert f["cri_shim_container_event_streams"][()] == 3


def test_a_live_shim_is_counted_once() -> None:
    import os

    from runtime.linux.proc import ref_of

    me = ref_of(os.getpid())
    view = FakeView([replace(sandbox("a" * 64), shim=me), replace(sandbox("b" * 64), shim=me)], [])
    m = Metrics()
    c = EngineCollector(FakeEngine(), view)
    m.registry.register(c)
    m.add_scrape_source(c)
    assert families(m)["cri_shim_pod_shims_running"][()] == 1


def test_the_readme_lists_exactly_the_families_of_the_code() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("### Prometheus endpoint", 1)[1].split("\n### ", 1)[0]
    listed = {}
    for name, kind in re.findall(r"^\| `(cri_shim_\w+)` \| (\w+) \|", section, re.M):
        listed[name.removesuffix("_total") if kind == "counter" else name] = kind
    m = Metrics()
    m.registry.register(EngineCollector(FakeEngine(), FakeView(), FakeStreams()))
    exposed = {f.name: f.type for f in text_string_to_metric_families(m.exposition().decode())
               if f.name.startswith("cri_shim_")}
    assert listed == exposed
