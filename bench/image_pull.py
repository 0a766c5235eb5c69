#!/usr/bin/env python3
"""Benchmark: image pull + unpack, cri-shim versus containerd, in one run. Not a test.

Both runtimes pull the very same images from one local docker-registry through the CRI
(real ``crictl pull``): Debian's containerd (a private instance: own root, state, socket and
config in a temp dir, started and stopped by pid, its CRI plugin pulling over plain HTTP
from the loopback registry) and a cri-shim daemon (tests.support.daemon). Every round uses
an image neither runtime has seen (fresh random content), so nothing is reused; the
registry's files are in the page cache for both. The order alternates between rounds.

    .venv/bin/python bench/image_pull.py [--rounds 3] [--layers 5] [--small-files 2000]

Prints each pull's seconds, the ratio median(cri-shim) / median(containerd) and the median
of the per-round ratios (rounds pair the two runtimes in time, which cancels much of this
machine's disk noise); the target is a ratio <= 1.0 for a multi-layer image. One untimed
warm-up pull per runtime comes first. ``--workdir /dev/shm`` takes the disk out of it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import imagebuilder as ib
from tests.support.daemon import CRICTL, running_daemon
from tests.support.registry import running_registry

CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"


def build_image(layers: int, small_files: int, big_files: int, big_size: int) -> ib.BuiltImage:
    """busybox + (layers - 1) layers: small files (4 KiB), big random files, a few dirs."""
    built = [ib.busybox_layer()]
    per_layer_small = max(1, small_files // max(1, layers - 1))
    per_layer_big = max(0, big_files // max(1, layers - 1))
    for n in range(layers - 1):
        layer = ib.Layer().dir(f"l{n}")
        for d in range(max(1, per_layer_small // 100)):
            layer.dir(f"l{n}/d{d}")
            for i in range(min(100, per_layer_small)):
                layer.file(f"l{n}/d{d}/f{i}", os.urandom(4096))
        for i in range(per_layer_big):
            layer.file(f"l{n}/big{i}", os.urandom(big_size))
        layer.symlink(f"l{n}/link", "d0/f0")
        built.append(layer)
    return ib.build_image(built, config={"Cmd": ["sh"]}, compression="gzip")


class Containerd:
    """A private containerd: own root/state/socket/config; ended by pid."""

    def __init__(self, base: Path, registry_host: str) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        self.log = base / "containerd.log"
        (base / "cni").mkdir(parents=True, exist_ok=True)
        config = f"""
version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
[grpc]
  address = "{self.socket}"
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
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{base / 'cni'}"
    bin_dir = "{base / 'cni'}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry_host}"]
    endpoint = ["http://{registry_host}"]
"""
        self.config = base / "config.toml"
        self.config.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen([CONTAINERD, "--config", str(self.config)], stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log.read_text()[-3000:]}")
            if self.socket.exists() and self.crictl("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"containerd did not start: {self.log.read_text()[-3000:]}")

    def crictl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        ep = f"unix://{self.socket}"
        res = subprocess.run([CRICTL, "--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "600s", *args],
                             capture_output=True, text=True, timeout=900)
        if check and res.returncode != 0:
            raise RuntimeError(f"crictl {args} against containerd failed: {res.stderr}\n{self.log.read_text()[-3000:]}")
        return res

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # containerd's overlay snapshots are plain directories (nothing stays mounted after pulls)
        subprocess.run(["umount", "-R", str(self.base / "state")], capture_output=True, check=False)


def timed(fn: object, *args: str) -> float:
    started = time.monotonic()
    fn(*args)  # type: ignore[operator]
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--small-files", type=int, default=2000)
    ap.add_argument("--big-files", type=int, default=16)
    ap.add_argument("--big-size", type=int, default=4 << 20)
    ap.add_argument("--workdir", type=Path, default=None, help="parent of the temp dirs (same filesystem for both)")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-pull-", dir=args.workdir))
    results: dict[str, list[float]] = {"containerd": [], "cri-shim": []}
    containerd: Containerd | None = None
    try:
        with running_registry(base) as reg:
            images = []
            for r in range(args.rounds):
                img = build_image(args.layers, args.small_files, args.big_files, args.big_size)
                reg.push(f"bench/multi{r}", "v1", img)
                images.append(reg.ref(f"bench/multi{r}", "v1"))
            total = sum(b.size for b in img.layers)
            print(f"image: {args.layers} layers, {total / 2**20:.1f} MiB compressed per round, registry {reg.host}")
            reg.push("bench/warmup", "v1", ib.busybox_image())
            containerd = Containerd(base / "containerd", reg.host)
            containerd.start()
            with running_daemon(base / "crishim") as shim:
                # Both are long-running daemons: one untimed pull each first (connections,
                # cri-shim's unpack workers), so round 0 measures the same thing as the rest.
                containerd.crictl("pull", reg.ref("bench/warmup", "v1"))
                shim.crictl("pull", reg.ref("bench/warmup", "v1"))
                for r, ref in enumerate(images):
                    order = ["containerd", "cri-shim"] if r % 2 == 0 else ["cri-shim", "containerd"]
                    for who in order:
                        if who == "containerd":
                            t = timed(containerd.crictl, "pull", ref)
                        else:
                            t = timed(shim.crictl, "pull", ref)
                        results[who].append(t)
                        print(f"round {r} {who:10s} pull+unpack {t:.3f}s")
    finally:
        if containerd is not None:
            containerd.stop()
        shutil.rmtree(base, ignore_errors=True)
    c = statistics.median(results["containerd"])
    s = statistics.median(results["cri-shim"])
    paired = statistics.median(x / y for x, y in zip(results["cri-shim"], results["containerd"], strict=True))
    print(f"median containerd {c:.3f}s, cri-shim {s:.3f}s, ratio cri-shim/containerd = {s / c:.2f} "
          f"(median of per-round ratios {paired:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
