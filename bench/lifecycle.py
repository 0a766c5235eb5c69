#!/usr/bin/env python3
"""Benchmark: a pod's whole life and its memory, cri-shim versus containerd, in one run. Not a test.

The runtimes (bench/runtimes.py) run side by side: a private Debian containerd + runc with CNI
bridge networking, and a cri-shim daemon of this tree with its built-in network; with
``--baseline TREE`` also the cri-shim of another checkout (e.g. ``git worktree add /tmp/old
c10d087``), to show what a change cost. Images come from a local registry.

**Latency.** A pod's life is RunPodSandbox, CreateContainer, StartContainer, (0.3 s untimed),
StopContainer (timeout 30 s), RemoveContainer, StopPodSandbox, RemovePodSandbox, with one
container running ``sh -c 'trap "exit 0" TERM; while :; do sleep 1 & wait; done'``, measured
for every combination of
- PID namespace mode: one per container (kubelet's default) and one per pod (crictl's default,
  ``shareProcessNamespace``), where the shell's background ``sleep`` outlives it;
- driver: a direct gRPC client (one channel, like kubelet) and crictl (a process per call:
  its own start-up, about 25 ms a call, hides the runtime's share);
- concurrency: one pod after the other (cycles of the runtimes interleaved), and ``--parallel``
  (8) pods at a time, runtime after runtime (then also the wall time per pod).
Each figure is the p50 over ``--pods`` pods; all operations' p50 and p95 follow the main table.

**Memory.** Per PID mode, ``--memory-pods`` pods with the workload are started on every runtime,
left alone for ``--settle`` seconds, then measured: PSS (/proc/PID/smaps_rollup) of the
runtime's per-pod processes (cri-shim: the pod shim and the PID holder of a shared namespace;
containerd: containerd-shim-runc-v2 and pause; never the workload itself) plus the daemon's
growth since before the pods, divided by the pods. Without KSM cri-shim runs with
``pods.ksm = "off"``; with KSM a second cri-shim daemon offers its shims to ksmd
(``pods.ksm = "auto"``). ksmd is host-wide (it would also scan what virtual machines offer),
so it is only started with ``--ksm``; if it already runs it is used as found; its state is
restored afterwards.

Quick (a few minutes, the defaults)::

    .venv/bin/python bench/lifecycle.py

Full size, as the README's table (kubelet's maximum of 110 pods per node, a minute to
settle; about half an hour)::

    .venv/bin/python bench/lifecycle.py --pods 50 --memory-pods 110 --settle 60 --ksm

Prints a markdown table ready for the README (every figure for each runtime and the ratio
cri-shim / containerd of the same run), the load average before and after, and the p50/p95 of
every operation. Targets (issue 15): lifecycle and memory at most 0.5 of containerd's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import drivers as drv
from bench import runtimes as rts
from bench import tables
from tests.support.cni import iptables_tables_restored
from tests.support.registry import running_registry

KSM_RUN = Path("/sys/kernel/mm/ksm/run")


@dataclass
class Results:
    #: (configuration, operation) -> runtime -> seconds per sample
    latency: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)
    #: (pid mode, "no KSM" | "KSM") -> runtime -> MiB PSS per pod
    memory: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def add(self, config: str, op: str, runtime: str, seconds: float) -> None:
        self.latency.setdefault((config, op), {}).setdefault(runtime, []).append(seconds)


def config_label(mode: str, driver: str, parallel: int) -> str:
    how = "sequential" if parallel == 1 else f"{parallel} in parallel"
    return f"{drv.PID_MODE_TEXT[mode]}, {driver}, {how}"


def record(results: Results, label: str, runtime: str, cycle: drv.Cycle) -> None:
    for op, s in zip(drv.OPS, cycle.seconds, strict=True):
        results.add(label, op, runtime, s)
    results.add(label, "pod life", runtime, cycle.total)


def bench_latency(runtimes: list[rts.Runtime], make_driver: Callable[[rts.Runtime], drv.Driver], mode: str,
                  pods: int, parallel: int, hold: float, results: Results) -> None:
    label = config_label(mode, make_driver(runtimes[0]).name, parallel)
    drivers = {r.name: make_driver(r) for r in runtimes}
    if parallel == 1:
        for i in range(pods):  # interleaved, the order turning each time
            for r in runtimes[i % len(runtimes):] + runtimes[:i % len(runtimes)]:
                record(results, label, r.name, drv.pod_cycle(drivers[r.name], rts.BUSYBOX, mode, "seq", hold))
    else:
        for r in runtimes:
            started = time.perf_counter()
            with ThreadPoolExecutor(parallel) as ex:
                cycles = list(ex.map(lambda _, d=drivers[r.name]: drv.pod_cycle(d, rts.BUSYBOX, mode, "par", hold),
                                     range(pods)))
            wall = time.perf_counter() - started
            for c in cycles:
                record(results, label, r.name, c)
            results.add(label, "wall time per pod", r.name, wall / pods)
    print(f"  done: {label}", flush=True)


def bench_memory(runtimes: list[rts.Runtime], ksm_runtime: rts.Runtime | None, mode: str, pods: int, settle: float,
                 results: Results) -> None:
    """Start ``pods`` pods on every runtime, wait ``settle`` s, measure PSS per pod, remove them."""
    everyone = [*runtimes, *([ksm_runtime] if ksm_runtime else [])]
    grpc = {id(r): drv.GrpcDriver(r.endpoint) for r in everyone}
    base = {id(r): rts.pss_kib(r.daemon_pid) for r in everyone}
    started: dict[int, list[tuple[str, str]]] = {id(r): [] for r in everyone}
    try:
        for i in range(pods):
            for r in everyone:
                d = grpc[id(r)]
                pod, ctr = drv.pod_config("mem", mode), drv.container_config(rts.BUSYBOX, mode)
                pod_id = d.run_pod(pod)
                cid = d.create(pod_id, ctr, pod)
                started[id(r)].append((pod_id, cid))
                d.start(cid)
            if (i + 1) % 10 == 0:
                print(f"  memory, {mode} PID: {i + 1} pods on each", flush=True)
        time.sleep(settle)
        for r in everyone:
            cids = [cid for _, cid in started[id(r)]]
            per_pod = sum(rts.pss_kib(p) for p in r.pod_pids(cids)) / pods / 1024
            growth = max(0, rts.pss_kib(r.daemon_pid) - base[id(r)]) / pods / 1024
            key = (mode, "KSM" if r is ksm_runtime else "no KSM")
            results.memory.setdefault(key, {})["cri-shim" if r is ksm_runtime else r.name] = per_pod + growth
            print(f"  memory, {mode} PID, {key[1]}: {r.name} per-pod processes {per_pod:.2f} MiB PSS + daemon "
                  f"growth {growth:.2f} MiB per pod", flush=True)
        if ksm_runtime:  # containerd's shims do not offer memory to KSM: its figure is the same
            results.memory[(mode, "KSM")]["containerd"] = results.memory[(mode, "no KSM")]["containerd"]
    finally:
        for r in everyone:
            d = grpc[id(r)]
            for pod_id, cid in started[id(r)]:
                with contextlib.suppress(Exception):
                    d.stop(cid, drv.STOP_TIMEOUT)
                d.stop_pod(pod_id)
                d.remove_pod(pod_id)
            d.close()


@contextlib.contextmanager
def ksm_allowed(allow_start: bool) -> Iterator[bool]:
    """Whether KSM may be used: ksmd runs already, or ``allow_start`` (then it is started here).
    ksmd's run state is restored afterwards (pages it merged stay merged)."""
    if not KSM_RUN.exists():
        yield False
        return
    before = KSM_RUN.read_text().strip()
    if before != "1" and not allow_start:
        yield False
        return
    try:
        KSM_RUN.write_text("1")
        yield True
    finally:
        KSM_RUN.write_text(before)


def report(results: Results, names: list[str], baseline: str | None, settle: float, mem_pods: int,
           note_before: str, note_after: str) -> str:
    rows: list[tables.Row] = []
    for (label, op), by_rt in results.latency.items():
        if op in ("pod life", "wall time per pod"):
            what = "pod life, p50" if op == "pod life" else "wall time per pod"
            rows.append(tables.Row(f"{what}: {label}", "ms",
                                   {n: tables.p50(v) * 1000 for n, v in by_rt.items()}))
    for (mode, ksm), mem in results.memory.items():
        rows.append(tables.Row(f"PSS per running pod, {drv.PID_MODE_TEXT[mode]}, {mem_pods} pods, "
                               f"{settle:.0f} s after start, {ksm}", "MiB", dict(mem)))
    order = ["cri-shim", *[n for n in names if n not in ("cri-shim", "containerd")], "containerd"]
    out = [tables.markdown(rows, order, baseline=baseline),
           "", f"Measured {note_before}; load after: {note_after}.", "",
           "Every operation, p50 / p95:", ""]
    op_rows = [tables.Row(f"{op}: {label}", "ms", {n: tables.p50(v) * 1000 for n, v in by_rt.items()},
                          {n: tables.pct(v, 0.95) * 1000 for n, v in by_rt.items()})
               for (label, op), by_rt in results.latency.items() if op in drv.OPS]
    out.append(tables.markdown(op_rows, order, baseline=baseline, title="operation"))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=8, help="pods per latency figure (default 8)")
    ap.add_argument("--parallel", type=int, default=8, help="pods at a time in the parallel runs (default 8)")
    ap.add_argument("--memory-pods", type=int, default=10, help="pods per runtime for memory (default 10)")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds between starting the pods and measuring "
                    "their memory (default 20; the README's figures use 60)")
    ap.add_argument("--modes", default="own,shared", help="PID modes: own (per container), shared (per pod)")
    ap.add_argument("--drivers", default="grpc,crictl")
    ap.add_argument("--hold", type=float, default=0.3, help="untimed seconds between start and stop")
    ap.add_argument("--only", choices=("latency", "memory"), default=None)
    ap.add_argument("--ksm", action="store_true", help="allow starting ksmd (host-wide) for the KSM figures")
    ap.add_argument("--baseline", type=Path, default=None, help="also a cri-shim of this checkout")
    ap.add_argument("--json", type=Path, default=None, help="write the raw samples here")
    args = ap.parse_args()
    modes = args.modes.split(",")
    note_before = tables.machine_note()
    base = Path(tempfile.mkdtemp(prefix="bench-lc-"))
    results = Results()
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(iptables_tables_restored())
            reg = stack.enter_context(running_registry(base))
            rts.push_images(reg.url, base)
            cd = stack.enter_context(rts.containerd(base / "containerd", reg.host))
            shim = stack.enter_context(rts.cri_shim(base / "crishim", reg.host))
            runtimes = [shim, cd]
            if args.baseline:
                runtimes.insert(1, stack.enter_context(rts.cri_shim_of_tree(args.baseline.resolve(),
                                                                            base / "baseline", reg.host)))
            for r in runtimes:
                g = drv.GrpcDriver(r.endpoint)
                g.pull(rts.BUSYBOX)
                for mode in modes:  # warm-up: first pods pay for unpacking, the bridge, caches
                    drv.pod_cycle(g, rts.BUSYBOX, mode, "warm", args.hold)
                g.close()
            makers: dict[str, Callable[[rts.Runtime], drv.Driver]] = {
                "grpc": lambda r: drv.GrpcDriver(r.endpoint),
                "crictl": lambda r: drv.CrictlDriver(r.endpoint, base / "crictl"),
            }
            if args.only in (None, "latency"):
                k = 0
                for mode in modes:
                    for name in args.drivers.split(","):
                        for parallel in (1, args.parallel):
                            # each batch of parallel runs starts with another runtime
                            order = runtimes[k % len(runtimes):] + runtimes[:k % len(runtimes)]
                            bench_latency(order, makers[name], mode, args.pods, parallel, args.hold, results)
                            k += 1
            if args.only in (None, "memory"):
                with ksm_allowed(args.ksm) as ksm, contextlib.ExitStack() as ksm_stack:
                    ksm_shim = (ksm_stack.enter_context(rts.cri_shim(base / "crishim-ksm", reg.host,
                                                                     name="cri-shim (KSM)", merge_memory=True))
                                if ksm else None)
                    if ksm_shim is not None:  # a daemon of its own: pull the workload there too
                        g = drv.GrpcDriver(ksm_shim.endpoint)
                        g.pull(rts.BUSYBOX)
                        g.close()
                    if not ksm:
                        print("  ksmd is not running: no KSM figures (--ksm allows starting it)", flush=True)
                    for mode in modes:
                        bench_memory(runtimes, ksm_shim, mode, args.memory_pods, args.settle, results)
    finally:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
        shutil.rmtree(base, ignore_errors=True)
    names = [r.name for r in runtimes]
    baseline = names[1] if args.baseline else None
    print()
    print(report(results, names, baseline, args.settle, args.memory_pods, note_before, tables.load_note()))
    if args.json:
        args.json.write_text(json.dumps({"latency": {f"{k[0]} | {k[1]}": v for k, v in results.latency.items()},
                                         "memory": {f"{k[0]} | {k[1]}": v for k, v in results.memory.items()}},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
