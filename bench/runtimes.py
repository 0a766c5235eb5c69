"""The runtimes a benchmark compares, started side by side on this machine. Not a test.

- containerd: a private Debian containerd + runc (tests/conformance/containerd.py: own root,
  state, socket, CNI bridge network, and a hosts.toml per upstream registry that sends every
  pull to the local registry), its pause image the stand-in ``registry.k8s.io/pause:3.9``;
- cri-shim: a daemon of this tree (tests/support/daemon.py), its registries.conf rewriting the
  same upstream registries to the local registry;
- optionally a cri-shim of another checkout (``--baseline TREE``, e.g. a ``git worktree`` of an
  older commit): that tree's own tests/support/daemon.py starts it in a helper process, so its
  config is the one its code expects.

Each runtime says how to find its per-pod processes (for memory): the shim(s) of each pod and
their descendants, minus the containers' own processes (the workload is the same on both, and
it is not the runtime's cost). A container process is one whose cgroup path names one of the
benchmark's container ids, which both runtimes put last in a container's cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conformance import images
from tests.conformance.containerd import running_containerd
from tests.support import imagebuilder as ib
from tests.support.daemon import running_daemon

#: The workload image (a stand-in pushed to the local registry by :func:`push_images`).
BUSYBOX = images.E2E + "busybox:1.29-2"


def pause_image(workdir: Path) -> ib.BuiltImage:
    """containerd's sandbox image: bench/pause.c built static (what registry.k8s.io/pause is,
    and as small), or, without a C compiler, the conformance stand-in (a shell script)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("  no C compiler: containerd's pause is a shell script (its memory is overstated)", flush=True)
        return images.pause_image()
    binary = workdir / "pause"
    subprocess.run([cc, "-static", "-Os", "-s", "-o", str(binary), str(Path(__file__).with_name("pause.c"))],
                   check=True)
    return ib.build_image([ib.Layer().file("pause", binary.read_bytes(), 0o755)],
                          config={"Entrypoint": ["/pause"]})


def push_images(registry_url: str, workdir: Path) -> None:
    """Push what the benchmarks run: containerd's pause image (both of its registry names)
    and busybox."""
    pause = pause_image(workdir)
    images.push_all(registry_url, {
        images.E2E + "busybox:1.29-2": images.default_image(),
        "registry.k8s.io/pause:3.9": pause,
        "k8s.gcr.io/pause:3.9": pause,
    })


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def in_containers(pid: int, container_ids: Iterable[str]) -> bool:
    """Whether ``pid`` runs in the cgroup of one of ``container_ids``."""
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return any(cid in cgroups for cid in container_ids)


@dataclass
class Runtime:
    """A CRI endpoint under benchmark and where its processes are."""

    name: str
    endpoint: str
    daemon_pid: int
    #: pids of the per-pod runtime processes that are not below another one (shims)
    shim_pids: Callable[[], list[int]] = field(repr=False)

    def pod_pids(self, container_ids: Iterable[str]) -> list[int]:
        """The runtime's own per-pod processes: shims and what they started, without the
        processes of ``container_ids`` (the workload)."""
        ids = list(container_ids)
        return [p for s in self.shim_pids() for p in descendants(s) if not in_containers(p, ids)]

    @property
    def socket(self) -> str:
        return self.endpoint.removeprefix("unix://")



def _cri_shim_shims(state: Path) -> list[int]:
    """The shim processes, each once: the pid files of a shim group's pods name the same one
    ([pods] pods_per_shim)."""
    pids = set()
    for f in (state / "shims").glob("*.pid"):
        if f.stem != "factory":
            with contextlib.suppress(OSError, ValueError, IndexError):
                pids.add(int(f.read_text().split()[0]))
    return sorted(pids)


def shim_config(registries_conf: Path, merge_memory: bool, extra: str = "") -> str:
    """The cri-shim config the benchmarks use (added to tests/support/daemon.py's, which leaves
    KSM alone). ``merge_memory``: the shims offer their memory to ksmd, which the benchmark
    has started (``pods.ksm = "auto"`` uses it as found); without it no pods key is written,
    so that a baseline tree older than pods.ksm takes the config too."""
    pods = '[pods]\nksm = "auto"\n' if merge_memory else ""
    return f'[image]\nregistries_config = "{registries_conf}"\n{pods}{extra}'



@contextlib.contextmanager
def containerd(base: Path, registry_host: str) -> Iterator[Runtime]:
    with running_containerd(base, registry_host, images.UPSTREAM_REGISTRIES) as cd:
        yield Runtime("containerd", cd.endpoint, cd.proc.pid, cd.shim_pids)


@contextlib.contextmanager
def cri_shim(base: Path, registry_host: str, *, name: str = "cri-shim", merge_memory: bool = False,
             extra: str = "") -> Iterator[Runtime]:
    conf = base.parent / f"{base.name}-registries.conf"
    conf.write_text(images.registries_conf(registry_host))
    with running_daemon(base, extra_config=shim_config(conf, merge_memory, extra), log_level="info") as d:
        assert d.proc is not None
        yield Runtime(name, d.endpoint, d.proc.pid, lambda: _cri_shim_shims(d.state))


# Runs in the baseline tree (its tests.support.daemon), holds a daemon until stdin closes.
_BASELINE_HOLDER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tests.support.daemon import running_daemon
    base, extra = Path(sys.argv[1]), sys.argv[2]
    with running_daemon(base, extra_config=extra, log_level="info") as d:
        print(json.dumps({"endpoint": d.endpoint, "pid": d.proc.pid, "state": str(d.state)}), flush=True)
        sys.stdin.read()
""")


def tree_label(tree: Path) -> str:
    rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return f"cri-shim@{rev or tree.name}"


@contextlib.contextmanager
def cri_shim_of_tree(tree: Path, base: Path, registry_host: str) -> Iterator[Runtime]:
    """A cri-shim daemon of another checkout, started by that checkout's test helper."""
    conf = base.parent / f"{base.name}-registries.conf"
    conf.write_text(images.registries_conf(registry_host))
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen([sys.executable, "-c", _BASELINE_HOLDER, str(base), shim_config(conf, False)],
                            cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the cri-shim of {tree} did not start (exit {proc.wait(60)})")
        info = json.loads(line)
        state = Path(info["state"])
        yield Runtime(tree_label(tree), info["endpoint"], int(info["pid"]), lambda: _cri_shim_shims(state))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the holder leaves its block: pods removed, daemon stopped, host cleaned
        try:
            proc.wait(180)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

