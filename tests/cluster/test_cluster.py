"""A real Kubernetes v1.37 cluster (scripts/cluster.sh) whose two nodes run cri-shim, used as a
user would, with kubectl through the apiserver. The tests run in file order on one cluster:
the disruptive ones (drain, kill -9 of a runtime) come last, then ``down`` and a comparison with
the host as it was before ``up``.

Run: CRI_SHIM_CLUSTER_TESTS=1 .venv/bin/pytest -p no:cacheprovider tests/cluster
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.kube import Kube, cluster_sh, eventually, host_snapshot, status
from tests.support import imagebuilder as ib
from tests.support.tools import CRICTL

pytestmark = [pytest.mark.root, pytest.mark.timeout(900)]

REGISTRY = "10.250.0.1:5000"
BUSYBOX = f"{REGISTRY}/cluster/busybox:1.0"
HTTPD = f"{REGISTRY}/cluster/httpd:1.0"
NODES = ("node-a", "node-b")
#: scripts/clusterlib/layout.py BASE (the nodes' directories)
CLUSTER_DIR = Path(os.environ.get("CRI_SHIM_CLUSTER_DIR", "/var/lib/cri-shim-cluster"))


@pytest.fixture(scope="module")
def before() -> dict[str, list[str]]:
    return host_snapshot()


@pytest.fixture(scope="module")
def kube(before: dict[str, list[str]]) -> Iterator[Kube]:
    if os.environ.get("CRI_SHIM_CLUSTER_REUSE") == "1" and "kubeconfig" in status():
        # development: a cluster that is up already is used as it is, and left up
        yield Kube(status()["kubeconfig"])
        return
    up = cluster_sh("up", timeout=1800)
    try:
        assert up.returncode == 0, f"cluster up failed:\n{up.stdout}\n{up.stderr}"
        st = status()
        yield Kube(st["kubeconfig"])
    finally:
        if "cluster: down" not in cluster_sh("status").stdout:
            cluster_sh("down")


def client_pod(name: str, node: str) -> str:
    return f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: client}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "3600"]
"""


WEB = f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 4
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        nodeTaintsPolicy: Honor  # a cordoned (drained) node leaves the count: all go to the other
        labelSelector:
          matchLabels: {{app: web}}
      containers:
      - name: httpd
        image: {HTTPD}
        ports: [{{containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def http_get(kube: Kube, pod: str, host: str, port: int = 80) -> str:
    """GET / from inside ``pod`` with busybox nc (Debian's static busybox wget segfaults on
    this kernel, even on the host)."""
    cmd = f'printf "GET / HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n" | nc -w 5 {host} {port}'
    return kube("exec", pod, "--", "sh", "-c", cmd)


def test_nodes_ready_on_cri_shim(kube: Kube) -> None:
    nodes = kube.json("get", "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == list(NODES)
    for n in nodes:
        assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("cri-shim://")
        assert {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"] == "True"
    cidrs = {n["spec"]["podCIDR"] for n in nodes}
    assert len(cidrs) == 2
    # kubelet's config names no cgroup driver: the one in force is what cri-shim reported
    configz = json.loads(kube("get", "--raw", "/api/v1/nodes/node-a/proxy/configz"))
    assert configz["kubeletconfig"]["cgroupDriver"] == "cgroupfs"
    st = status()
    assert st["apiserver"] == "https://10.250.0.1:6443" and st["registry"] == REGISTRY
    for node in NODES:
        assert int(st[f"{node} runtime pid"]) > 0


#: kubelet collects images every 5 minutes (ImageGCPeriod, a constant), and its first round
#: after a start finds every image just detected, too young for any minimum age: the probe is
#: set up here, first, and checked at the end of the run
GC_DROP_IN = CLUSTER_DIR / "node-b" / "kubelet.conf.d" / "50-image-gc.conf"
GC_PROBE: dict[str, Any] = {}


def test_image_gc_probe_pulled_and_kubelet_restarted_with_low_thresholds(kube: Kube) -> None:
    tag = f"gc{os.getpid()}"
    probe = f"{REGISTRY}/cluster/gc-probe:{tag}"
    image = ib.build_image([ib.busybox_layer(("sh", "true"))], config={"Cmd": ["true"], "Labels": {"probe": tag}})
    ib.push(f"http://{REGISTRY}", "cluster/gc-probe", tag, image)
    # pulled straight through node-b's runtime: no container (not even an exited one, which
    # kubelet counts as a user of its image until its container GC) ever used it
    pulled = subprocess.run([str(CRICTL), "--runtime-endpoint", f"unix://{CLUSTER_DIR / 'node-b' / 'cri.sock'}",
                             "pull", probe], capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled
    GC_DROP_IN.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                          "imageGCHighThresholdPercent: 1\nimageGCLowThresholdPercent: 0\nimageMinimumGCAge: 1s\n")
    res = cluster_sh("restart-kubelet", "node-b", timeout=180)
    assert res.returncode == 0, res
    GC_PROBE.update(image=probe, restarted=time.monotonic())
    eventually("node-b reports the probe image", lambda: probe in _node_images(kube, "node-b"), 60, every=2)


def test_deployment_spreads_over_both_nodes(kube: Kube) -> None:
    kube.apply(WEB)
    kube.wait("--for=condition=Available", "deployment/web", timeout=240)
    pods = kube.pods("app=web")
    assert len(pods) == 4
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node-a", "node-a", "node-b", "node-b"]
    for node in NODES:
        kube.apply(client_pod(f"client-{node}", node))
    kube.wait("--for=condition=Ready", "pod/client-node-a", "pod/client-node-b", timeout=120)


def test_service_reached_from_each_node_by_ip_and_dns(kube: Kube) -> None:
    ip = kube.json("get", "service", "web")["spec"]["clusterIP"]
    for node in NODES:
        for target in (ip, "web", "web.default.svc.cluster.local"):
            out = http_get(kube, f"client-{node}", target)
            assert "hello from busybox httpd" in out, (node, target, out)
    # pod to pod across nodes, by pod IP, and without NAT: httpd -v logs the client pod's own
    # address (network.no_masquerade_cidrs); every pod's address is in its node's range
    nodes = kube.json("get", "nodes")["items"]
    cidrs = {n["metadata"]["name"]: ipaddress.ip_network(n["spec"]["podCIDR"]) for n in nodes}
    client_ip = kube.json("get", "pod", "client-node-a")["status"]["podIP"]
    for pod in kube.pods("app=web"):
        assert ipaddress.ip_address(pod["status"]["podIP"]) in cidrs[pod["spec"]["nodeName"]]
        out = http_get(kube, "client-node-a", pod["status"]["podIP"], 8080)
        assert "hello" in out
        if pod["spec"]["nodeName"] == "node-b":
            assert f"{client_ip}]:" in kube("logs", pod["metadata"]["name"])
    ns = kube("exec", "client-node-b", "--", "nslookup", "kubernetes.default.svc.cluster.local")
    assert "10.96.0.1" in ns


def test_logs_exec_attach_cp(kube: Kube, tmp_path: Any) -> None:
    web = kube.pods("app=web")[0]["metadata"]["name"]
    # httpd -v logs each request (the service test made some)
    eventually("httpd request log", lambda: "GET /" in kube("logs", web) or "200" in kube("logs", web), 30)
    assert kube("exec", "client-node-a", "--", "echo", "hi").strip() == "hi"
    res = kube.run("exec", "-i", "client-node-b", "--", "sh", "-c", "cat; exit 3", input="from stdin\n", check=False)
    assert res.returncode == 3 and res.stdout == "from stdin\n", res
    # interactive with a terminal: script(1) gives kubectl a pty, the container gets one too
    cmd = " ".join([*kube_cmd(kube), "exec", "-it", "client-node-a", "--", "sh", "-c",
                    "'tty; stty size; read l; echo got:$l; exit 4'"])
    res = subprocess.run(["script", "-q", "-e", "-c", cmd, "/dev/null"], input="typed\n", capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 4 and "/dev/pts/" in res.stdout and "got:typed" in res.stdout, res
    # kubectl run -it: the container itself has the terminal (tty: true), of its own devpts
    cmd = " ".join([*kube_cmd(kube), "run", "tty-run", "-it", "--rm", "--restart=Never", f"--image={BUSYBOX}",
                    "--", "sh", "-c", "'read l; t=$(tty) && test -c $t && echo tty-ok:$t; echo got:$l'"])
    res = subprocess.run(["script", "-q", "-e", "-c", cmd, "/dev/null"], input="typed\n", capture_output=True,
                         text=True, timeout=120)
    assert "tty-ok:/dev/pts/" in res.stdout and "got:typed" in res.stdout, res
    kube.apply(f"""apiVersion: v1
kind: Pod
metadata:
  name: echoer
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: main
    image: {BUSYBOX}
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "while read l; do echo got:$l; done"]
""")
    kube.wait("--for=condition=Ready", "pod/echoer", timeout=120)
    res = kube.run("attach", "-i", "echoer", input="hello attach\n", check=False, timeout=60)
    # stdinOnce: the end of kubectl's stdin closes the container's, its loop ends, so does it
    assert res.returncode == 0 and "got:hello attach" in res.stdout, res
    eventually("echoer exited", lambda: kube.json("get", "pod", "echoer")["status"]["phase"] == "Succeeded", 60)
    src = tmp_path / "in.txt"
    src.write_text("copied through the apiserver\n")
    kube("cp", str(src), "client-node-a:/tmp/in.txt")
    assert kube("exec", "client-node-a", "--", "cat", "/tmp/in.txt") == "copied through the apiserver\n"
    kube("cp", "client-node-a:/tmp/in.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_text() == "copied through the apiserver\n"


def test_port_forward(kube: Kube) -> None:
    web = kube.pods("app=web")[-1]["metadata"]["name"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*kube_cmd(kube), "port-forward", f"pod/{web}", f"{port}:8080"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        def answers() -> bool:
            return "hello from busybox httpd" in httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
        eventually("port-forward answers", lambda: _quiet(answers), 60)
        for _ in range(3):
            assert answers()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


def kube_cmd(kube: Kube) -> list[str]:
    from tests.cluster.kube import KUBECTL

    return [str(KUBECTL), f"--kubeconfig={kube.kubeconfig}"]


def _quiet(check: Any) -> bool:
    try:
        return bool(check())
    except httpx.HTTPError:
        return False


def test_host_network_pod_is_on_the_node(kube: Kube) -> None:
    kube.apply(f"""apiVersion: v1
kind: Pod
metadata:
  name: hostnet
spec:
  nodeName: node-b
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {HTTPD}
    command: ["httpd", "-f", "-p", "18080", "-h", "/www"]
""")
    kube.wait("--for=condition=Ready", "pod/hostnet", timeout=120)
    pod = kube.json("get", "pod", "hostnet")
    assert pod["status"]["podIP"] == "10.250.0.3"  # node-b's address
    assert kube("exec", "hostnet", "--", "hostname").strip() == "node-b"
    assert "hello from busybox httpd" in http_get(kube, "client-node-a", "10.250.0.3", 18080)
    kube("delete", "pod", "hostnet", "--wait=false")


def test_host_port_and_node_port_from_the_host(kube: Kube) -> None:
    # a hostPort (cri-shim's DNAT in the node's netns) and a NodePort (kube-proxy's, on both
    # nodes' addresses) answer a client on the host, through the cluster bridge
    kube.apply(f"""apiVersion: v1
kind: Pod
metadata:
  name: ports
  labels: {{app: ports}}
spec:
  nodeName: node-a
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {HTTPD}
    ports: [{{containerPort: 8080, hostPort: 18081}}]
---
apiVersion: v1
kind: Service
metadata:
  name: ports
spec:
  type: NodePort
  selector: {{app: ports}}
  ports: [{{port: 80, targetPort: 8080}}]
""")
    kube.wait("--for=condition=Ready", "pod/ports", timeout=120)
    node_port = kube.json("get", "service", "ports")["spec"]["ports"][0]["nodePort"]
    for url in ("http://10.250.0.2:18081/", f"http://10.250.0.2:{node_port}/", f"http://10.250.0.3:{node_port}/"):
        eventually(f"{url} answers", lambda u=url: "hello from busybox httpd" in _quiet_get(u), 30)  # type: ignore[misc]
    kube("delete", "pod", "ports", "--wait=false")


def _quiet_get(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return ""


def test_stats_summary_from_cri(kube: Kube) -> None:
    # kubelet's /stats/summary through the apiserver (PodAndContainerStatsFromCRI: every pod
    # figure comes from cri-shim's ListPodSandboxStats / ListContainerStats)
    def complete() -> bool:
        summary = json.loads(kube("get", "--raw", "/api/v1/nodes/node-a/proxy/stats/summary"))
        pods = {p["podRef"]["name"]: p for p in summary["pods"]}
        pod = pods["client-node-a"]
        c = pod["containers"][0]
        return (pod["cpu"]["usageCoreNanoSeconds"] > 0 and pod["memory"]["workingSetBytes"] > 0
                and pod["network"]["rxBytes"] > 0 and c["rootfs"]["usedBytes"] >= 0 and "logs" in c)
    eventually("stats of client-node-a in /stats/summary", complete, 60, every=3)
    # /metrics/cadvisor from ListPodSandboxMetrics: cAdvisor's names and labels, per container
    metrics = kube("get", "--raw", "/api/v1/nodes/node-a/proxy/metrics/cadvisor")
    assert any(line.startswith("container_memory_working_set_bytes{") and 'container="main"' in line
               and 'pod="client-node-a"' in line for line in metrics.splitlines())


def rpc_counts(node: str) -> dict[str, float]:
    """cri-shim's ``cri_shim_grpc_requests_total`` with code OK by method, scraped from the
    node's daemon (its metrics listen on 127.0.0.1 in the node's network namespace)."""
    script = ("import urllib.request; "
              "print(urllib.request.urlopen('http://127.0.0.1:9472/metrics', timeout=10).read().decode())")
    out = subprocess.run(["ip", "netns", "exec", f"crishimk8s-{node}", "python3", "-c", script],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    counts: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("cri_shim_grpc_requests_total{") and 'code="OK"' in line:
            method = line.split('method="', 1)[1].split('"', 1)[0]
            counts[method] = counts.get(method, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_kubelet_lists_through_the_stream_rpcs(kube: Kube) -> None:
    """kubelet runs with the CRIListStreaming gate (scripts/clusterlib/configs.py): its relist
    and its pod and container listings go through StreamPodSandboxes and StreamContainers."""
    for node in NODES:
        first = rpc_counts(node)
        for method in ("StreamPodSandboxes", "StreamContainers"):
            assert first.get(method, 0) > 0, f"{node}: kubelet never called {method}: {sorted(first)}"
        # PLEG relists every second: the streamed lists go on
        def more(node: str = node, before: float = first["StreamContainers"]) -> bool:
            return rpc_counts(node).get("StreamContainers", 0) > before

        eventually(f"{node}: more StreamContainers calls", more, 30, every=2)


def test_job_completes(kube: Kube) -> None:
    kube.apply(f"""apiVersion: batch/v1
kind: Job
metadata:
  name: once
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: {BUSYBOX}
        command: ["sh", "-c", "echo job done"]
""")
    kube.wait("--for=condition=Complete", "job/once", timeout=120)
    assert "job done" in kube("logs", "job/once")


def test_liveness_probe_restarts_container(kube: Kube) -> None:
    kube.apply(f"""apiVersion: v1
kind: Pod
metadata:
  name: liveness
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", "touch /tmp/alive; sleep 4; rm /tmp/alive; sleep 3600"]
    livenessProbe:
      exec: {{command: ["test", "-f", "/tmp/alive"]}}
      periodSeconds: 2
      failureThreshold: 2
""")

    def restarted() -> bool:
        st = kube.json("get", "pod", "liveness")["status"].get("containerStatuses", [])
        return bool(st) and st[0]["restartCount"] >= 1
    eventually("a liveness restart", restarted, 90, every=2)
    events = kube("get", "events", "--field-selector", "involvedObject.name=liveness")
    assert "Unhealthy" in events


def _restarts(kube: Kube, selector: str) -> dict[str, int]:
    return {p["metadata"]["name"]: sum(c["restartCount"] for c in p["status"].get("containerStatuses", []))
            for p in kube.pods(selector)}


def test_kill9_runtime_pods_keep_serving(kube: Kube) -> None:
    before = _restarts(kube, "app=web")
    ips = [p["status"]["podIP"] for p in kube.pods("app=web") if p["spec"]["nodeName"] == "node-a"]
    assert ips
    pid = int(status()["node-a runtime pid"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    served = 0
    while time.monotonic() < deadline:
        for ip in ips:  # from node-b, straight to the pods of node-a, whose runtime is dead
            out = http_get(kube, "client-node-b", ip, 8080)
            assert "hello" in out
            served += 1
        time.sleep(1)
    assert served >= len(ips)
    assert status()["node-a runtime pid"] == "not running"
    res = cluster_sh("start-runtime", "node-a", timeout=120)
    assert res.returncode == 0, res.stderr
    time.sleep(15)  # kubelet relists (PLEG) against the new daemon
    assert _restarts(kube, "app=web") == before
    assert kube("exec", "client-node-a", "--", "echo", "after").strip() == "after"
    kube.wait("--for=condition=Available", "deployment/web", timeout=60)


def _node_images(kube: Kube, node: str) -> set[str]:
    """The images kubelet reports for ``node`` (from cri-shim's ListImages), by every name."""
    return {name for img in kube.json("get", "node", node)["status"].get("images", []) for name in img["names"]}


def test_kubelet_image_gc_removes_unused_images(kube: Kube) -> None:
    # kubelet's image GC over cri-shim (ImageFsInfo for the usage, ListImages, RemoveImage):
    # with its thresholds at 0/1 %, the second round after the restart (5 minutes on) removes
    # every image no container uses, and keeps the images of running containers
    assert GC_PROBE, "the probe was not set up (test_image_gc_probe_pulled_and_kubelet_restarted_with_low_thresholds)"
    try:
        left = GC_PROBE["restarted"] + 300 + 90 - time.monotonic()
        eventually("the unused probe image collected by kubelet's image GC",
                   lambda: GC_PROBE["image"] not in _node_images(kube, "node-b"), max(left, 30), every=3)
        in_use = {c["image"] for p in kube.json("get", "pods", "-A")["items"] if p["spec"].get("nodeName") == "node-b"
                  and p["status"].get("phase") == "Running" for c in p["spec"]["containers"]}
        assert in_use and in_use <= _node_images(kube, "node-b"), in_use
    finally:
        GC_DROP_IN.unlink(missing_ok=True)
        res = cluster_sh("restart-kubelet", "node-b", timeout=180)
        assert res.returncode == 0, res


def test_drain_moves_pods(kube: Kube) -> None:
    # pods without a controller would stop the drain: gone first
    kube("delete", "pod", "client-node-b", "echoer", "liveness", "--ignore-not-found", timeout=120)
    kube("drain", "node-b", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=180s", timeout=240)
    try:
        def all_on_a() -> bool:
            pods = [p for p in kube.pods("app=web") if not p["metadata"].get("deletionTimestamp")]
            return len(pods) == 4 and all(p["spec"]["nodeName"] == "node-a" for p in pods)
        eventually("web pods moved to node-a", all_on_a, 120)
        kube.wait("--for=condition=Available", "deployment/web", timeout=120)
    finally:
        kube("uncordon", "node-b")


def test_down_leaves_the_machine_as_found(kube: Kube, before: dict[str, list[str]]) -> None:
    res = cluster_sh("down", timeout=300)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    assert host_snapshot() == before
