#!/usr/bin/env python3
"""Where the time of single CRI calls goes in cri-shim: latency per call over a direct gRPC
client, the daemon's own step timings, and optionally a cProfile of the daemon. Not a test.

One cri-shim daemon of this tree (debug log), one pod; then ``--rounds`` times:
CreateContainer, ContainerStatus (verbose), StartContainer, ContainerStatus again after
``--idle`` s, PodSandboxStatus (verbose), ImageStatus, StopContainer, RemoveContainer; and a
pod round: RunPodSandbox, PodSandboxStatus right away, StopPodSandbox, RemovePodSandbox.
A status call right after a mutating one also shows what that call left running on the event
loop.

With ``--cprofile`` the daemon runs under ``python -m cProfile`` (its event loop thread: the
gRPC handlers, the engine's coroutines and whatever they run on the loop; not the threads
that ``asyncio.to_thread`` uses, nor the pod shim), and the top functions by own time and by
cumulative time are printed when it has stopped.

    .venv/bin/python bench/profile_ops.py [--rounds 30] [--cprofile] [--top 40]
"""

from __future__ import annotations

import argparse
import io
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import drivers as drv
from bench import runtimes as rts
from bench import tables
from cri_shim.api.gen import api_pb2 as pb
from tests.conformance import images
from tests.support.daemon import make_daemon
from tests.support.registry import running_registry


def start_profiled(d: Any, out: Path) -> None:
    """Start ``d`` (tests.support.daemon.DaemonProcess) under cProfile and wait for it."""
    log = open(d.log_path, "ab")  # noqa: SIM115 - the child keeps it
    d.proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "cri_shim", "--config",
                               str(d.config_path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise RuntimeError(f"cri-shim exited:\n{d.log()}")
        try:
            conditions = d.runtime.Status(pb.StatusRequest(), timeout=2).status.conditions
            if {c.type: c.status for c in conditions}.get("RuntimeReady"):
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError("cri-shim did not start")


def step_medians(lines: list[str]) -> str:
    """The median of each step over step lines ("9.6 ms: image=0.1 cgroup=1.1 ..."), in the
    order the steps first appear (a step missing from a line counts as absent, not 0)."""
    per: dict[str, list[float]] = {"total": []}
    for line in lines:
        total, _, rest = line.partition(" ms: ")
        per["total"].append(float(total))
        for name, ms in re.findall(r"\s*([^=]+?)=([\d.]+)", rest):  # names may hold spaces
            per.setdefault(name, []).append(float(ms))
    return " ".join(f"{name}={tables.p50(v):.1f}" for name, v in per.items() if v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--idle", type=float, default=0.3)
    ap.add_argument("--mode", choices=tuple(drv.PID_MODES), default="own")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--status-calls", type=int, default=0,
                    help="then this many ContainerStatus, PodSandboxStatus and ImageStatus calls each")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-prof-"))
    samples: dict[str, list[float]] = {}
    steps: dict[str, list[str]] = {}
    in_daemon: dict[str, list[float]] = {}
    profile = base / "daemon.prof"
    try:
        with running_registry(base) as reg:
            rts.push_images(reg.url, base)
            conf = base / "registries.conf"
            conf.write_text(images.registries_conf(reg.host))
            d = make_daemon(base / "d", rts.shim_config(conf, False), log_level="debug")
            try:
                if args.cprofile:
                    start_profiled(d, profile)
                else:
                    d.start()
                g = drv.GrpcDriver(d.endpoint)
                g.pull(rts.BUSYBOX)

                def timed(op: str, fn: Callable[[], Any]) -> Any:
                    started = time.perf_counter()
                    out = fn()
                    samples.setdefault(op, []).append(time.perf_counter() - started)
                    return out

                pod = drv.pod_config("prof", args.mode)
                pod_id = g.run_pod(pod)
                img = pb.ImageSpec(image=rts.BUSYBOX)
                for _ in range(args.rounds):
                    ctr = drv.container_config(rts.BUSYBOX, args.mode)
                    cid = timed("CreateContainer", partial(g.create, pod_id, ctr, pod))
                    status = pb.ContainerStatusRequest(container_id=cid, verbose=True)
                    timed("ContainerStatus after create", partial(g.rt.ContainerStatus, status, timeout=30))
                    timed("StartContainer", partial(g.start, cid))
                    time.sleep(args.idle)
                    timed("ContainerStatus (idle)", partial(g.rt.ContainerStatus, status, timeout=30))
                    timed("PodSandboxStatus (idle)", partial(g.rt.PodSandboxStatus, pb.PodSandboxStatusRequest(
                        pod_sandbox_id=pod_id, verbose=True), timeout=30))
                    image_status = partial(g.img.ImageStatus, pb.ImageStatusRequest(image=img), timeout=30)
                    timed("ImageStatus (idle)", image_status)
                    timed("Version (the floor of a call)", partial(g.rt.Version, pb.VersionRequest(), timeout=30))
                    timed("StopContainer", partial(g.stop, cid, drv.STOP_TIMEOUT))
                    timed("RemoveContainer", partial(g.remove, cid))
                    timed("ImageStatus after remove", image_status)
                    sid = timed("RunPodSandbox", partial(g.run_pod, drv.pod_config("prof2", args.mode)))
                    timed("PodSandboxStatus after run", partial(g.rt.PodSandboxStatus, pb.PodSandboxStatusRequest(
                        pod_sandbox_id=sid, verbose=True), timeout=30))
                    timed("StopPodSandbox", partial(g.stop_pod, sid))
                    timed("RemovePodSandbox", partial(g.remove_pod, sid))
                if args.status_calls:
                    cid = g.create(pod_id, drv.container_config(rts.BUSYBOX, args.mode), pod)
                    g.start(cid)
                    status = pb.ContainerStatusRequest(container_id=cid, verbose=True)
                    pod_status = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
                    for _ in range(args.status_calls):
                        timed("ContainerStatus (loop)", partial(g.rt.ContainerStatus, status, timeout=30))
                        timed("PodSandboxStatus (loop)", partial(g.rt.PodSandboxStatus, pod_status, timeout=30))
                        timed("ImageStatus (loop)", image_status)
                        timed("Version (loop)", partial(g.rt.Version, pb.VersionRequest(), timeout=30))
                g.stop_pod(pod_id)
                g.remove_pod(pod_id)
                g.close()
                for line in d.log_path.read_text(errors="replace").splitlines():  # (d.log() is its tail)
                    m = re.search(r"(container|sandbox) \S+ (\w+)\b.*?\(([\d.]+ ms: .*)\)", line)
                    if m:
                        steps.setdefault(f"{m.group(1)} {m.group(2)}", []).append(m.group(3))
                    m = re.search(r"rpc=(\w+) rid=\S+ code=OK ms=([\d.]+)", line)
                    if m:
                        in_daemon.setdefault(m.group(1), []).append(float(m.group(2)) / 1000)
            finally:
                d.cleanup()
                shutil.rmtree(d.socket.parent, ignore_errors=True)
        print(f"\n{args.rounds} rounds, {args.mode} PID; {tables.machine_note()}\n")
        print(f"{'call':34s} {'p50 ms':>8s} {'p95 ms':>8s} {'daemon p50':>10s}")
        for op, v in samples.items():
            handled = in_daemon.get(op.split(" ")[0], [])  # the handler's own time (its log line)
            print(f"{op:34s} {tables.p50(v) * 1000:8.1f} {tables.pct(v, .95) * 1000:8.1f}"
                  f" {tables.p50(handled) * 1000 if handled else float('nan'):10.1f}")
        for what, lines in steps.items():
            print(f"\nlast step timings of '{what}':")
            for line in lines[-3:]:
                print("  ", line)
            print("   p50 per step:", step_medians(lines))
        if args.cprofile and profile.exists():
            for key in ("tottime", "cumulative"):
                buf = io.StringIO()
                stats = pstats.Stats(str(profile), stream=buf)
                stats.sort_stats(key).print_stats(args.top)
                print(f"\n--- daemon event loop thread, by {key} ---")
                print(buf.getvalue().split("ncalls", 1)[-1][:12000])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
