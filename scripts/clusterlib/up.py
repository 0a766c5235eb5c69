"""``up``: everything from nothing, in order, each piece recorded in the state file as it is made
(a failure midway leaves a record ``down`` undoes).

1. PKI, cgroups, the bridge; the registry with the cluster's images.
2. etcd, kube-apiserver (waits for /readyz), controller-manager, scheduler.
3. Per node: namespaces, cri-shim (waits for RuntimeReady), kubelet, kube-proxy.
4. The pod ranges the controller-manager gave the nodes are routed between them.
5. CoreDNS; waits until the nodes are Ready and CoreDNS is available.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from clusterlib import addons, configs, host, layout, pki
from clusterlib.state import State

KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(what: str, check: Callable[[], bool], timeout: float, st: State | None = None) -> None:
    """Poll ``check`` until true; on timeout raise with the tail of the logs of dead processes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, httpx.HTTPError, subprocess.SubprocessError, ValueError, RuntimeError):
            pass
        if st is not None:
            dead = [p for p in st.procs if not p.alive()]
            if dead:
                tail = Path(dead[0].log).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{dead[0].name} exited while waiting for {what}:\n{tail}")
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubectl(*args: str, input: str | None = None, timeout: float = 60) -> str:
    return host.run(str(layout.KUBECTL), f"--kubeconfig={layout.KUBECONFIG}", *args, input=input, timeout=timeout)


def preflight() -> None:
    if layout.BRIDGE in host.run("ip", "-o", "link", "show"):
        raise RuntimeError(f"bridge {layout.BRIDGE} exists: a cluster is up (scripts/cluster.sh down first)")
    ours = [ipaddress.ip_network(n) for n in (layout.NETWORK, layout.CLUSTER_CIDR, layout.SERVICE_CIDR)]
    for line in host.run("ip", "-4", "route", "show", "table", "all").splitlines():
        words = [w for w in line.split() if w not in ("local", "broadcast", "unicast")]
        try:
            net = ipaddress.ip_network(words[0], strict=False)
        except (ValueError, IndexError):
            continue
        if net.prefixlen > 0 and any(net.overlaps(o) for o in ours):
            raise RuntimeError(f"the host routes {net} ({line.strip()}): the cluster's ranges would collide")
    missing = [p for p in (layout.ETCD, layout.KUBELET, layout.COREDNS, layout.KUBECTL, layout.REGISTRY_BIN)
               if not p.exists()]
    if missing:
        raise RuntimeError(f"missing binaries {missing}: scripts/cluster-build.sh builds them")


def make_pki() -> None:
    ca = pki.CA(layout.PKI)
    kc = pki.kubeconfig
    url = layout.APISERVER_URL
    ca.issue("apiserver", "kube-apiserver", server=True,
             dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                  f"kubernetes.default.svc.{layout.CLUSTER_DOMAIN}", "localhost"),
             ips=(layout.HOST_IP, layout.KUBERNETES_SERVICE_IP, "127.0.0.1"))
    ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", groups=("system:masters",), client=True)
    pki.service_account_keys(layout.PKI)
    kc(layout.KUBECONFIG, url, ca.pair.cert, ca.issue("admin", "kubernetes-admin", groups=("system:masters",),
                                                      client=True), "admin")
    kc(layout.PKI / "controller-manager.kubeconfig", url, ca.pair.cert,
       ca.issue("controller-manager", "system:kube-controller-manager", client=True), "controller-manager")
    kc(layout.PKI / "scheduler.kubeconfig", url, ca.pair.cert,
       ca.issue("scheduler", "system:kube-scheduler", client=True), "scheduler")
    proxy = ca.issue("kube-proxy", "system:kube-proxy", client=True)
    for node in layout.NODES:
        kc(node.dir / "kubelet.kubeconfig", url, ca.pair.cert,
           ca.issue(f"kubelet-{node.name}", f"system:node:{node.name}", groups=("system:nodes",), client=True),
           f"system:node:{node.name}")
        kc(node.dir / "kube-proxy.kubeconfig", url, ca.pair.cert, proxy, "kube-proxy")


def admin_client() -> httpx.Client:
    pair = (str(layout.PKI / "admin.crt"), str(layout.PKI / "admin.key"))
    return httpx.Client(base_url=layout.APISERVER_URL, verify=str(layout.PKI / "ca.crt"), cert=pair, timeout=5)


def start_control_plane(st: State) -> None:
    cg = layout.CONTROL_CGROUP
    (layout.BASE / "registry").mkdir(parents=True, exist_ok=True)
    reg_cfg = layout.BASE / "registry.yml"
    reg_cfg.write_text(configs.registry_config(layout.BASE / "registry"))
    host.start(st, "registry", [str(layout.REGISTRY_BIN), "serve", str(reg_cfg)], cg,
               env={"OTEL_TRACES_EXPORTER": "none"})
    etcd_port, peer_port = free_port(), free_port()
    host.start(st, "etcd", configs.etcd_argv(layout.BASE / "etcd", etcd_port, peer_port), cg)
    wait_for("etcd", lambda: httpx.get(f"http://127.0.0.1:{etcd_port}/health", timeout=2).status_code == 200, 60, st)
    host.start(st, "kube-apiserver", configs.apiserver_argv(etcd_port), cg)
    with admin_client() as c:
        wait_for("kube-apiserver /readyz", lambda: c.get("/readyz").status_code == 200, 120, st)
    log(f"apiserver ready at {layout.APISERVER_URL}")
    host.start(st, "kube-controller-manager", configs.controller_manager_argv(), cg)
    host.start(st, "kube-scheduler", configs.scheduler_argv(), cg)
    wait_for("registry", lambda: httpx.get(f"http://{layout.REGISTRY}/v2/", timeout=2).status_code == 200, 30, st)
    digests = addons.push_images()
    log(f"pushed {len(digests)} images to {layout.REGISTRY}")


def start_node(st: State, node: layout.Node) -> None:
    for sub in ("pod-logs", "cni-none", "kubelet", "kubelet-pki", "kubelet.conf.d"):
        (node.dir / sub).mkdir(parents=True, exist_ok=True)
    host.make_node_netns(node)
    host.make_node_mntns(node, st)
    (node.dir / "cri-shim.toml").write_text(configs.cri_shim_config(node))
    (node.dir / "kubelet.yaml").write_text(configs.kubelet_config(node))
    (node.dir / "kube-proxy.yaml").write_text(configs.kube_proxy_config(node))
    start_cri_shim(st, node)


def start_cri_shim(st: State, node: layout.Node) -> None:
    """Start ``node``'s cri-shim daemon (again, after a crash: its state is on disk)."""
    host.start(st, f"{node.name}/cri-shim", [sys.executable, "-m", "cri_shim", "--config",
                                             str(node.dir / "cri-shim.toml")],
               node.system_cgroup, node=node, env={"PYTHONPATH": str(layout.REPO)})


def runtime_ready(node: layout.Node) -> bool:
    from tests.support.tools import CRICTL

    out = host.run(str(CRICTL), "--runtime-endpoint", f"unix://{node.cri_socket}", "info", timeout=20)
    conds = {c["type"]: c["status"] for c in json.loads(out)["status"]["conditions"]}
    return bool(conds.get("RuntimeReady"))


def start_node_agents(st: State, node: layout.Node) -> None:
    host.start(st, f"{node.name}/kubelet", configs.kubelet_argv(node), node.system_cgroup, node=node)
    host.start(st, f"{node.name}/kube-proxy", configs.kube_proxy_argv(node), node.system_cgroup, node=node)


def pod_cidrs() -> dict[str, str]:
    doc = json.loads(kubectl("get", "nodes", "-o", "json"))
    return {n["metadata"]["name"]: n["spec"].get("podCIDR", "") for n in doc["items"]}


def nodes_ready() -> bool:
    doc = json.loads(kubectl("get", "nodes", "-o", "json"))
    ready = [n for n in doc["items"]
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])]
    return len(ready) == len(layout.NODES)


def up() -> State:
    t0 = time.monotonic()
    preflight()
    layout.BASE.mkdir(parents=True, exist_ok=True)
    st = State()
    # kubelet sets these host-wide at start (setupKernelTunables); down puts back what was here
    st.sysctls = {s: Path("/proc/sys", s).read_text().strip() for s in KUBELET_SYSCTLS}
    st.save()
    make_pki()
    (layout.BASE / "registries.conf").write_text(configs.registries_conf())
    host.make_cgroup(layout.CONTROL_CGROUP)
    for node in layout.NODES:
        host.make_cgroup(node.system_cgroup)
    host.make_bridge()
    start_control_plane(st)
    for node in layout.NODES:
        start_node(st, node)
    for node in layout.NODES:
        wait_for(f"{node.name} cri-shim RuntimeReady", lambda n=node: runtime_ready(n), 60, st)  # type: ignore[misc]
        start_node_agents(st, node)
    log("nodes started: cri-shim, kubelet, kube-proxy")
    wait_for("pod ranges of both nodes", lambda: all(pod_cidrs().get(n.name) for n in layout.NODES), 120, st)
    st.pod_cidrs = pod_cidrs()
    st.save()
    for node in layout.NODES:
        host.route_pod_cidr(st.pod_cidrs[node.name], node)
    wait_for("nodes Ready", nodes_ready, 180, st)
    log(f"nodes Ready: {st.pod_cidrs}")
    kubectl("apply", "-f", "-", input=addons.coredns_manifests())
    wait_for("CoreDNS available", lambda: "condition met" in kubectl(
        "-n", "kube-system", "wait", "--for=condition=Available", "deployment/coredns", "--timeout=5s"), 240, st)
    log(f"cluster up in {time.monotonic() - t0:.0f}s")
    return st
