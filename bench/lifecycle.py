#!/usr/bin/env python3
"""Benchmark: pod and container lifecycle latency and memory, cri-shim versus containerd. Not a test.

Both runtimes are driven through the CRI by the same Python gRPC client, in one run:

- Debian's containerd + runc: a private instance (own root, state, socket and config in a temp
  dir; started and stopped by pid), its CRI plugin networking pods with Debian's CNI plugins
  (bridge + host-local + portmap, a bridge and subnet of its own) and a pause image built here
  from busybox (``sleep infinity``) in a local registry;
- a cri-shim daemon (tests.support.daemon), built-in network by default (``--shim-cni`` for
  the same CNI plugins).

Pods: for each size (30 and 100 by default) run that many pods one after the other (timing
each RunPodSandbox), measure memory, then stop and remove each (timing each call). Memory per
pod is PSS from /proc/PID/smaps_rollup: the per-pod processes (cri-shim: the pod shim;
containerd: containerd-shim-runc-v2 + pause) plus the daemon's own growth, divided by the
number of pods. cri-shim runs with ``pods.merge_shim_memory`` (KSM) unless ``--no-ksm``: its
memory is printed right after the pods started and again once ksmd has merged the shims'
identical pages (ksmd is stopped again afterwards if it was stopped before).

Containers: in one pod, create+start a busybox container, ExecSync ``true`` a few times,
stop (timeout 0) + remove; repeated.

    .venv/bin/python bench/lifecycle.py [--pods 30,100] [--containers 30] [--execs 5]

Prints p50/p95 per operation for both and the ratio cri-shim/containerd of the p50s. Targets:
pod run+stop+remove and container create+start and ExecSync p50 at most half of containerd's;
memory per pod at most containerd's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.gen import api_pb2_grpc
from tests.support import imagebuilder as ib
from tests.support.cni import bridge_conflist, write_conflist
from tests.support.daemon import running_daemon, unique_subnet
from tests.support.names import unique
from tests.support.registry import running_registry

CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"
CNI_BIN = "/usr/lib/cni"


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def settle_ksm(limit: float = 600.0) -> None:
    """Wait until ksmd has merged what it will: at least three full scans of the offered
    memory since now (a page is merged on a scan after the one that saw it unchanged), and no
    change in the number of merged pages across the last scan; at most ``limit`` seconds."""
    scans = Path("/sys/kernel/mm/ksm/full_scans")
    sharing = Path("/sys/kernel/mm/ksm/pages_sharing")
    start = int(scans.read_text())
    deadline = time.monotonic() + limit
    seen: dict[int, int] = {}
    while time.monotonic() < deadline:
        n = int(scans.read_text())
        seen[n] = int(sharing.read_text())
        if n >= start + 3 and seen.get(n - 1) == seen[n] and seen[n] > 0:
            return
        time.sleep(1)


class Runtime:
    """A CRI endpoint plus how to find its per-pod processes."""

    name = ""
    merges = False

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.channel = grpc.insecure_channel(f"unix:{socket}")
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)

    def daemon_pid(self) -> int:
        raise NotImplementedError

    def pod_pids(self) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        self.channel.close()


class Containerd(Runtime):
    name = "containerd"

    def __init__(self, base: Path, registry: str, pause: str) -> None:
        self.base = base
        base.mkdir(parents=True)
        (base / "cni").mkdir()
        self.bridge = unique("bcd")
        self.subnet = unique_subnet(prefix=22)
        write_conflist(base / "cni", bridge_conflist("bench-cd", self.bridge, self.subnet, base / "cni-ipam"),
                       "10-bench.conflist")
        self.log = base / "containerd.log"
        sock = base / "containerd.sock"
        self.config = base / "config.toml"
        self.config.write_text(f"""
version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{base / 'ttrpc.sock'}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "{pause}"
  # this VM lacks CAP_SYS_RESOURCE: the pause container's -998 would fail runc create
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    BinaryName = "{os.environ.get('BENCH_RUNC', 'runc')}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{base / 'cni'}"
    bin_dir = "{CNI_BIN}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
""")
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen([CONTAINERD, "--config", str(self.config)], stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        super().__init__(sock)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(grpc.RpcError):
                if sock.exists():
                    self.rt.Version(pb.VersionRequest(), timeout=2)
                    return
            time.sleep(0.1)
        raise RuntimeError("containerd did not start")

    def daemon_pid(self) -> int:
        return self.proc.pid

    def shim_pids(self) -> list[int]:
        found = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in cmd:
                found.append(int(p.name))
        return found

    def pod_pids(self) -> list[int]:
        shims = self.shim_pids()
        return shims + [c for s in shims for c in children(s)]

    def stop(self) -> None:
        self.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in self.shim_pids():  # only if a pod was left running (a failed run)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-R", "-l", str(self.base / "state")], capture_output=True, check=False)
        subprocess.run(["umount", "-R", "-l", str(self.base / "root")], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


class CriShim(Runtime):
    name = "cri-shim"

    def __init__(self, daemon: Any, merges: bool) -> None:
        self.d = daemon
        self.merges = merges
        super().__init__(daemon.socket)

    def daemon_pid(self) -> int:
        return int(self.d.proc.pid)

    def pod_pids(self) -> list[int]:
        pids = []
        for f in (self.d.state / "shims").glob("*.pid"):
            if f.stem != "factory":
                pid = int(f.read_text().split()[0])
                pids += [pid, *children(pid)]
        return pids


@dataclass
class Results:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    memory: dict[tuple[str, int], float] = field(default_factory=dict)

    def add(self, runtime: str, op: str, seconds: float) -> None:
        self.samples.setdefault((runtime, op), []).append(seconds)


def timed(results: Results, runtime: str, op: str, fn: Callable[..., Any]) -> Any:
    started = time.perf_counter()
    out = fn()
    results.add(runtime, op, time.perf_counter() - started)
    return out


def pod_config(i: int, tag: str) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=f"bench-{tag}-{i}", namespace="bench", uid=unique("u", 30)),
        hostname=f"bench-{i}",
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))),
    )


def bench_pods(r: Runtime, n: int, results: Results) -> None:
    base_pss = pss_kib(r.daemon_pid())
    ids = []
    for i in range(n):
        cfg = pod_config(i, f"{r.name}{n}")
        resp = timed(results, r.name, f"run pod (n={n})",
                     lambda c=cfg: r.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=c), timeout=120))
        ids.append(resp.pod_sandbox_id)
    time.sleep(1.0)

    def measure(label: str) -> float:
        per_pod = sum(pss_kib(p) for p in r.pod_pids())
        growth = max(0, pss_kib(r.daemon_pid()) - base_pss)
        print(f"{r.name} n={n}{label}: per-pod processes {per_pod / n / 1024:.2f} MiB PSS, daemon growth "
              f"{growth / n / 1024:.2f} MiB per pod", flush=True)
        return (per_pod + growth) / n / 1024

    results.memory[(r.name + (" (no KSM yet)" if r.merges else ""), n)] = measure("")
    if r.merges:
        settle_ksm()
        results.memory[(r.name, n)] = measure(" after KSM merged")
    for sid in ids:
        started = time.perf_counter()
        timed(results, r.name, f"stop pod (n={n})",
              lambda s=sid: r.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s), timeout=120))
        timed(results, r.name, f"remove pod (n={n})",
              lambda s=sid: r.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=s), timeout=120))
        results.add(r.name, f"stop+remove pod (n={n})", time.perf_counter() - started)
    runs = results.samples[(r.name, f"run pod (n={n})")][-n:]
    stops = results.samples[(r.name, f"stop+remove pod (n={n})")][-n:]
    for a, b in zip(runs, stops, strict=True):
        results.add(r.name, f"run+stop+remove pod (n={n})", a + b)


def bench_containers(r: Runtime, image: str, n: int, execs: int, results: Results) -> None:
    r.img.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=300)
    cfg = pod_config(0, f"{r.name}-ctr")
    sid = r.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=120).pod_sandbox_id
    try:
        for i in range(n):
            ccfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=f"c{i}"), image=pb.ImageSpec(image=image),
                                      command=["sleep", "3600"])
            started = time.perf_counter()
            cid = r.rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sid, config=ccfg, sandbox_config=cfg),
                                       timeout=120).container_id
            r.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=120)
            results.add(r.name, "create+start container", time.perf_counter() - started)
            for _ in range(execs):
                res = timed(results, r.name, "ExecSync true",
                            lambda c=cid: r.rt.ExecSync(pb.ExecSyncRequest(container_id=c, cmd=["true"], timeout=10),
                                                        timeout=60))
                assert res.exit_code == 0
            started = time.perf_counter()
            r.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=120)
            r.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=120)
            results.add(r.name, "stop+remove container", time.perf_counter() - started)
    finally:
        r.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        r.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def report(results: Results) -> None:
    ops = []
    for (_rt, op) in results.samples:
        if op not in ops:
            ops.append(op)
    print(f"\n{'operation':34s} {'containerd p50/p95 ms':>22s} {'cri-shim p50/p95 ms':>22s} {'ratio p50':>10s}")
    for op in ops:
        c = results.samples.get(("containerd", op), [])
        s = results.samples.get(("cri-shim", op), [])
        if not c or not s:
            continue
        cp50, sp50 = statistics.median(c) * 1000, statistics.median(s) * 1000
        print(f"{op:34s} {cp50:10.1f} / {pct(c, .95) * 1000:8.1f}  {sp50:10.1f} / {pct(s, .95) * 1000:8.1f}  "
              f"{sp50 / cp50:9.2f}")
    for (rt, n), mib in sorted(results.memory.items()):
        other = results.memory.get(("containerd", n))
        if rt != "containerd" and other:
            print(f"memory per pod (n={n}): containerd {other:.2f} MiB PSS, {rt} {mib:.2f} MiB PSS, "
                  f"ratio {mib / other:.2f}")


@contextlib.contextmanager
def both(base: Path, registry: str, pause: str, shim_cni: bool, ksm: bool) -> Iterator[tuple[Containerd, CriShim]]:
    extra = f"[pods]\nmerge_shim_memory = {'true' if ksm else 'false'}\n"
    cni_bridge = unique("bcs")
    if shim_cni:
        conf = base / "shim-cni"
        conf.mkdir()
        ipam = conf.parent / "cni-ipam"
        doc = bridge_conflist("bench-shim", cni_bridge, unique_subnet(prefix=22), ipam)
        write_conflist(conf, doc, "10-bench.conflist")
        extra += f'[network]\ncni_conf_dir = "{conf}"\nmode = "cni"\n'
    else:
        extra += f'[network]\npod_cidr = "{unique_subnet(prefix=22)}"\n'
    cd = Containerd(base / "containerd", registry, pause)
    try:
        with running_daemon(base / "crishim", extra_config=extra, log_level="info") as d:
            shim = CriShim(d, ksm)
            try:
                yield cd, shim
            finally:
                shim.close()
    finally:
        cd.stop()
        if shim_cni:
            subprocess.run(["ip", "link", "del", cni_bridge], capture_output=True, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", default="30,100", help="pod counts, comma-separated")
    ap.add_argument("--containers", type=int, default=30)
    ap.add_argument("--execs", type=int, default=5)
    ap.add_argument("--shim-cni", action="store_true", help="cri-shim uses the CNI plugins too")
    ap.add_argument("--only", choices=("pods", "containers"), default=None)
    ap.add_argument("--no-ksm", action="store_true", help="pods.merge_shim_memory = false for cri-shim")
    args = ap.parse_args()
    before_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    # the CNI plugins' ipMasq/portmap go through iptables-nft, which makes `table ip nat` if absent
    nat_before = subprocess.run(["nft", "list", "table", "ip", "nat"], capture_output=True, check=False).returncode == 0
    ksm_run = Path("/sys/kernel/mm/ksm/run")
    before_ksm = ksm_run.read_text() if ksm_run.exists() else None
    base = Path(tempfile.mkdtemp(prefix="bench-lc-"))
    results = Results()
    try:
        with running_registry(base) as reg:
            reg.push("bench/pause", "1", ib.build_image([ib.busybox_layer()],
                                                         config={"Entrypoint": ["/bin/sleep", "infinity"]}))
            reg.push("bench/busybox", "1", ib.busybox_image())
            pause, busybox = reg.ref("bench/pause", "1"), reg.ref("bench/busybox", "1")
            with both(base, reg.host, pause, args.shim_cni, not args.no_ksm) as (cd, shim):
                runtimes: list[Runtime] = [cd, shim]
                # warm up both (first pod pays one-time costs: image unpack, bridge, nft table)
                for r in runtimes:
                    bench_pods(r, 2, Results())
                if args.only in (None, "pods"):
                    for k, n in enumerate(int(x) for x in args.pods.split(",")):
                        for r in (runtimes if k % 2 == 0 else runtimes[::-1]):
                            bench_pods(r, n, results)
                            print(f"{r.name}: {n} pods done", flush=True)
                if args.only in (None, "containers"):
                    for r in runtimes:
                        bench_containers(r, busybox, 2, 1, Results())
                    for r in runtimes:
                        bench_containers(r, busybox, args.containers, args.execs, results)
                        print(f"{r.name}: containers done", flush=True)
    finally:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(before_forward)
        if not nat_before:
            subprocess.run(["nft", "delete", "table", "ip", "nat"], capture_output=True, check=False)
        if before_ksm is not None and before_ksm.strip() == "0":
            ksm_run.write_text("0")  # stop ksmd again (merged pages stay merged)
        shutil.rmtree(base, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
