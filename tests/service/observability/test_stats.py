"""crictl stats / statsp / metricsp against a running daemon: values agree with the cgroup
files and /proc of the pod's processes; CPU nano cores between samples; metrics endpoint
counts pods and containers."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cri_shim.api.gen import api_pb2 as pb
from runtime.hostinfo import CgroupMode, detect_cgroup_mode
from runtime.stats.netdev import parse_net_dev
from tests.support.daemon import DaemonProcess
from tests.support.pods import container_config, pod_config, pull, to_json_file

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(180)]

CGROUP = Path("/sys/fs/cgroup")


V2 = detect_cgroup_mode(CGROUP) is CgroupMode.V2


def _read(controller: str, cgroup: str, name: str) -> str:
    base = CGROUP if V2 else CGROUP / controller
    return (base / cgroup.lstrip("/") / name).read_text()


def _keyed(controller: str, cgroup: str, name: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in _read(controller, cgroup, name).splitlines())}


def _cgroup_values(cgroup: str) -> dict[str, int]:
    """What CRI stats must report for a cgroup, read from the kernel's files (v1 or v2)."""
    if V2:
        usage = int(_read("", cgroup, "memory.current"))
        stat = _keyed("", cgroup, "memory.stat")
        return {
            "cpu": _keyed("", cgroup, "cpu.stat")["usage_usec"] * 1000,
            "usage": usage,
            "working_set": max(0, usage - stat["inactive_file"]),
            "rss": stat["anon"],
            "pids": int(_read("", cgroup, "pids.current")),
        }
    usage = int(_read("memory", cgroup, "memory.usage_in_bytes"))
    stat = _keyed("memory", cgroup, "memory.stat")
    return {
        "cpu": int(_read("cpuacct", cgroup, "cpuacct.usage")),
        "usage": usage,
        "working_set": max(0, usage - stat["total_inactive_file"]),
        "rss": stat["total_rss"],
        "pids": int(_read("pids", cgroup, "pids.current")),
    }


def _u64(msg: dict[str, Any], *path: str) -> int:
    for p in path:
        msg = msg[p]
    return int(msg["value"])


def _steady(cgroup: str, timeout: float = 30) -> dict[str, int]:
    """Cgroup values once they stop changing (the container is asleep)."""
    deadline = time.monotonic() + timeout
    last = _cgroup_values(cgroup)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = _cgroup_values(cgroup)
        if now == last:
            return now
        last = now
    raise AssertionError(f"cgroup {cgroup} never settled: {last}")


def _agreeing(cgroup: str, call: Any, tries: int = 10) -> tuple[dict[str, int], Any]:
    """(the cgroup's values, call()) from a call during which the files did not change.

    The kernel moves a few pages of memory charge between per-CPU caches and the cgroup now
    and then (memcg stock), even for an idle process: a read counts only if the values read
    just before and just after the call are the same.
    """
    for _ in range(tries):
        before = _steady(cgroup)
        result = call()
        if _cgroup_values(cgroup) == before:
            return before, result
    raise AssertionError(f"cgroup {cgroup} kept changing during the calls")


def _run(d: DaemonProcess, tmp_path: Path, image: str, script: str, name: str = "app") -> tuple[str, str, str, str]:
    """(pod id, container id, pod cgroup, container cgroup) of a started container."""
    pcfg = pod_config(labels={"suite": "obs"})
    pod = d.crictl("runp", str(to_json_file(pcfg, tmp_path / "pod.json"))).stdout.strip()
    ccfg = container_config(name, image, ["sh", "-c", script], labels={"role": name})
    ccfg.linux.security_context.namespace_options.pid = pb.CONTAINER  # as kubelet sends it: the pod's
    cid = d.crictl("create", pod, str(to_json_file(ccfg, tmp_path / f"{name}.json")),
                   str(tmp_path / "pod.json")).stdout.strip()
    d.crictl("start", cid)
    pod_cg = json.loads(d.crictl("inspectp", pod).stdout)["info"]["cgroup"]["path"]
    ctr_cg = json.loads(d.crictl("inspect", cid).stdout)["info"]["cgroup"]
    return pod, cid, pod_cg, ctr_cg


def test_crictl_stats_and_statsp_agree_with_the_cgroup_files(d: DaemonProcess, tmp_path: Path, busybox: str) -> None:
    pull(d, busybox)
    # burn some CPU, touch some memory, then sleep: the counters settle
    script = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; x=$(seq 1 20000); exec sleep 3600"
    pod, cid, pod_cg, ctr_cg = _run(d, tmp_path, busybox, script)
    want, got = _agreeing(ctr_cg, lambda: json.loads(d.crictl("stats", "-o", "json", "--id", cid).stdout)["stats"])
    assert want["cpu"] > 0 and want["usage"] > 0
    assert len(got) == 1
    s = got[0]
    assert s["attributes"]["id"] == cid and s["attributes"]["labels"]["role"] == "app"
    assert _u64(s, "cpu", "usageCoreNanoSeconds") == want["cpu"]
    assert _u64(s, "memory", "workingSetBytes") == want["working_set"]
    assert _u64(s, "memory", "usageBytes") == want["usage"]
    assert _u64(s, "memory", "rssBytes") == want["rss"]
    assert int(s["cpu"]["timestamp"]) > 0
    assert _u64(s, "writableLayer", "usedBytes") >= 0 and s["writableLayer"]["fsId"]["mountpoint"]
    # the table crictl prints for people: the running container with its memory
    table = d.crictl("stats", "--id", cid).stdout
    assert cid[:13] in table and "app" in table
    # the pod: its cgroup holds the container's processes
    pwant, pgot = _agreeing(pod_cg, lambda: json.loads(d.crictl("statsp", "-o", "json", "--id", pod).stdout)["stats"])
    assert len(pgot) == 1
    lx = pgot[0]["linux"]
    assert pgot[0]["attributes"]["id"] == pod and pgot[0]["attributes"]["labels"]["suite"] == "obs"
    assert _u64(lx, "cpu", "usageCoreNanoSeconds") == pwant["cpu"]
    assert _u64(lx, "memory", "workingSetBytes") == pwant["working_set"]
    assert _u64(lx, "process", "processCount") == pwant["pids"] >= 1
    assert [c["attributes"]["id"] for c in lx["containers"]] == [cid]
    # pod network: eth0's counters as the pod's own /proc/net/dev shows them
    pid = json.loads(d.crictl("inspect", cid).stdout)["info"]["pid"]
    before = {i.name: i for i in parse_net_dev(Path(f"/proc/{pid}/net/dev").read_text())}
    net = json.loads(d.crictl("statsp", "-o", "json", "--id", pod).stdout)["stats"][0]["linux"]["network"]
    after = {i.name: i for i in parse_net_dev(Path(f"/proc/{pid}/net/dev").read_text())}
    assert net["defaultInterface"]["name"] == "eth0"
    rx = _u64(net, "defaultInterface", "rxBytes")
    assert before["eth0"].rx_bytes <= rx <= after["eth0"].rx_bytes
    assert "lo" not in {i["name"] for i in net.get("interfaces", [])}
    # crictl's filters
    assert json.loads(d.crictl("stats", "-o", "json", "--label", "role=other").stdout).get("stats", []) == []
    by_pod = json.loads(d.crictl("stats", "-o", "json", "--pod", pod).stdout)["stats"]
    assert [x["attributes"]["id"] for x in by_pod] == [cid]


def test_cpu_nano_cores_of_a_busy_container(d: DaemonProcess, tmp_path: Path, busybox: str) -> None:
    pull(d, busybox)
    _pod, cid, _pcg, _ctr_cg = _run(d, tmp_path, busybox, "while :; do :; done", name="busy")
    req = pb.ContainerStatsRequest(container_id=cid)
    first = d.runtime.ContainerStats(req, timeout=10).stats
    time.sleep(1.5)
    second = d.runtime.ContainerStats(req, timeout=10).stats
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    assert second.cpu.HasField("usage_nano_cores")
    window = second.cpu.timestamp - first.cpu.timestamp
    expected = (second.cpu.usage_core_nano_seconds.value - first.cpu.usage_core_nano_seconds.value) * 10**9 // window
    assert abs(second.cpu.usage_nano_cores.value - expected) <= expected // 100 + 1
    assert 0.05e9 < second.cpu.usage_nano_cores.value < 1.2e9  # one shell loop: at most a core
    d.crictl("stop", "--timeout", "0", cid)


def test_metricsp_and_metricdescs(d: DaemonProcess, tmp_path: Path, busybox: str) -> None:
    pull(d, busybox)
    pod, cid, _pcg, ctr_cg = _run(d, tmp_path, busybox, "exec sleep 3600")
    descs = json.loads(d.crictl("metricdescs", "-o", "json").stdout)["descriptors"]
    keys = {x["name"]: x["labelKeys"] for x in descs}
    assert keys["container_memory_working_set_bytes"] == ["container", "id", "image", "namespace", "pod"]
    assert keys["container_network_receive_bytes_total"][-1] == "interface"
    want, out = _agreeing(ctr_cg, lambda: json.loads(d.crictl("metricsp", "-o", "json").stdout)["podMetrics"])
    (pm,) = [p for p in out if p["podSandboxId"] == pod]
    (cm,) = pm["containerMetrics"]
    assert cm["containerId"] == cid
    by = {(m["name"], tuple(m["labelValues"])): int(m["value"]["value"]) for m in cm["metrics"]}
    labels = ("app", cid)
    ws = [v for (n, lv), v in by.items() if n == "container_memory_working_set_bytes" and lv[:2] == labels]
    assert ws == [want["working_set"]]
    assert [v for (n, _), v in by.items() if n == "container_processes"] == [want["pids"]]
    started = [v for (n, _), v in by.items() if n == "container_start_time_seconds"]
    assert len(started) == 1 and abs(started[0] - time.time()) < 120
    pod_names = {m["name"] for m in pm["metrics"]}
    assert "container_network_receive_bytes_total" in pod_names and "container_cpu_usage_seconds_total" in pod_names
    for m in cm["metrics"] + pm["metrics"]:
        assert len(m["labelValues"]) == len(keys[m["name"]]), m


def _scrape(d: DaemonProcess) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_count_pods_containers_and_shims(d: DaemonProcess, tmp_path: Path, busybox: str) -> None:
    pull(d, busybox)
    before = _scrape(d)
    assert before["cri_shim_runtime_ready"][()] == 1
    pod, cid, _pcg, _ccg = _run(d, tmp_path, busybox, "exec sleep 3600")
    m = _scrape(d)
    assert m["cri_shim_pods"][(("state", "ready"),)] == before["cri_shim_pods"][(("state", "ready"),)] + 1
    assert m["cri_shim_containers"][(("state", "running"),)] == 1
    assert m["cri_shim_pod_shims_running"][()] >= 1
    ok = m["cri_shim_grpc_requests_total"]
    for method in ("RunPodSandbox", "CreateContainer", "StartContainer", "PodSandboxStatus", "ContainerStatus"):
        assert ok[(("code", "OK"), ("method", method), ("service", "RuntimeService"))] >= 1, method
    assert m["cri_shim_container_events_total"][(("type", "container_started"),)] >= 1
    assert m["cri_shim_network_operation_duration_seconds_count"][(("operation", "attach"),
                                                                   ("plugin", "builtin"))] >= 1
    assert m["cri_shim_recovery_duration_seconds"][()] > 0
    d.crictl("stop", "--timeout", "0", cid)
    d.crictl("rm", cid)
    d.crictl("stopp", pod)
    m = _scrape(d)
    assert m["cri_shim_containers"][(("state", "running"),)] == 0
    assert m["cri_shim_pods"][(("state", "notready"),)] >= 1


def test_an_oom_kill_is_counted(d: DaemonProcess, tmp_path: Path, busybox: str) -> None:
    pull(d, busybox)
    before = _scrape(d)["cri_shim_container_oom_kills_total"][()]
    pcfg = pod_config()
    pod = d.crictl("runp", str(to_json_file(pcfg, tmp_path / "pod.json"))).stdout.strip()
    # the main process doubles a string until the OOM killer stops it
    ccfg = container_config("hog", busybox, ["sh", "-c", "x=a; while :; do x=$x$x; done"],
                            resources=pb.LinuxContainerResources(memory_limit_in_bytes=16 << 20))
    ccfg.linux.security_context.namespace_options.pid = pb.CONTAINER
    cid = d.crictl("create", pod, str(to_json_file(ccfg, tmp_path / "c.json")), str(tmp_path / "pod.json")
                   ).stdout.strip()
    d.crictl("start", cid)
    deadline = time.monotonic() + 60
    while json.loads(d.crictl("inspect", cid).stdout)["status"]["state"] != "CONTAINER_EXITED":
        assert time.monotonic() < deadline, "the container was not OOM-killed"
        time.sleep(0.2)
    assert json.loads(d.crictl("inspect", cid).stdout)["status"]["reason"] == "OOMKilled"
    m = _scrape(d)
    assert m["cri_shim_container_oom_kills_total"][()] == before + 1
    assert m["cri_shim_container_events_total"][(("type", "container_oom"),)] >= 1
