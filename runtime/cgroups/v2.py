"""The cgroup v2 driver: one unified hierarchy, controllers enabled top-down.

kernel (cgroup-v2.rst): a controller's files appear in a cgroup only when its parent lists
the controller in cgroup.subtree_control, and only cgroups without processes may enable
controllers for their children ("no internal processes"). Pod cgroups hold no process
themselves (the pod shim lives outside them); containers are the leaves.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from runtime.cgroups.base import CgroupDriverBase
from runtime.cgroups.fs import CgroupFs, read_optional
from runtime.cgroups.host import V2_CONTROLLERS, CgroupHost
from runtime.cgroups.parse import flat_keyed
from runtime.cgroups.paths import DEFAULT_PARENT, ancestors, parent_of, under
from runtime.cgroups.plan import CgroupPlan, EnableControllers, Mkdir, PlanStep, os_error
from runtime.cgroups.stats import CgroupStats
from runtime.cgroups.stats_v2 import read_v2_oom_kill, read_v2_stats
from runtime.cgroups.tree import Clock, kill_listed, kill_until_empty, read_pids
from runtime.cgroups.v2resources import plan_v2_resources
from runtime.errors import InvalidArgument
from runtime.model.resources import Resources

log = logging.getLogger(__name__)


class CgroupV2Driver(CgroupDriverBase):
    """See :class:`runtime.cgroups.driver.CgroupDriver` for the contract of each method."""

    def __init__(self, host: CgroupHost, fs: CgroupFs, clock: Clock, *, remove_timeout: float = 10.0,
                 freeze_timeout: float = 2.0, default_parent: str = DEFAULT_PARENT) -> None:
        if host.unified is None:
            raise InvalidArgument("cgroup v2 driver needs a unified hierarchy")
        super().__init__(host, fs, clock, remove_timeout=remove_timeout, freeze_timeout=freeze_timeout,
                         default_parent=default_parent)
        self.root: Path = host.unified
        self.controllers = tuple(c for c in V2_CONTROLLERS if c in host.controllers)

    def hierarchy_roots(self) -> list[Path]:
        return [self.root]

    def directory(self, path: str) -> Path:
        """The cgroup's one directory."""
        return under(self.root, self.checked(path))

    # -- plans --------------------------------------------------------------------------------

    def plan_create(self, path: str, resources: Resources | None = None) -> CgroupPlan:
        leaf = self.directory(path)
        steps: list[PlanStep] = []
        for cg in ancestors(path):
            if self.controllers:
                steps.append(EnableControllers(under(self.root, parent_of(cg)), self.controllers))
            steps.append(Mkdir(under(self.root, cg)))
        return CgroupPlan(tuple(steps)) + plan_v2_resources(self.host, leaf, resources or Resources())

    def plan_update(self, path: str, resources: Resources) -> CgroupPlan:
        return plan_v2_resources(self.host, self.directory(path), resources)

    # -- processes ----------------------------------------------------------------------------

    def pids(self, path: str, recursive: bool = True) -> list[int]:
        return read_pids(self.fs, self.directory(path), recursive=recursive)

    def kill_all(self, path: str, sig: int = signal.SIGKILL) -> None:
        d = self.directory(path)
        if not self.fs.is_dir(d):
            return
        if sig == signal.SIGKILL and self.fs.is_file(d / "cgroup.kill"):
            # kernel >= 5.14: kills the whole subtree at once, forks included.
            self._write(d / "cgroup.kill", "1")
            return
        if not self.fs.is_file(d / "cgroup.freeze"):  # kernel < 5.2
            kill_until_empty(self.fs, d, self.clock, self.freeze_timeout)
            return
        self._write(d / "cgroup.freeze", "1")
        try:
            frozen = self._wait_frozen(d)
            kill_listed(self.fs, d, sig)
        finally:
            self._write(d / "cgroup.freeze", "0")
        if not frozen and sig == signal.SIGKILL:
            kill_until_empty(self.fs, d, self.clock, self.freeze_timeout)

    def _write(self, f: Path, value: str) -> None:
        try:
            self.fs.write(f, value)
        except OSError as exc:
            raise os_error(exc, f"writing {value!r} to {f}") from exc

    def _wait_frozen(self, d: Path) -> bool:
        deadline = self.clock.monotonic() + self.freeze_timeout
        while flat_keyed(read_optional(self.fs, d / "cgroup.events") or "").get("frozen") != 1:
            if self.clock.monotonic() >= deadline:
                log.warning("cgroup %s did not freeze; signalling without freezing", d)
                return False
            self.clock.sleep(0.005)
        return True

    # -- measurements -------------------------------------------------------------------------

    def read_stats(self, path: str, *, full: bool = True) -> CgroupStats:
        return read_v2_stats(self.fs, self.directory(path), self.host.hugepage_sizes, full=full)

    def oom_kill_count(self, path: str) -> int | None:
        return read_v2_oom_kill(self.fs, self.directory(path))
