"""kubectl against the cluster of scripts/cluster.sh, and a snapshot of what a cluster leaves on
the host (for "down leaves the machine as it found it")."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "scripts" / "cluster.sh"
KUBECTL = Path(os.environ.get("CRI_SHIM_K8S_CACHE", REPO / ".cache" / "k8s")) / "kubernetes-v1.37.2" / "kubectl"


def cluster_sh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=timeout, env=env)


def status() -> dict[str, str]:
    res = cluster_sh("status", timeout=60)
    return dict(line.split(": ", 1) for line in res.stdout.splitlines() if ": " in line)


@dataclass
class Kube:
    """kubectl with the cluster's admin kubeconfig."""

    kubeconfig: str

    def run(self, *args: str, input: str | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(KUBECTL), f"--kubeconfig={self.kubeconfig}", *args], capture_output=True,
                             text=True, input=input, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def __call__(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        return self.run(*args, input=input, timeout=timeout).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def apply(self, manifest: str) -> None:
        self("apply", "-f", "-", input=manifest)

    def pods(self, selector: str, namespace: str = "default") -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("-n", namespace, "get", "pods", "-l", selector)["items"]
        return items

    def wait(self, *args: str, timeout: float = 180) -> None:
        self("wait", *args, f"--timeout={int(timeout)}s", timeout=timeout + 30)


def eventually(what: str, check: Callable[[], bool], timeout: float = 120, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (AssertionError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s: {what}" + (f" (last error: {last})" if last else ""))


def _out(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout


#: what names the cluster's things on the host carry (other sessions' tests make their own
#: netns, mounts and tables meanwhile: only ours are compared)
OURS = ("crishimk8s", "csk8s-", "cri-shim-cluster", "/var/lib/kubelet", "/var/log/containers", "10.250.0.",
        "10.244.", "10.96.", "kube-proxy")


def _cluster_processes() -> list[str]:
    """Command lines naming the cluster's files or binaries (kubelet, etcd, cri-shim, shims...)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "cri-shim-cluster" in cmd or "kubernetes-v1.37.2/" in cmd or "etcd-v3.6.17/" in cmd:
            out.append(cmd.strip())
    return out


def host_snapshot() -> dict[str, list[str]]:
    """What of a cluster is on the host: links, netns, routes, nft tables and chains, mounts,
    cgroups and directories whose names are the cluster's."""
    def ours(lines: list[str]) -> list[str]:
        return sorted(re.sub(r"packets \d+ bytes \d+", "", line) for line in lines if any(o in line for o in OURS))

    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob("*/cri-shim-cluster")] + [
        str(p) for p in Path("/sys/fs/cgroup").glob("cri-shim-cluster")]
    return {
        "links": ours(_out("ip", "-o", "link").splitlines()),
        "netns": ours(_out("ip", "netns", "list").splitlines()),
        "routes": ours(_out("ip", "-4", "route", "show", "table", "all").splitlines()),
        "nft": ours(_out("nft", "list", "ruleset").splitlines()),
        "mounts": ours([line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]),
        "cgroups": sorted(cgroups),
        "processes": sorted(_cluster_processes()),
        "dirs": sorted(p for p in ("/var/lib/cri-shim-cluster", "/var/lib/kubelet", "/var/log/containers")
                       if Path(p).exists()),
        # kubelet's log links live in each node's own /var/log/containers, never the host's
        "log-links": sorted(str(p) for p in Path("/var/log/containers").glob("*") if "cri-shim-cluster" in
                            str(p.readlink() if p.is_symlink() else "")),
    }
