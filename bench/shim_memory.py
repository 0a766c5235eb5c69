#!/usr/bin/env python3
"""Benchmark: what one pod shim costs in memory, and where its private pages are. Not a test.

Starts a cri-shim daemon of this tree (KSM off: ``pods.ksm = "off"``), runs ``--pods`` pods one
after the other, each with one busybox container running ``bench.drivers.WORKLOAD`` (PID
namespace per container by default, ``--mode shared`` for one per pod), waits ``--settle``
seconds and reads /proc/PID/smaps_rollup and /proc/PID/smaps of every shim:

- PSS per pod: the runtime's per-pod processes (the shim, and the PID holder of a shared
  namespace; never the workload) plus the daemon's growth since before the pods, divided by
  the pods (as bench/lifecycle.py counts it);
- Private_Dirty per shim (what a shim has written since its fork from the factory: the pages
  that are its alone), its spread, and Private_Clean;
- for the shim with the median Private_Dirty, its mappings by Private_Dirty (where to look),
  and the factory's PSS.

    .venv/bin/python bench/shim_memory.py [--pods 20] [--settle 5] [--mode own|shared]
        [--pods-per-shim N] [--json FILE]

``--pods-per-shim``: ``[pods] pods_per_shim`` (runtime.shim.group; default: the daemon's own
default). "per shim" figures are then per shim process, which hosts up to N pods.

Issue 15's target: at most 1.8 MB PSS per pod at 110 pods from the first minute without KSM
(half of containerd-shim-runc-v2 + pause).

Measured with it (110 pods, 60 s, own PID namespaces, no KSM): 5.9 MB PSS per pod, 5.7 MB of
it Private_Dirty per shim, spread over the factory's obmalloc arenas (~3.9 MB), its malloc
heap (~1.1 MB: code objects and large dicts) and libpython's data (~0.6 MB: static objects
and types). Comparing each private page with the factory's (pagemap, /proc/PID/mem): about a
third of them end up byte-identical to the factory's (reference counts raised and dropped
again), a fifth differ only in reference counts, and the rest hold objects the shim
allocated into blocks the factory had freed, or changed. The shim touches them from its first
instruction: a fork that only stops itself costs 0.8 MB (CPython's at-fork handlers:
threading, logging, random), the idle shim 3.1 MB, its first container 1.2 MB more, a second
container in the same shim ~0 (so nothing is left to warm up in the factory, and no module is
imported after the fork).

So a shim process hosts several pods (``[pods] pods_per_shim``, runtime.shim.group); each
further pod adds ~0.1 MB of Private_Dirty to it. KiB PSS per pod at 110 pods, 60 s, no KSM
(own / shared PID namespaces): pods_per_shim 1: 5,901 / 6,041; 4: 1,734 / -; 8 (the
default): 948 / 979; 16: 629 / -. At 20 pods with 8: 1,650 / 1,452 (three processes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import drivers as drv
from bench import runtimes as rts
from tests.conformance import images
from tests.support.registry import running_registry

FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty", "Anonymous")


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup of ``pid`` in KiB (empty when it is gone)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in FIELDS:
                out[key] = int(rest.split()[0])
    return out


def mappings(pid: int) -> dict[str, dict[str, int]]:
    """Per mapping name (file, [heap], [stack], or "anon" with its size), summed fields, KiB."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    name = ""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                path = head[5] if len(head) > 5 else ""
                name = f"{path} {head[1]}" if path else f"anon {(hi - lo) // 1024} KiB {head[1]}"
            elif head and head[0].rstrip(":") in FIELDS:
                out[name][head[0].rstrip(":")] += int(head[1])
    return {k: dict(v) for k, v in out.items()}


def measure(runtime: rts.Runtime, cids: list[str], pods: int, daemon_before: int, factory: int,
            pods_per_shim: int | None) -> dict[str, object]:
    shims = runtime.shim_pids()
    per_pod_pids = runtime.pod_pids(cids)
    rolls = {p: rollup(p) for p in per_pod_pids}
    shim_rolls = [rolls[p] for p in shims if rolls.get(p)]
    dirty = sorted(r["Private_Dirty"] for r in shim_rolls)
    pss_sum = sum(r.get("Pss", 0) for r in rolls.values())
    growth = max(0, rts.pss_kib(runtime.daemon_pid) - daemon_before)
    median_pid = next(p for p in shims if rolls.get(p, {}).get("Private_Dirty") == dirty[len(dirty) // 2])
    maps = mappings(median_pid)
    top = sorted(((v.get("Private_Dirty", 0), k) for k, v in maps.items()), reverse=True)[:14]
    return {
        "pods": pods,
        "pods_per_shim": pods_per_shim,
        "shim_processes": len(shim_rolls),
        "pss_per_pod_kib": round((pss_sum + growth) / pods),
        "shim_pss_kib": round(statistics.mean(r["Pss"] for r in shim_rolls)),
        "daemon_growth_per_pod_kib": round(growth / pods),
        "private_dirty_kib": {"median": dirty[len(dirty) // 2], "min": dirty[0], "max": dirty[-1]},
        "private_clean_kib": round(statistics.mean(r.get("Private_Clean", 0) for r in shim_rolls)),
        "shim_rss_kib": round(statistics.mean(r["Rss"] for r in shim_rolls)),
        "other_per_pod_processes": len(per_pod_pids) - len(shim_rolls),
        "factory": rollup(factory),
        "median_shim": median_pid,
        "median_shim_private_dirty_by_mapping": [(k, v) for v, k in top if v],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--mode", choices=sorted(drv.PID_MODES), default="own")
    ap.add_argument("--pods-per-shim", type=int, default=None,
                    help="[pods] pods_per_shim (pods one shim process hosts); default: the daemon's")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="wait for Enter before removing the pods")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-shimmem-"))
    try:
        with running_registry(base) as reg:
            images.push_all(reg.url, {rts.BUSYBOX: images.default_image()})
            extra = "" if args.pods_per_shim is None else f"[pods]\npods_per_shim = {args.pods_per_shim}\n"
            with rts.cri_shim(base / "crishim", reg.host, extra=extra) as shim:
                d = drv.GrpcDriver(shim.endpoint)
                d.pull(rts.BUSYBOX)
                factory = int((base / "crishim" / "state" / "shims" / "factory.pid").read_text().split()[0])
                before = rts.pss_kib(shim.daemon_pid)
                started: list[tuple[str, str]] = []
                try:
                    for i in range(args.pods):
                        pod, ctr = drv.pod_config("mem", args.mode), drv.container_config(rts.BUSYBOX, args.mode)
                        pod_id = d.run_pod(pod)
                        cid = d.create(pod_id, ctr, pod)
                        started.append((pod_id, cid))
                        d.start(cid)
                        if (i + 1) % 10 == 0:
                            print(f"  {i + 1} pods", flush=True)
                    time.sleep(args.settle)
                    result = measure(shim, [c for _, c in started], args.pods, before, factory, args.pods_per_shim)
                    print(json.dumps(result, indent=1))
                    if args.json:
                        args.json.write_text(json.dumps(result, indent=1))
                    if args.keep:
                        input("pods kept; Enter removes them ")
                finally:
                    for pod_id, cid in started:
                        with contextlib.suppress(Exception):
                            d.stop(cid, 0)
                        d.stop_pod(pod_id)
                        d.remove_pod(pod_id)
                    d.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
