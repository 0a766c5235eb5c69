#!/usr/bin/env python3
"""How kubelet's relist and stats calls scale with the number of running pods. Not a test.

kubelet's PLEG relist calls ListPodSandbox and ListContainers every second, and
/stats/summary (every ~10 s, and with PodAndContainerStatsFromCRI) ListPodSandboxStats and
ListContainerStats; status calls follow every change. This drives one cri-shim daemon of
this tree (and, with ``--baseline TREE``, another checkout's) over a direct gRPC client (one
channel, as kubelet): it raises the number of running pods (one container each) through
``--pods`` (default 1, 30, 110) and at each count times ``--calls`` calls of each of
Version, ListPodSandbox, ListContainers, PodSandboxStatus, ContainerStatus, ListImages,
ImageStatus, ListContainerStats and ListPodSandboxStats, round-robin (so that no call type
gets a warm streak), and prints p50/p95 per call and count.

    .venv/bin/python bench/list_scaling.py [--pods 1,30,110] [--calls 40] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import drivers as drv
from bench import runtimes as rts
from bench import tables
from cri_shim.api.gen import api_pb2 as pb
from tests.support.registry import running_registry

CALLS = ("Version", "ListPodSandbox", "ListContainers", "PodSandboxStatus", "ContainerStatus", "ListImages",
         "ImageStatus", "ListContainerStats", "ListPodSandboxStats")


def _calls(g: drv.GrpcDriver, pod_id: str, cid: str) -> dict[str, Callable[[], Any]]:
    rt, img = g.rt, g.img
    return {
        "Version": partial(rt.Version, pb.VersionRequest(), timeout=30),
        "ListPodSandbox": partial(rt.ListPodSandbox, pb.ListPodSandboxRequest(), timeout=30),
        "ListContainers": partial(rt.ListContainers, pb.ListContainersRequest(), timeout=30),
        # kubelet asks for status without verbose
        "PodSandboxStatus": partial(rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                    timeout=30),
        "ContainerStatus": partial(rt.ContainerStatus, pb.ContainerStatusRequest(container_id=cid), timeout=30),
        "ListImages": partial(img.ListImages, pb.ListImagesRequest(), timeout=30),
        "ImageStatus": partial(img.ImageStatus, pb.ImageStatusRequest(image=pb.ImageSpec(image=rts.BUSYBOX)),
                               timeout=30),
        "ListContainerStats": partial(rt.ListContainerStats, pb.ListContainerStatsRequest(), timeout=30),
        "ListPodSandboxStats": partial(rt.ListPodSandboxStats, pb.ListPodSandboxStatsRequest(), timeout=30),
    }


def measure(runtime: rts.Runtime, counts: list[int], calls: int, mode: str) -> dict[tuple[str, int], list[float]]:
    """Seconds per call, by (call, running pods)."""
    g = drv.GrpcDriver(runtime.endpoint)
    pods: list[tuple[str, str]] = []
    out: dict[tuple[str, int], list[float]] = {}

    def one_pod() -> tuple[str, str]:
        pod = drv.pod_config("scale", mode)
        pod_id = g.run_pod(pod)
        cid = g.create(pod_id, drv.container_config(rts.BUSYBOX, mode), pod)
        g.start(cid)
        return pod_id, cid

    try:
        g.pull(rts.BUSYBOX)
        with ThreadPoolExecutor(4) as pool:
            for count in counts:
                started = time.monotonic()
                pods += pool.map(lambda _: one_pod(), range(count - len(pods)))
                print(f"  {runtime.name}: {len(pods)} pods running ({time.monotonic() - started:.0f} s)", flush=True)
                time.sleep(2)  # let the starts settle
                fns = _calls(g, *pods[len(pods) // 2])
                for fn in fns.values():
                    fn()  # warm up
                for _ in range(calls):
                    for name, fn in fns.items():
                        t0 = time.perf_counter()
                        fn()
                        out.setdefault((name, count), []).append(time.perf_counter() - t0)
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda p: (g.stop_pod(p[0]), g.remove_pod(p[0])), pods))
        g.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", default="1,30,110", help="running pod counts, ascending")
    ap.add_argument("--calls", type=int, default=40, help="calls of each kind per count")
    ap.add_argument("--mode", choices=tuple(drv.PID_MODES), default="own")
    ap.add_argument("--baseline", type=Path, help="another checkout's cri-shim, measured after this one")
    args = ap.parse_args()
    counts = sorted(int(c) for c in args.pods.split(","))
    base = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict[str, dict[tuple[str, int], list[float]]] = {}
    try:
        with running_registry(base) as reg:
            rts.push_images(reg.url, base)
            runtimes: list[Callable[[], contextlib.AbstractContextManager[rts.Runtime]]] = [
                lambda: rts.cri_shim(base / "shim", reg.host)]
            if args.baseline:
                runtimes.append(lambda: rts.cri_shim_of_tree(args.baseline.resolve(), base / "baseline", reg.host))
            for make in runtimes:
                with make() as rt:
                    results[rt.name] = measure(rt, counts, args.calls, args.mode)
        print(f"\n{args.calls} calls each, {args.mode} PID; {tables.machine_note()}; load {os.getloadavg()[0]:.2f}\n")
        names = list(results)
        head = " | ".join(f"{n} p50 / p95 ms" for n in names)
        print(f"| call | pods | {head} |")
        print("|---|---:|" + "---:|" * len(names))
        for call in CALLS:
            for count in counts:
                cells = []
                for n in names:
                    v = results[n][(call, count)]
                    cells.append(f"{tables.p50(v) * 1000:.2f} / {tables.pct(v, .95) * 1000:.2f}")
                print(f"| {call} | {count} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
