#!/usr/bin/env python3
"""Benchmark: ``critest -benchmark`` (cri-tools v1.37.0) against cri-shim and containerd, in one
run, with the p50 of every operation and the ratios. Not a test.

critest's benchmark suite (pkg/benchmark) times each CRI call of a lifecycle, sample after
sample (``gmeasure`` with ``N`` samples, ``NumParallel`` at a time), over a direct gRPC client:

- pods: RunPodSandbox, PodSandboxStatus (verbose), StopPodSandbox, RemovePodSandbox;
- containers (each in a pod of its own, made outside the timing): CreateContainer, StartContainer,
  ContainerStatus (verbose), StopContainer (timeout 60 s; the container runs ``top``),
  RemoveContainer;
- images: PullImage, ImageStatus, RemoveImage of one image, round after round; and ListImages.

Its numbers come from the JSON files it writes with ``-benchmarking-output-dir``
(``pod_benchmark_data.json``, ``container_benchmark_data.json``,
``image_lifecycle_benchmark_data.json``, ``image_listing_benchmark_data.json``: per sample,
``operationsDurationsNs`` in the order of ``operationsNames``); the sizes go in a YAML file given
with ``-benchmarking-params-file`` (``podsNumber``, ``containersNumber``, ``imagesNumber`` and
their ``*Parallel``).

The runtimes are those of bench/runtimes.py (a private containerd + runc, a cri-shim daemon of
this tree; with ``--baseline TREE`` also another checkout's cri-shim), and the images the
conformance stand-ins in a local registry (the image rounds pull a small busybox-based image,
``gcr.io/k8s-staging-cri-tools/test-image-latest``, instead of critest's default from
public.ecr.aws).

    .venv/bin/python bench/critest_benchmark.py [--pods 20] [--containers 20] [--images 10]
                                                [--parallel 1] [--rounds 1] [--baseline TREE]

With ``--rounds N`` the runtimes take turns N times (their samples pooled), so a change in the
machine's load falls on both. The README's figures: ``--pods 50 --containers 50 --images 20``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import runtimes as rts
from bench import tables
from tests.conformance import images
from tests.support import tools
from tests.support.cni import iptables_tables_restored
from tests.support.registry import running_registry

PULL_IMAGE = images.STAGING + "test-image-latest:latest"
RESULT_FILES = ("pod_benchmark_data.json", "container_benchmark_data.json", "image_lifecycle_benchmark_data.json",
                "image_listing_benchmark_data.json")
#: critest's operation names -> the CRI call (critest's order)
OPERATIONS = {
    "CreatePod": "RunPodSandbox", "StatusPod": "PodSandboxStatus", "StopPod": "StopPodSandbox",
    "RemovePod": "RemovePodSandbox", "CreateContainer": "CreateContainer", "StartContainer": "StartContainer",
    "StatusContainer": "ContainerStatus", "StopContainer": "StopContainer", "RemoveContainer": "RemoveContainer",
    "PullImage": "PullImage", "StatusImage": "ImageStatus", "RemoveImage": "RemoveImage", "ListImages": "ListImages",
}


def params_yaml(pods: int, containers: int, images_n: int, parallel: int) -> str:
    return "\n".join([
        f"podsNumber: {pods}", f"podsNumberParallel: {parallel}", "podBenchmarkTimeoutSeconds: 120",
        f"containersNumber: {containers}", f"containersNumberParallel: {parallel}",
        "containerBenchmarkTimeoutSeconds: 120",
        f"imagesNumber: {images_n}", "imagesNumberParallel: 1", "imageBenchmarkTimeoutSeconds: 120",
        f"imagePullingBenchmarkImage: {PULL_IMAGE}", f"imageListingBenchmarkImages: [{PULL_IMAGE}]",
        "podContainerStartBenchmarkTimeoutSeconds: 30", "",
    ])


def run_critest(endpoint: str, params: Path, out: Path, log: Path) -> int:
    """``critest -benchmark`` against ``endpoint``; its JSON files land in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(tools.CRITEST), "-benchmark", f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}",
           f"-benchmarking-params-file={params}", f"-benchmarking-output-dir={out}", "--ginkgo.no-color"]
    with open(log, "ab") as f:
        return subprocess.run(cmd, cwd=out, stdout=f, stderr=subprocess.STDOUT, timeout=3600, check=False).returncode


def read_samples(out: Path, into: dict[str, list[float]]) -> None:
    """Add the seconds of every operation in critest's result files under ``out``."""
    for name in RESULT_FILES:
        path = out / name
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        for point in doc.get("datapoints") or []:
            for op, ns in zip(doc["operationsNames"], point["operationsDurationsNs"], strict=False):
                into.setdefault(op, []).append(ns / 1e9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=1, help="samples at a time (critest's *NumberParallel)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per runtime, taking turns")
    ap.add_argument("--baseline", type=Path, default=None, help="also a cri-shim of this checkout")
    ap.add_argument("--keep", type=Path, default=None, help="copy critest's JSON files and logs here")
    args = ap.parse_args()
    note_before = tables.machine_note()
    base = Path(tempfile.mkdtemp(prefix="bench-critest-"))
    params = base / "params.yaml"
    params.write_text(params_yaml(args.pods, args.containers, args.images, args.parallel))
    samples: dict[str, dict[str, list[float]]] = {}
    failed: list[str] = []
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    names: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(iptables_tables_restored())
            reg = stack.enter_context(running_registry(base))
            rts.push_images(reg.url, base)
            images.push_all(reg.url, {PULL_IMAGE: images.marked_image("test-image-latest")})
            runtimes = [stack.enter_context(rts.cri_shim(base / "crishim", reg.host))]
            if args.baseline:
                runtimes.append(stack.enter_context(rts.cri_shim_of_tree(args.baseline.resolve(), base / "baseline",
                                                                         reg.host)))
            runtimes.append(stack.enter_context(rts.containerd(base / "containerd", reg.host)))
            names = [r.name for r in runtimes]
            for k in range(args.rounds):
                for r in runtimes[k % len(runtimes):] + runtimes[:k % len(runtimes)]:
                    out = base / "out" / f"{r.name.replace('/', '_')}-{k}"
                    log = base / "out" / f"{r.name.replace('/', '_')}.log"
                    print(f"  critest -benchmark against {r.name} (round {k + 1} of {args.rounds})", flush=True)
                    rc = run_critest(r.endpoint, params, out, log)
                    if rc != 0:
                        failed.append(f"{r.name} round {k + 1}: critest exit {rc}")
                        print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), flush=True)
                    read_samples(out, samples.setdefault(r.name, {}))
            if args.keep:
                shutil.copytree(base / "out", args.keep, dirs_exist_ok=True)
    finally:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward)
        shutil.rmtree(base, ignore_errors=True)
    rows = []
    for op, call in OPERATIONS.items():
        values: dict[str, float | None] = {n: tables.p50(s[op]) * 1000 for n, s in samples.items() if s.get(op)}
        spread = {n: tables.pct(s[op], 0.95) * 1000 for n, s in samples.items() if s.get(op)}
        if values:
            count = max(len(s.get(op, [])) for s in samples.values())
            rows.append(tables.Row(f"{op} ({call}), {count} samples", "ms", values, spread))
    baseline = names[1] if args.baseline else None
    order = ["cri-shim", *[n for n in names if n not in ("cri-shim", "containerd")], "containerd"]
    print(f"\ncritest -benchmark (cri-tools v1.37.0), p50 / p95, {args.parallel} at a time:\n")
    print(tables.markdown(rows, order, baseline=baseline, title="operation"))
    print(f"\nMeasured {note_before}; load after: {tables.load_note()}.")
    for f in failed:
        print("  FAILED:", f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
