"""Fake cgroupfs trees in a temp directory, for v1, hybrid and v2 layouts (no root needed).

:class:`FakeCgroupKernel` is a ``CgroupFs`` over real files that imitates the few kernel
behaviours the cgroup code relies on, and nothing more:

- mkdir populates a new cgroup with the interface files of its hierarchy's controllers
  (v2: of the controllers its parent enabled) with the kernel's default values;
- writes to a missing file fail with ENOENT (inherited: no O_CREAT);
- v2 ``cgroup.subtree_control`` takes ``+c``/``-c`` tokens, refusing (ENOENT) controllers
  missing from ``cgroup.controllers``, all or nothing;
- ``cgroup.procs`` writes add a pid (``0`` means the writer); ``cgroup.kill`` kills the
  subtree; killing a pid removes it from every ``cgroup.procs``;
- rmdir deletes the interface files and the directory, EBUSY while it has child cgroups
  or pids.

Every write is also logged in :attr:`FakeCgroupKernel.writes` (path, value), in order.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from runtime.cgroups.fs import LinuxCgroupFs
from runtime.cgroups.host import CgroupHost, probe_cgroups
from runtime.hostinfo import CgroupMode

UNLIMITED_V1 = "9223372036854771712"
PSI = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
HUGEPAGE_SIZES = ("2MB", "1GB")

V1_FILES: dict[str, dict[str, str]] = {
    "cpu": {"cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1",
            "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"},
    "cpuacct": {"cpuacct.usage": "0", "cpuacct.usage_user": "0", "cpuacct.usage_sys": "0",
                "cpuacct.stat": "user 0\nsystem 0\n"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "memory": {"memory.limit_in_bytes": UNLIMITED_V1, "memory.usage_in_bytes": "0",
               "memory.memsw.limit_in_bytes": UNLIMITED_V1, "memory.memsw.usage_in_bytes": "0",
               "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
               "memory.failcnt": "0", "memory.max_usage_in_bytes": "0", "memory.kmem.usage_in_bytes": "0",
               "memory.stat": "total_rss 0\ntotal_cache 0\ntotal_inactive_file 0\n",
               "cgroup.event_control": ""},
    "pids": {"pids.max": "max", "pids.current": "0"},
    "freezer": {"freezer.state": "THAWED"},
    "blkio": {"blkio.throttle.io_service_bytes_recursive": "Total 0\n",
              "blkio.throttle.io_serviced_recursive": "Total 0\n"},
    "devices": {"devices.list": "a *:* rwm\n"},
    "hugetlb": {f"hugetlb.{s}.{f}": v for s in HUGEPAGE_SIZES
                for f, v in (("limit_in_bytes", UNLIMITED_V1), ("usage_in_bytes", "0"),
                             ("max_usage_in_bytes", "0"))},
}
V1_ROOT_ONLY = {"cpuset": {"cpuset.cpus": "0-3", "cpuset.mems": "0"}}

V2_CORE = {"cgroup.procs": "", "cgroup.controllers": "", "cgroup.subtree_control": "",
           "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0", "cgroup.kill": "",
           "cgroup.type": "domain", "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
           "cpu.pressure": PSI, "memory.pressure": PSI, "io.pressure": PSI}
V2_FILES: dict[str, dict[str, str]] = {
    "cpu": {"cpu.weight": "100", "cpu.max": "max 100000"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "memory": {"memory.max": "max", "memory.current": "0", "memory.swap.max": "max",
               "memory.swap.current": "0", "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
               "memory.peak": "0",
               "memory.stat": "anon 0\nfile 0\ninactive_file 0\npgfault 0\npgmajfault 0\n",
               "memory.oom.group": "0", "memory.high": "max", "memory.min": "0", "memory.low": "0"},
    "io": {"io.stat": "", "io.max": "", "io.weight": "default 100"},
    "pids": {"pids.max": "max", "pids.current": "0"},
    "hugetlb": {f"hugetlb.{s}.{f}": v for s in HUGEPAGE_SIZES for f, v in (("max", "max"), ("current", "0"))},
}
DEFAULT_V1_LAYOUT: tuple[tuple[str, ...], ...] = (
    ("cpu", "cpuacct"), ("cpuset",), ("memory",), ("pids",), ("freezer",), ("blkio",), ("devices",),
    ("hugetlb",),
)


@dataclass
class FakeCgroupKernel(LinuxCgroupFs):
    """A ``CgroupFs`` over a temp tree; see the module docstring for what it imitates."""

    root: Path
    mode: CgroupMode
    # v1: mount point -> its controllers; v2: {root: ("v2",)}
    hierarchies: dict[Path, tuple[str, ...]]
    mountinfo: str
    hugepages_dir: Path
    writer_pid: int = 4242
    v1_files: dict[str, dict[str, str]] = field(default_factory=lambda: {c: dict(f) for c, f in V1_FILES.items()})
    writes: list[tuple[Path, str]] = field(default_factory=list)
    kills: list[tuple[int, int]] = field(default_factory=list)

    # -- building -----------------------------------------------------------------------------

    def host(self, **overrides: object) -> CgroupHost:
        """``probe_cgroups`` over this tree (real probing code, fake mount table)."""
        return probe_cgroups(self.root, self.mode, fs=self, mountinfo=self.mountinfo,
                             self_cgroup="0::/\n", hugepages_dir=self.hugepages_dir)

    def _hierarchy_of(self, path: Path) -> tuple[Path, tuple[str, ...]]:
        for mount, controllers in self.hierarchies.items():
            if path == mount or mount in path.parents:
                return mount, controllers
        raise AssertionError(f"{path} is in no fake hierarchy")

    def _populate(self, d: Path, files: dict[str, str]) -> None:
        for name, value in files.items():
            (d / name).write_text(value)

    def populate_new(self, d: Path) -> None:
        _mount, controllers = self._hierarchy_of(d)
        if controllers == ("v2",):
            self._populate(d, V2_CORE)
            enabled = (d.parent / "cgroup.subtree_control").read_text().split()
            (d / "cgroup.controllers").write_text(" ".join(enabled))
            for c in enabled:
                self._populate(d, V2_FILES.get(c, {}))
            return
        self._populate(d, {"cgroup.procs": "", "tasks": "", "cgroup.clone_children": "0"})
        for c in controllers:
            self._populate(d, self.v1_files.get(c, {}))

    # -- what a test sets up or looks at ------------------------------------------------------

    def set_file(self, path: Path, value: str) -> None:
        """Change a kernel-maintained file (usage counters, events) as if the kernel did."""
        if not path.is_file():
            raise AssertionError(f"{path} is not an interface file of the fake tree")
        path.write_text(value)

    def add_pids(self, d: Path, *pids: int) -> None:
        procs = d / "cgroup.procs"
        procs.write_text(procs.read_text() + "".join(f"{p}\n" for p in pids))

    def files(self, d: Path) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(d.iterdir()) if p.is_file()}

    # -- CgroupFs -----------------------------------------------------------------------------

    def mkdir(self, path: Path) -> bool:
        created = super().mkdir(path)
        if created:
            self.populate_new(path)
        return created

    def rmdir(self, path: Path) -> bool:
        if not path.is_dir():
            return False
        if self.child_dirs(path) or (path / "cgroup.procs").read_text().split():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        shutil.rmtree(path)
        return True

    def write(self, path: Path, value: str) -> None:
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        self.writes.append((path, value))
        if path.name == "cgroup.subtree_control":
            self._subtree_control(path, value)
        elif path.name == "cgroup.procs":
            pid = int(value.strip())
            self.add_pids(path.parent, pid or self.writer_pid)
        elif path.name == "cgroup.kill" and value.strip() == "1":
            for pid in self._subtree_pids(path.parent):
                self.kill(pid, 9)
        else:
            super().write(path, value)

    def _subtree_control(self, path: Path, value: str) -> None:
        available = (path.parent / "cgroup.controllers").read_text().split()
        enabled = path.read_text().split()
        for tok in value.split():
            name = tok[1:]
            if tok[0] not in "+-" or name not in available:
                raise FileNotFoundError(errno.ENOENT, f"controller {name} not available", str(path))
        added = []
        for tok in value.split():
            if tok[0] == "+" and tok[1:] not in enabled:
                enabled.append(tok[1:])
                added.append(tok[1:])
            elif tok[0] == "-" and tok[1:] in enabled:
                enabled.remove(tok[1:])
        path.write_text(" ".join(enabled))
        for child in self.child_dirs(path.parent):  # existing children get the new files
            (child / "cgroup.controllers").write_text(" ".join(enabled))
            for c in added:
                self._populate(child, V2_FILES.get(c, {}))

    def _subtree_pids(self, d: Path) -> list[int]:
        return [int(p) for f in d.rglob("cgroup.procs") for p in f.read_text().split()]

    def kill(self, pid: int, sig: int = 9) -> bool:
        self.kills.append((pid, sig))
        found = False
        if sig == 9:
            for mount in self.hierarchies:
                for f in mount.rglob("cgroup.procs"):
                    pids = f.read_text().split()
                    if str(pid) in pids:
                        found = True
                        f.write_text("".join(f"{p}\n" for p in pids if p != str(pid)))
        return found or sig != 9


def _hugepages(tmp: Path) -> Path:
    d = tmp / "hugepages"
    for kib in (2048, 1048576):
        (d / f"hugepages-{kib}kB").mkdir(parents=True, exist_ok=True)
    return d


def make_v1_tree(tmp: Path, layout: tuple[tuple[str, ...], ...] = DEFAULT_V1_LAYOUT, *,
                 hybrid: bool = False, memsw: bool = True, oom_kill: bool = True) -> FakeCgroupKernel:
    """A v1 (or hybrid) tree under ``tmp/cgroup``: one directory per hierarchy named after
    its controllers (``cpu,cpuacct``), plus ``systemd`` (name=systemd) and, when hybrid,
    ``unified``; with the matching mountinfo text."""
    root = tmp / "cgroup"
    lines, hierarchies = [], {}
    n = 30
    for controllers in (*layout, ("name=systemd",)):
        mount = root / ",".join(c.removeprefix("name=") for c in controllers)
        mount.mkdir(parents=True)
        n += 1
        lines.append(f"{n} 20 0:{n} / {mount} rw,relatime - cgroup cgroup rw,{','.join(controllers)}")
        if controllers == ("name=systemd",):
            continue
        hierarchies[mount] = controllers
    if hybrid:
        mount = root / "unified"
        mount.mkdir()
        lines.append(f"{n + 1} 20 0:{n + 1} / {mount} rw,relatime - cgroup2 cgroup2 rw")
        hierarchies[mount] = ("v2",)
    kernel = FakeCgroupKernel(root, CgroupMode.HYBRID if hybrid else CgroupMode.V1, hierarchies,
                              "\n".join(lines) + "\n", _hugepages(tmp))
    memory = kernel.v1_files["memory"]
    if not memsw:
        for name in [n for n in memory if n.startswith("memory.memsw.")]:
            del memory[name]
    if not oom_kill:
        memory["memory.oom_control"] = "oom_kill_disable 0\nunder_oom 0\n"
    for mount, controllers in hierarchies.items():
        if controllers == ("v2",):
            kernel._populate(mount, {k: v for k, v in V2_CORE.items() if k != "cgroup.kill"})
            continue
        kernel.populate_new(mount)
        for c in controllers:
            kernel._populate(mount, V1_ROOT_ONLY.get(c, {}))
    return kernel


def make_v2_tree(tmp: Path, controllers: tuple[str, ...] = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids"),
                 *, swap: bool = True) -> FakeCgroupKernel:
    """A v2 tree under ``tmp/cgroup`` whose root offers ``controllers``, none enabled yet."""
    root = tmp / "cgroup"
    root.mkdir(parents=True)
    mountinfo = f"40 20 0:40 / {root} rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
    kernel = FakeCgroupKernel(root, CgroupMode.V2, {root: ("v2",)}, mountinfo, _hugepages(tmp))
    kernel._populate(root, {k: v for k, v in V2_CORE.items() if k not in ("cgroup.kill", "cgroup.freeze")})
    (root / "cgroup.controllers").write_text(" ".join(controllers))
    (root / "cpuset.cpus.effective").write_text("0-3")
    if swap:
        # kubelet's probe looks for memory.swap.max below the root (see host._v2_swap).
        probe = root / "init.scope"
        probe.mkdir()
        kernel._populate(probe, {"cgroup.procs": "", "memory.swap.max": "max"})
    return kernel
