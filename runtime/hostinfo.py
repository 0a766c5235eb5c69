"""Facts about the host, probed once at start: cgroup mode, kernel release."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class CgroupMode(StrEnum):
    V1 = "v1"          # legacy: one hierarchy per controller
    HYBRID = "hybrid"  # v1 controllers plus an empty unified mount (systemd hybrid)
    V2 = "v2"          # unified


@dataclass(frozen=True, slots=True)
class HostInfo:
    cgroup_mode: CgroupMode
    kernel: str
    machine: str


def detect_cgroup_mode(cgroup_root: Path) -> CgroupMode:
    """kernel: cgroup v2 has cgroup.controllers at the root of the unified mount."""
    if (cgroup_root / "cgroup.controllers").exists():
        return CgroupMode.V2
    if (cgroup_root / "unified" / "cgroup.controllers").exists():
        return CgroupMode.HYBRID
    return CgroupMode.V1


def probe_host(cgroup_root: Path) -> HostInfo:
    u = os.uname()
    return HostInfo(cgroup_mode=detect_cgroup_mode(cgroup_root), kernel=u.release, machine=u.machine)
