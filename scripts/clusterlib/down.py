"""``down``: undo ``up``, also a partial one, from the state file and the fixed names of layout.

Order: kubelets and kube-proxies first (so nothing restarts pods), then every node's pods are
removed through its cri-shim (crictl rmp: the runtime unmounts and frees what it made), then
cri-shim, the control plane and the registry, each by its recorded pid and start time (SIGTERM,
SIGKILL after a grace period). Whatever still runs in the cluster's cgroups (pod shims and
containers of a runtime that could not clean up) is SIGKILLed by pid, then the cgroups are
removed. The node namespaces go (their pins unmounted: the mounts, bridge, veths and nftables
tables inside go with them), then the cluster bridge, the sysctls kubelet changed, the
directories ``up`` created and ``BASE``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from clusterlib import host, layout, state
from clusterlib.state import Proc, State


def stop(procs: list[Proc], grace: float = 15.0) -> None:
    """SIGTERM each live process of ``procs``, SIGKILL those alive after ``grace`` seconds."""
    live = [p for p in procs if p.alive()]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.alive() for p in live):
        _reap()
        time.sleep(0.2)
    for p in live:
        if p.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def remove_pods(node: layout.Node) -> None:
    from tests.support.tools import CRICTL

    if not node.cri_socket.exists():
        return
    ep = f"unix://{node.cri_socket}"
    subprocess.run([str(CRICTL), "--runtime-endpoint", ep, "--timeout", "60s", "rmp", "-fa"],
                   capture_output=True, timeout=180)


def kill_cgroup(path: str) -> None:
    for _ in range(50):
        pids = host.cgroup_pids(path)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap()
        time.sleep(0.2)


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix) or p == prefix[:-1]]


def down() -> list[str]:
    """Tear down; returns what could not be removed (empty: the machine is as it was)."""
    st = state.load() or State()
    by = {p.name: p for p in st.procs}
    problems: list[str] = []
    stop([by[n] for n in by if n.endswith(("/kubelet", "/kube-proxy"))])
    for node in layout.NODES:
        cri = by.get(f"{node.name}/cri-shim")
        if cri is not None and cri.alive():
            try:
                remove_pods(node)
            except subprocess.SubprocessError as exc:
                problems.append(f"{node.name}: removing pods: {exc}")
    stop([by[n] for n in by if n.endswith("/cri-shim")], grace=30)
    stop([p for p in st.procs if "/" not in p.name])
    kill_cgroup(layout.CGROUP)
    problems += host.remove_cgroup(layout.CGROUP)
    for node in layout.NODES:
        for pin in (node.mntns_path, node.utsns_path):
            if pin.exists():
                subprocess.run(["umount", str(pin)], capture_output=True)
        subprocess.run(["ip", "netns", "del", node.netns], capture_output=True)
    if layout.NS_DIR.exists():
        subprocess.run(["umount", str(layout.NS_DIR)], capture_output=True)
    subprocess.run(["ip", "link", "del", layout.BRIDGE], capture_output=True)
    for name, value in st.sysctls.items():
        try:
            if Path("/proc/sys", name).read_text().strip() != value:
                Path("/proc/sys", name).write_text(value)
        except OSError as exc:
            problems.append(f"sysctl {name}: {exc}")
    for d in st.made_dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)
    left = _mounts_under(layout.BASE)
    if left:
        problems.append(f"mounts left under {layout.BASE}: {left}")
    elif layout.BASE.exists():
        shutil.rmtree(layout.BASE, ignore_errors=True)
    if layout.BRIDGE in host.run("ip", "-o", "link", "show", check=False):
        problems.append(f"bridge {layout.BRIDGE} still there")
    for node in layout.NODES:
        if node.netns_path.exists():
            problems.append(f"netns {node.netns} still there")
    return problems
