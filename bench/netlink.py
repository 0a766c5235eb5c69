#!/usr/bin/env python3
"""Benchmark: pod network set-up with pyroute2 versus the hand-written rtnetlink module. Not a test.

Why it exists: the design says "netlink through pyroute2"; cri-shim uses its own
``runtime/network/rtnl.py``. This measures the choice (docs/ARCHITECTURE.md §6). Three parts,
each interleaving the variants in random order (machine noise hits all of them alike):

(a) pod side: what the pod shim does inside the pod's fresh netns (lo up, veth pair with the
    pod end ``eth0`` and the host end born in the "host" netns, MAC/MTU, address, default
    route). Each sample is one process forked from a single-threaded template that imported
    everything (pyroute2 too) and ran every variant once before ``gc.freeze()``, as the shim
    factory does; it unshares a netns and runs the step once, as a shim does per pod. No
    pyroute2 ``netns=`` (it forks), no fork by pyroute2:
      rtnl           runtime.network.podside (hand-written rtnetlink, two batched round trips)
      pyroute2       AsyncIPRoute awaited on a running event loop: the shim is asyncio, and
                     pyroute2's synchronous IPRoute refuses to run inside a running loop
                     ("This event loop is already running")
      pyroute2-sync  IPRoute, in a process without a running loop (for reference)
(b) host side, in an asyncio process as in the daemon: bridge attach (enslave, up, hairpin)
    and veth delete, the time each call takes for the awaiting coroutine and the longest gap
    of a 1 ms ticker task meanwhile (how long the event loop stood still; the "idle" row is
    the ticker's baseline):
      rtnl           runtime.network.host.RtnlHost (rtnl on one dedicated thread)
      pyroute2       AsyncIPRoute on the event loop
      pyroute2-sync  IPRoute on one dedicated thread
    (a) and (b) run in a private network and mount namespace standing in for the host:
    nothing of them reaches the host.
(c) RunPodSandbox and Stop+RemovePodSandbox through two real daemons (built-in network,
    tests.support.daemon: own bridge, subnet, nft table), pods alternating between them, with
    the daemon's own step times for the pod's namespaces and the bridge attach; then, every
    pod still running, Pss/Private/Rss (/proc/PID/smaps_rollup) of each pod shim and of the
    shim factory. The daemons run from two source trees: "rtnl" is this tree, "pyroute2" is
    HEAD with ``bench/netlink_pyroute2.patch`` applied in a temp dir (pod side over
    AsyncIPRoute whose socket is made in the pod's netns and whose requests are awaited once
    the shim stands in its own namespaces again; host side over IPRoute on the netlink
    thread; the factory pre-imports pyroute2). ``--tree NAME=PATH`` (twice) runs others.

    .venv/bin/python bench/netlink.py [--samples 40] [--pods 30] [--no-daemon]

Run as root, with pyroute2 0.9 importable (only this benchmark uses it). Prints p50/p95 per
variant and row (ms, or MiB for memory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("rtnl", "pyroute2", "pyroute2-sync")
BRIDGE = "benchbr0"
GATEWAY, PREFIX = "10.250.0.1", 16


# -- (a) the pod side -------------------------------------------------------------------------


def _plan(i: int) -> Any:
    from runtime.model.network import PodInterfacePlan

    return PodInterfacePlan(f"{i:064x}", "eth0", f"bnv{i}", f"10.250.{i // 250}.{i % 250 + 2}", PREFIX, GATEWAY,
                            f"0a:58:0a:fa:{i // 250:02x}:{i % 250 + 2:02x}", 1500)


def pod_rtnl(plan: Any, host_fd: int) -> None:
    from runtime.network import podside

    podside.configure_pod_interfaces(plan, host_fd)


async def pod_pyroute2(plan: Any, host_fd: int) -> None:
    from pyroute2 import AsyncIPRoute

    async with AsyncIPRoute() as ipr:  # its socket is made in the current (the pod's) netns
        await ipr.link("set", index=1, state="up")
        await ipr.link("add", ifname=plan.ifname, kind="veth", address=plan.mac, mtu=plan.mtu, state="up",
                       peer={"ifname": plan.host_ifname, "net_ns_fd": host_fd, "mtu": plan.mtu})
        (link,) = await ipr.link("get", ifname=plan.ifname)
        await ipr.addr("add", index=link["index"], address=plan.address, prefixlen=plan.prefixlen)
        await ipr.route("add", dst="0.0.0.0/0", gateway=plan.gateway)


def pod_pyroute2_sync(plan: Any, host_fd: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=1, state="up")
        ipr.link("add", ifname=plan.ifname, kind="veth", address=plan.mac, mtu=plan.mtu, state="up",
                 peer={"ifname": plan.host_ifname, "net_ns_fd": host_fd, "mtu": plan.mtu})
        (link,) = ipr.link("get", ifname=plan.ifname)
        ipr.addr("add", index=link["index"], address=plan.address, prefixlen=plan.prefixlen)
        ipr.route("add", dst="0.0.0.0/0", gateway=plan.gateway)


def run_pod_side(variant: str, plan: Any) -> float:
    """In a fresh single-threaded process: unshare NET, run ``variant``; seconds of the step."""
    from runtime.linux import libc

    host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.unshare(libc.CLONE_NEWNET)
        return _timed_step(variant, plan, host_fd)
    finally:
        os.close(host_fd)


def _timed_step(variant: str, plan: Any, host_fd: int) -> float:
    if variant == "pyroute2":
        loop = asyncio.new_event_loop()  # the shim's loop exists before the step

        async def step() -> float:
            t0 = time.perf_counter()
            await pod_pyroute2(plan, host_fd)
            return time.perf_counter() - t0

        return loop.run_until_complete(step())
    t0 = time.perf_counter()
    (pod_rtnl if variant == "rtnl" else pod_pyroute2_sync)(plan, host_fd)
    return time.perf_counter() - t0


def template(cmd_r: int, out_w: int) -> None:
    """The single-threaded forker (the shim factory's role): one child per request line.

    It holds each child's netns until the next request (the pod's pin: the veth pair must
    outlive the child until the host side has attached and deleted it)."""
    pinned = -1
    with os.fdopen(cmd_r, "r") as cmds:
        for line in cmds:
            if pinned >= 0:
                os.close(pinned)
            variant, i = line.split()
            r, w = os.pipe()
            go_r, go_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.close(go_w)
                result: dict[str, float | str]
                try:
                    result = {"ok": run_pod_side(variant, _plan(int(i)))}
                except BaseException as exc:
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                os.write(w, json.dumps(result).encode())
                os.close(w)
                os.read(go_r, 1)
                os._exit(0)
            os.close(w)
            os.close(go_r)
            with os.fdopen(r, "rb") as f:
                answer = f.read()
            pinned = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            os.close(go_w)
            os.waitpid(pid, 0)
            os.write(out_w, answer + b"\n")


# -- (b) the host side ------------------------------------------------------------------------


class HostVariant:
    """attach (enslave + up + hairpin) and delete of a host veth end, one implementation each."""

    def __init__(self, name: str, bridge_index: int) -> None:
        from pyroute2 import AsyncIPRoute, IPRoute

        from runtime.network.host import RtnlHost

        self.name = name
        self.bridge_index = bridge_index
        self.rtnl = RtnlHost() if name == "rtnl" else None
        self.aipr = AsyncIPRoute() if name == "pyroute2" else None
        self.thread: Any = None
        self.ipr: Any = None
        if name == "pyroute2-sync":
            import concurrent.futures

            self.thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench-pyroute2")
            self.ipr = self.thread.submit(IPRoute).result()

    async def attach(self, ifname: str) -> None:
        if self.rtnl is not None:
            await self.rtnl.attach_to_bridge(ifname, self.bridge_index)
            return
        hairpin = Path(f"/sys/class/net/{ifname}/brport/hairpin_mode")
        if self.aipr is not None:
            await self.aipr.link("set", ifname=ifname, master=self.bridge_index, state="up")
            hairpin.write_text("1")  # noqa: ASYNC240 - no thread in this variant: it is on the loop
            return

        def attach() -> None:
            self.ipr.link("set", ifname=ifname, master=self.bridge_index, state="up")
            hairpin.write_text("1")

        await asyncio.wrap_future(self.thread.submit(attach))

    async def delete(self, ifname: str) -> None:
        if self.rtnl is not None:
            await self.rtnl.delete_link(ifname)
        elif self.aipr is not None:
            await self.aipr.link("del", ifname=ifname)
        else:
            await asyncio.wrap_future(self.thread.submit(lambda: self.ipr.link("del", ifname=ifname)))

    def close(self) -> None:
        if self.rtnl is not None:
            self.rtnl.close()
        if self.aipr is not None:
            self.aipr.close()
        if self.thread is not None:
            self.thread.submit(self.ipr.close).result()
            self.thread.shutdown()


TICK = 0.001


async def stall_of(op: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(seconds of ``op``, the longest gap between the 1 ms ticks of a ticker task meanwhile).

    An idle loop already shows gaps a little over 1 ms (epoll's millisecond timeouts): the
    "idle" row of the table is that baseline; more is time the loop could not run.
    """
    done = False
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            worst = max(worst, now - last)
            last = now

    tick = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0.003)  # the ticker runs before the op starts
    worst = 0.0
    t0 = time.perf_counter()
    await op()
    took = time.perf_counter() - t0
    done = True
    await tick
    return took, worst


# -- (a) + (b) in a private netns -------------------------------------------------------------


def micro(samples: int) -> dict[str, dict[str, list[float]]]:
    """Runs in a child of the bench that owns a new network namespace (the stand-in host)."""
    import pyroute2  # noqa: F401 - pre-imported, as the shim factory would

    from runtime.linux import libc
    from runtime.network import podside, rtnl  # noqa: F401

    # a private netns, and a private /sys showing it (sysfs shows the netns of its mounter)
    libc.unshare(libc.CLONE_NEWNET | libc.CLONE_NEWNS)
    libc.mount("none", "/", None, libc.MS_REC | libc.MS_PRIVATE)
    libc.mount("sysfs", "/sys", "sysfs", 0)
    with rtnl.RtnlSocket() as nl:
        nl.call(rtnl.link_up(1), rtnl.new_bridge(BRIDGE), rtnl.get_link(BRIDGE))
        bridge = nl.link(BRIDGE)
        assert bridge is not None
        nl.call(rtnl.new_addr4(bridge.index, GATEWAY, PREFIX), rtnl.link_up(bridge.index))
    # warm up every variant once in this process before forking the template (the factory
    # runs a shim's create_namespaces once before it freezes, for the same reason)
    for k, variant in enumerate(VARIANTS):
        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            run_pod_side(variant, _plan(60000 + k))
        finally:
            libc.setns(own, libc.CLONE_NEWNET)
            os.close(own)
    gc.collect()
    gc.freeze()
    cmd_r, cmd_w = os.pipe()
    out_r, out_w = os.pipe()
    tpl = os.fork()
    if tpl == 0:
        os.close(cmd_w)
        os.close(out_r)
        template(cmd_r, out_w)
        os._exit(0)
    os.close(cmd_r)
    os.close(out_w)
    results: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    cmds = os.fdopen(cmd_w, "w", buffering=1)
    answers = os.fdopen(out_r, "r")

    async def run() -> None:
        hosts = {v: HostVariant(v, bridge.index) for v in VARIANTS}
        try:
            for i in range(samples + 2):
                order = list(VARIANTS)
                random.shuffle(order)
                for v in order:
                    n = i * len(VARIANTS) + VARIANTS.index(v)
                    cmds.write(f"{v} {n}\n")
                    answer = json.loads(await asyncio.to_thread(answers.readline))
                    if "error" in answer:
                        raise RuntimeError(f"{v}: pod side failed: {answer['error']}")
                    ifname = _plan(n).host_ifname
                    attach = await stall_of(functools.partial(hosts[v].attach, ifname))
                    delete = await stall_of(functools.partial(hosts[v].delete, ifname))
                    idle = await stall_of(functools.partial(asyncio.sleep, 0.005))
                    if i < 2:
                        continue  # the first calls of each host variant open sockets, threads
                    for key, value in (("(a) pod side", answer["ok"]), ("(b) attach", attach[0]),
                                       ("(b) attach: loop gap", attach[1]), ("(b) delete", delete[0]),
                                       ("(b) delete: loop gap", delete[1]), ("(b) idle: loop gap", idle[1])):
                        results[v].setdefault(key, []).append(value)
        finally:
            for h in hosts.values():
                h.close()

    try:
        asyncio.run(run())
    finally:
        cmds.close()
        os.waitpid(tpl, 0)
    return results


# -- (c) through the daemon -------------------------------------------------------------------


def smaps_kib(pid: int) -> dict[str, int]:
    """Pss, Rss and Private (clean + dirty) of a process, KiB (/proc/PID/smaps_rollup)."""
    out = {"Pss": 0, "Rss": 0, "Private": 0}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Rss"):
                out[key] = int(rest.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                out["Private"] += int(rest.split()[0])
    return out


STEP_LINE = re.compile(r"sandbox ([0-9a-f]{64}) ready: .*\([\d.]+ ms: ([^)]*)\)")


def logged_steps(log: str, sids: set[str]) -> dict[str, list[float]]:
    """The daemon's StepTimer milliseconds ("sandbox ... ready" lines) of the given sandboxes."""
    out: dict[str, list[float]] = {}
    for m in STEP_LINE.finditer(log):
        if m.group(1) in sids:
            for part in m.group(2).split():
                step, _, ms = part.partition("=")
                if step in ("namespaces", "net-attach"):
                    out.setdefault(f"  step {step}", []).append(float(ms) / 1000)
    return out


def daemons(trees: dict[str, Path], pods: int) -> dict[str, dict[str, list[float]]]:
    from cri_shim.api.gen import api_pb2 as pb
    from tests.support.daemon import make_daemon
    from tests.support.names import unique

    base = Path(tempfile.mkdtemp(prefix="bench-nl-"))
    started: dict[str, Any] = {}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    cwd = os.getcwd()
    env_before = os.environ.get("PYTHONPATH")
    try:
        for name, tree in trees.items():
            d = make_daemon(base / name, log_level="info")
            # the daemon and the shim factory it starts import from this tree only
            os.environ["PYTHONPATH"] = str(tree)
            os.chdir(base)
            try:
                d.start()
            finally:
                os.chdir(cwd)
            started[name] = d

        def config(name: str, i: int) -> Any:
            return pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(name=f"nl-{name}-{i}", namespace="bench", uid=unique("u", 30)),
                hostname=f"nl-{i}",
                linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))))

        ids: dict[str, list[str]] = {name: [] for name in trees}
        for i in range(pods + 2):
            order = list(trees)
            random.shuffle(order)
            for name in order:
                rt = started[name].runtime
                t0 = time.perf_counter()
                sid = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config(name, i)), timeout=120).pod_sandbox_id
                took = time.perf_counter() - t0
                ids[name].append(sid)
                ip = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=30).status.network.ip
                if not ip:
                    raise RuntimeError(f"{name}: pod {sid} has no IP")
                if i >= 2:  # the first pods make the bridge and the nft table
                    results[name].setdefault("RunPodSandbox", []).append(took)
        time.sleep(1.0)
        for name, d in started.items():
            results[name].update(logged_steps(d.log_path.read_text(errors="replace"), set(ids[name][2:])))
            shims = [int(f.read_text().split()[0]) for f in (d.state / "shims").glob("*.pid") if f.stem != "factory"]
            factory = int((d.state / "shims" / "factory.pid").read_text().split()[0])
            per_shim = [smaps_kib(p) for p in shims]
            for key in ("Pss", "Private", "Rss"):
                results[name][f"shim {key} MiB"] = [m[key] / 1024 for m in per_shim]
            results[name]["factory Pss MiB"] = [smaps_kib(factory)["Pss"] / 1024]
            results[name]["factory Rss MiB"] = [smaps_kib(factory)["Rss"] / 1024]
        for i in range(pods + 2):
            for name in trees:
                rt = started[name].runtime
                sid = ids[name][i]
                t0 = time.perf_counter()
                rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
                rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120)
                if i >= 2:
                    results[name].setdefault("Stop+RemovePodSandbox", []).append(time.perf_counter() - t0)
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
        for d in started.values():
            d.cleanup()
            shutil.rmtree(d.socket.parent, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    return results


# -- report -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def table(title: str, results: dict[str, dict[str, list[float]]], scale: float, unit: str) -> None:
    names = list(results)
    ops: list[str] = []
    for per in results.values():
        ops += [op for op in per if op not in ops]
    print(f"\n{title}")
    print(f"{'':24s}" + "".join(f"{n + ' p50/p95 ' + unit:>26s}" for n in names))
    for op in ops:
        row = f"{op:24s}"
        for n in names:
            v = results[n].get(op, [])
            if not v:
                row += f"{'-':>26s}"
                continue
            k = scale if "MiB" not in op else 1.0
            row += f"{statistics.median(v) * k:>16.2f} / {pct(v, .95) * k:6.2f}  "
        print(row)


ROOT = Path(__file__).resolve().parents[1]
VARIANT_PATCH = Path(__file__).with_name("netlink_pyroute2.patch")


@contextlib.contextmanager
def variant_tree() -> Iterator[Path]:
    """This repository's HEAD with the pyroute2 variant applied, in a temp dir (removed after)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-nl-pyroute2-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        applied = subprocess.run(["git", "apply", str(VARIANT_PATCH)], cwd=tmp, capture_output=True, text=True,
                                 check=False)
        if applied.returncode != 0:
            raise RuntimeError(f"{VARIANT_PATCH.name} no longer applies to HEAD (refresh it):\n{applied.stderr}")
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=40, help="pods per variant for (a) and (b)")
    ap.add_argument("--pods", type=int, default=30, help="pods per daemon for (c)")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="source trees to run daemons from in (c), instead of the default two")
    ap.add_argument("--no-daemon", action="store_true", help="only (a) and (b)")
    ap.add_argument("--micro-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        import pyroute2  # noqa: F401 - only this benchmark uses it
    except ImportError:
        print("bench/netlink.py needs pyroute2 0.9 (not a dependency of cri-shim): install the bench "
              "extra or `pip install 'pyroute2>=0.9.7,<0.10'` into the environment that runs it", file=sys.stderr)
        return 2
    if args.micro_child:
        print(json.dumps(micro(args.samples)))
        return 0
    # (a) and (b) in a fresh interpreter that owns a private netns (and no gRPC threads)
    out = subprocess.run([sys.executable, __file__, "--micro-child", "--samples", str(args.samples)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return 1
    table(f"(a) pod side and (b) host side, {args.samples} pods per variant, interleaved",
          json.loads(out.stdout.splitlines()[-1]), 1000, "ms")
    if args.no_daemon:
        return 0
    title = f"(c) through the daemon, {args.pods} pods per tree, interleaved"
    if args.tree:
        trees = {name: Path(path).resolve() for name, _, path in (t.partition("=") for t in args.tree)}
        table(title, daemons(trees, args.pods), 1000, "ms")
        return 0
    with variant_tree() as pyroute2_tree:
        table(title, daemons({"rtnl": ROOT, "pyroute2": pyroute2_tree}, args.pods), 1000, "ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
