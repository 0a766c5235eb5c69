"""What this host's cgroups offer: hierarchies, controllers, swap accounting, hugetlb, PSI.

Probed once at start (:func:`probe_cgroups`, blocking: run it in a thread) and handed to the
driver, so planning needs no I/O. On v1 the hierarchies come from the mount table, which
tells which controllers share a mount (``cpu,cpuacct``) and lets us skip named hierarchies
(``name=systemd``) that hold no controller.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from runtime.cgroups.fs import CgroupFs, LinuxCgroupFs
from runtime.hostinfo import CgroupMode

log = logging.getLogger(__name__)

# The v1 controllers we create cgroups in (runc's list of legacy subsystems).
V1_CONTROLLERS = frozenset(
    {"cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "hugetlb",
     "net_cls", "net_prio", "perf_event", "rdma", "misc"}
)
# The v2 controllers enabled for pods and containers when the host offers them.
V2_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/self/mountinfo, reduced to what cgroup probing needs."""

    root: str
    mount_point: Path
    fstype: str
    super_options: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CgroupHost:
    """The cgroup facilities of this host.

    ``v1_mounts`` maps each mounted v1 controller to its hierarchy's mount point (two
    controllers map to one path when co-mounted). ``unified`` is the v2 hierarchy: the root
    in v2 mode, the extra mount in hybrid mode (no controllers there, but cgroup.kill,
    cgroup.events and per-cgroup PSI), None on pure v1. ``controllers`` is what pods can be
    limited by: the mounted v1 controllers, or the v2 root's ``cgroup.controllers``.
    """

    mode: CgroupMode
    root: Path
    controllers: frozenset[str]
    v1_mounts: dict[str, Path] = field(default_factory=dict)
    unified: Path | None = None
    swap_accounting: bool = False
    psi: bool = False
    oom_kill_counter: bool = False
    hugepage_sizes: tuple[str, ...] = ()

    @property
    def hugetlb(self) -> bool:
        return "hugetlb" in self.controllers

    def features(self) -> dict[str, bool]:
        """Yes/no facts for the Status RPC's verbose info and the start-up log line."""
        return {
            "cgroup_v2": self.mode is CgroupMode.V2,
            "swap_accounting": self.swap_accounting,
            "hugetlb": self.hugetlb,
            "psi": self.psi,
            "oom_kill_counter": self.oom_kill_counter,
            **{f"controller_{c}": True for c in sorted(self.controllers)},
        }

    @property
    def v1_hierarchies(self) -> tuple[Path, ...]:
        """Each v1 hierarchy once, in a stable order."""
        return tuple(sorted(set(self.v1_mounts.values())))


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo(5) text; malformed lines are skipped."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        entries.append(
            MountEntry(
                root=_unescape(fields[3]),
                mount_point=Path(_unescape(fields[4])),
                fstype=tail[0],
                super_options=tuple(tail[2].split(",")),
            )
        )
    return entries


def v1_mounts_from(entries: list[MountEntry], cgroup_root: Path) -> dict[str, Path]:
    """controller -> mount point, for the v1 hierarchies mounted under ``cgroup_root``."""
    mounts: dict[str, Path] = {}
    for e in entries:
        if e.fstype != "cgroup" or e.mount_point.parent != cgroup_root:
            continue
        controllers = [o for o in e.super_options if o in V1_CONTROLLERS]
        if not controllers:
            continue  # a named hierarchy such as name=systemd: no resources to manage
        if e.root != "/":
            log.warning("cgroup hierarchy %s is mounted from %s, not its root", e.mount_point, e.root)
        for c in controllers:
            mounts.setdefault(c, e.mount_point)
    return mounts


def _unified_from(entries: list[MountEntry], cgroup_root: Path, mode: CgroupMode) -> Path | None:
    if mode is CgroupMode.V2:
        return cgroup_root
    if mode is CgroupMode.HYBRID:
        for e in entries:
            if e.fstype == "cgroup2" and e.mount_point.parent == cgroup_root:
                return e.mount_point
    return None


def page_size_name(kib: int) -> str:
    """``2048`` (kB, as /sys/kernel/mm/hugepages names it) -> ``"2MB"`` (libcontainer's units)."""
    units = ("KB", "MB", "GB", "TB", "PB")
    size, unit = kib, 0
    while size >= 1024 and size % 1024 == 0 and unit < len(units) - 1:
        size //= 1024
        unit += 1
    return f"{size}{units[unit]}"


def hugepage_sizes(fs: CgroupFs, hugepages_dir: Path) -> tuple[str, ...]:
    """The huge page sizes the kernel supports, as hugetlb file names spell them."""
    sizes = []
    for d in fs.child_dirs(hugepages_dir):
        m = re.fullmatch(r"hugepages-([0-9]+)kB", d.name)
        if m:
            sizes.append(int(m.group(1)))
    return tuple(page_size_name(s) for s in sorted(sizes))


def _own_v2_cgroup(self_cgroup: str) -> str | None:
    for line in self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _v2_swap(fs: CgroupFs, unified: Path, self_cgroup: str) -> bool:
    # kubelet: memory.swap.max is absent from the root cgroup; look at our own cgroup, then
    # at the root's children (containerd#7838 does the same).
    own = _own_v2_cgroup(self_cgroup)
    candidates = [unified / own.lstrip("/")] if own and own != "/" else []
    candidates += fs.child_dirs(unified)[:16]
    return any(fs.is_file(c / "memory.swap.max") for c in candidates)


def _psi(fs: CgroupFs, unified: Path | None) -> bool:
    if unified is None:
        return False
    try:
        fs.read(unified / "cpu.pressure")  # kernel: EOPNOTSUPP when booted with psi=0
    except OSError:
        return False
    return True


def _v1_oom_kill(fs: CgroupFs, memory: Path | None) -> bool:
    if memory is None:
        return False
    try:
        text = fs.read(memory / "memory.oom_control")
    except OSError:
        return False
    return any(line.split()[:1] == ["oom_kill"] for line in text.splitlines())


def probe_cgroups(
    cgroup_root: Path,
    mode: CgroupMode,
    *,
    fs: CgroupFs | None = None,
    mountinfo: str | None = None,
    self_cgroup: str | None = None,
    hugepages_dir: Path = Path("/sys/kernel/mm/hugepages"),
) -> CgroupHost:
    """Probe the cgroup facilities under ``cgroup_root`` (blocking; reads a few files).

    ``mode`` comes from :class:`runtime.hostinfo.HostInfo`. ``mountinfo`` and
    ``self_cgroup`` default to /proc/self/mountinfo and /proc/self/cgroup.
    """
    fs = fs or LinuxCgroupFs()
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    if self_cgroup is None:
        self_cgroup = Path("/proc/self/cgroup").read_text()
    entries = parse_mountinfo(mountinfo)
    unified = _unified_from(entries, cgroup_root, mode)
    sizes = hugepage_sizes(fs, hugepages_dir)
    if mode is CgroupMode.V2:
        controllers = frozenset(fs.read(cgroup_root / "cgroup.controllers").split())
        return CgroupHost(
            mode=mode,
            root=cgroup_root,
            controllers=controllers,
            unified=cgroup_root,
            swap_accounting="memory" in controllers and _v2_swap(fs, cgroup_root, self_cgroup),
            psi=_psi(fs, cgroup_root),
            oom_kill_counter="memory" in controllers,
            hugepage_sizes=sizes,
        )
    mounts = v1_mounts_from(entries, cgroup_root)
    memory = mounts.get("memory")
    return CgroupHost(
        mode=mode,
        root=cgroup_root,
        controllers=frozenset(mounts),
        v1_mounts=mounts,
        unified=unified,
        swap_accounting=memory is not None and fs.is_file(memory / "memory.memsw.limit_in_bytes"),
        psi=_psi(fs, unified),
        oom_kill_counter=_v1_oom_kill(fs, memory),
        hugepage_sizes=sizes,
    )
