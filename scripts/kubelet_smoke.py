"""A standalone kubelet (no API server) runs static pods on a private cri-shim daemon.

    .venv/bin/python scripts/kubelet_smoke.py [--kubelet PATH] [--gates CRIListStreaming=true]
        [--seconds 60]

What it does, as root, everything under a temp directory and ended by pid:

- a local registry (Debian's docker-registry on 127.0.0.1) with the busybox test image;
- a cri-shim daemon (tests/support/daemon.py: its own socket, bridge, nft table, subnet and
  cgroup parent) at log level debug, so every RPC is a log line;
- kubelet with a KubeletConfiguration (staticPodPath, the feature gates, cgroupfs,
  failCgroupV1 false, ports on 127.0.0.1, no authentication webhooks) in a private mount
  namespace with a tmpfs on /var/lib/kubelet (its device-plugin socket path is fixed);
- two static pods, each a busybox container that sleeps; it waits until both run, lets
  kubelet work ``--seconds`` more (PLEG relists every second, stats every 10 s), then stops
  kubelet, removes the pods and stops the daemon.

It prints the RPCs kubelet called (name, count, status codes) and exits 0 when both static
pods ran and no RPC failed except as allowed; with a CRIListStreaming gate it also requires
that kubelet listed through the Stream* RPCs and never fell back to their List* twins.
Exit 3 when the kubelet binary is missing (build it into .cache/k8s/ first: see
docs/DEVELOPING.md), 1 on a failed check.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cri_shim.api.gen import api_pb2 as pb  # noqa: E402
from tests.support import imagebuilder as ib  # noqa: E402
from tests.support.daemon import running_daemon  # noqa: E402
from tests.support.registry import running_registry  # noqa: E402

DEFAULT_KUBELET = REPO / ".cache" / "k8s" / "kubelet-v1.37.2"
_RPC = re.compile(r"rpc=(\w+) rid=\w+ code=(\w+)")
#: codes kubelet's calls may get on a healthy node (ContainerStatus of a removed one, ...)
_ALLOWED = {"OK", "NOT_FOUND"}
STREAM_TWINS = {
    "StreamPodSandboxes": "ListPodSandbox", "StreamContainers": "ListContainers",
    "StreamContainerStats": "ListContainerStats", "StreamPodSandboxStats": "ListPodSandboxStats",
    "StreamPodSandboxMetrics": "ListPodSandboxMetrics", "StreamImages": "ListImages",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubelet_config(base: Path, sock: Path, gates: dict[str, bool]) -> str:
    gate_lines = "".join(f"  {k}: {'true' if v else 'false'}\n" for k, v in gates.items()) or "  {}\n"
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {base / "manifests"}
containerRuntimeEndpoint: unix://{sock}
featureGates:
{gate_lines}failSwapOn: false
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
address: 127.0.0.1
port: {free_port()}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {free_port()}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
podLogsDir: {base / "pod-logs"}
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 5s
fileCheckFrequency: 2s
"""


def static_pod(name: str, image: str) -> str:
    return f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
spec:
  restartPolicy: Always
  containers:
    - name: main
      image: {image}
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "echo started; exec sleep 3600"]
"""


def rpc_counts(log: str) -> dict[str, collections.Counter[str]]:
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for m in _RPC.finditer(log):
        out[m.group(1)][m.group(2)] += 1
    return out


def run(kubelet: Path, gates: dict[str, bool], seconds: float) -> int:
    base = Path(tempfile.mkdtemp(prefix="kubelet-smoke-"))
    (base / "manifests").mkdir()
    (base / "pod-logs").mkdir()
    (base / "reg").mkdir()
    failures: list[str] = []
    try:
        with running_registry(base / "reg") as reg:
            reg.push("smoke/busybox", "latest", ib.busybox_image())
            image = reg.ref("smoke/busybox")
            with running_daemon(base / "d", log_level="debug") as d:
                (base / "kubelet.yaml").write_text(kubelet_config(base, d.socket, gates))
                for name in ("smoke-a", "smoke-b"):
                    (base / "manifests" / f"{name}.yaml").write_text(static_pod(name, image))
                polls, more = _with_kubelet(kubelet, base, d, seconds)
                failures += more
                log = d.log_path.read_text(errors="replace")
                d.remove_all_pods()
        counts = rpc_counts(log)
        # this script's own calls: its readiness polls (ListContainers) and the daemon fixture's
        # start-up wait (Status), not kubelet's
        counts["ListContainers"]["OK"] -= polls
        counts = {n: +c for n, c in counts.items() if +c}
        print("RPCs kubelet called (code: count):")
        for name in sorted(counts):
            print(f"  {name:28} " + ", ".join(f"{c}: {n}" for c, n in sorted(counts[name].items())))
        bad = {n: c for n, c in counts.items() if set(c) - _ALLOWED}
        if bad:
            failures.append(f"RPCs with errors: {bad}")
        if gates.get("CRIListStreaming"):
            streamed = [n for n in STREAM_TWINS if n in counts and counts[n]["OK"]]
            fell_back = [STREAM_TWINS[n] for n in streamed if STREAM_TWINS[n] in counts]
            print(f"streamed: {', '.join(streamed) or 'none'}")
            if not {"StreamPodSandboxes", "StreamContainers"} <= set(streamed):
                failures.append("kubelet did not list pods and containers through the Stream* RPCs")
            if fell_back:
                failures.append(f"kubelet also called the unary twins {fell_back}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for f in failures:
        print(f"FAILED: {f}")
    print("kubelet smoke:", "FAILED" if failures else "passed")
    return 1 if failures else 0


def _with_kubelet(kubelet: Path, base: Path, d: object, seconds: float) -> tuple[int, list[str]]:
    """Run kubelet until both static pods run and ``seconds`` more; returns how many
    ListContainers calls this script made itself and the failures seen."""
    from tests.support.daemon import DaemonProcess

    assert isinstance(d, DaemonProcess)
    made_dir = not os.path.exists("/var/lib/kubelet")  # the tmpfs goes on it, in kubelet's namespace
    os.makedirs("/var/lib/kubelet", exist_ok=True)
    script = (
        "mount -t tmpfs -o size=16m,mode=0755 kubelet-smoke /var/lib/kubelet && "
        f'exec "$0" --config={base / "kubelet.yaml"} --root-dir={base / "root"} '
        f"--cert-dir={base / 'pki'} --hostname-override=kubelet-smoke --v=2"
    )
    log = open(base / "kubelet.log", "wb")  # noqa: SIM115 - the child's for its lifetime
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(kubelet)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    failures: list[str] = []
    polls = 0
    try:
        deadline = time.monotonic() + 180
        running: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            polls += 1
            running = [c.metadata.name for c in d.runtime.ListContainers(
                pb.ListContainersRequest(filter=pb.ContainerFilter(state=pb.ContainerStateValue(
                    state=pb.CONTAINER_RUNNING))), timeout=10).containers]
            if len(running) >= 2:
                break
            time.sleep(1)
        if len(running) < 2:
            failures.append(f"static pods not running after 180 s (running: {running}, kubelet "
                            f"{'exited ' + str(proc.returncode) if proc.poll() is not None else 'alive'})")
        else:
            print(f"both static pods run: {running}")
            time.sleep(seconds)
            if proc.poll() is not None:
                failures.append(f"kubelet exited with {proc.returncode}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        text = (base / "kubelet.log").read_text(errors="replace")
        fallbacks = [line for line in text.splitlines() if "not implemented, falling back" in line]
        if fallbacks:
            failures.append(f"kubelet fell back to unary RPCs: {fallbacks[:2]}")
        if failures:
            print("--- kubelet log (last 40 lines) ---")
            print("\n".join(text.splitlines()[-40:]))
        with contextlib.suppress(OSError):
            (base / "kubelet.log").rename(Path(tempfile.gettempdir()) / "kubelet-smoke-last.log")
        if made_dir:
            with contextlib.suppress(OSError):
                os.rmdir("/var/lib/kubelet")
    return polls, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubelet", type=Path, default=Path(os.environ.get("KUBELET", DEFAULT_KUBELET)))
    ap.add_argument("--gates", default="CRIListStreaming=true", help="kubelet feature gates, k=v,k=v")
    ap.add_argument("--seconds", type=float, default=45.0, help="how long kubelet runs once the pods run")
    args = ap.parse_args()
    if not os.access(args.kubelet, os.X_OK):
        print(f"kubelet binary {args.kubelet} not found: build it into .cache/k8s/ first (docs/DEVELOPING.md)")
        return 3
    if os.geteuid() != 0:
        print("kubelet smoke needs root")
        return 3
    gates = {}
    for item in filter(None, args.gates.split(",")):
        k, _, v = item.partition("=")
        gates[k] = v.lower() == "true"
    return run(args.kubelet, gates, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
