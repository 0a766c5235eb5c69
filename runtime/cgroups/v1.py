"""The cgroup v1 driver: one directory per mounted hierarchy (plus the unified one in hybrid).

A v1 cgroup is the same path created in every controller hierarchy (runc's fs manager does
the same), so a process joins it by writing its pid to each hierarchy's cgroup.procs.
Named hierarchies (``name=systemd``) are not ours: ``CgroupHost`` leaves them out.
"""

from __future__ import annotations

import functools
import logging
import signal
from pathlib import Path

from runtime.cgroups.base import CgroupDriverBase
from runtime.cgroups.fs import read_optional
from runtime.cgroups.paths import ancestors, under
from runtime.cgroups.plan import CgroupPlan, InheritCpuset, Mkdir, PlanStep, os_error
from runtime.cgroups.stats import CgroupStats
from runtime.cgroups.stats_v1 import read_v1_oom_kill, read_v1_stats
from runtime.cgroups.tree import kill_listed, kill_until_empty, read_pids
from runtime.cgroups.v1resources import plan_v1_resources
from runtime.errors import InvalidArgument
from runtime.model.resources import Resources

log = logging.getLogger(__name__)

FROZEN, THAWED = "FROZEN", "THAWED"


class CgroupV1Driver(CgroupDriverBase):
    """See :class:`runtime.cgroups.driver.CgroupDriver` for the contract of each method."""

    def hierarchy_roots(self) -> list[Path]:
        """Each v1 hierarchy, then the unified one (hybrid: for PSI and tracking)."""
        return list(self._roots)

    @functools.cached_property
    def _roots(self) -> tuple[Path, ...]:
        # computed once: host.v1_hierarchies sorts a set of paths on every call
        unified = (self.host.unified,) if self.host.unified is not None else ()
        return (*self.host.v1_hierarchies, *unified)

    def _pid_dir(self, path: str) -> Path:
        """The hierarchy pids are read from: freezer (what kill freezes), else any."""
        for controller in ("freezer", "pids", "memory", "cpu"):
            mount = self.host.v1_mounts.get(controller)
            if mount is not None:
                return under(mount, path)
        if not self.host.v1_hierarchies:
            raise InvalidArgument("no cgroup v1 hierarchy is mounted")
        return under(self.host.v1_hierarchies[0], path)

    # -- plans --------------------------------------------------------------------------------

    def plan_create(self, path: str, resources: Resources | None = None) -> CgroupPlan:
        path = self.checked(path)
        cpuset = self.host.v1_mounts.get("cpuset")
        steps: list[PlanStep] = []
        for h in self.hierarchy_roots():
            for cg in ancestors(path):
                steps.append(Mkdir(under(h, cg)))
                if h == cpuset:
                    steps.append(InheritCpuset(under(h, cg)))
        return CgroupPlan(tuple(steps)) + plan_v1_resources(self.host, path, resources or Resources())

    def plan_update(self, path: str, resources: Resources) -> CgroupPlan:
        return plan_v1_resources(self.host, self.checked(path), resources)

    # -- processes ----------------------------------------------------------------------------

    def pids(self, path: str, recursive: bool = True) -> list[int]:
        return read_pids(self.fs, self._pid_dir(self.checked(path)), recursive=recursive)

    def kill_all(self, path: str, sig: int = signal.SIGKILL) -> None:
        path = self.checked(path)
        freezer = self.host.v1_mounts.get("freezer")
        if freezer is None:
            kill_until_empty(self.fs, self._pid_dir(path), self.clock, self.freeze_timeout)
            return
        d = under(freezer, path)
        if not self.fs.is_dir(d):
            return
        # Freeze, so no process forks or exits between our read of the list and the kill;
        # signals to frozen tasks are delivered when they thaw.
        frozen = self._freeze(d)
        try:
            kill_listed(self.fs, d, sig)
        finally:
            self._write_state(d, THAWED)
        if not frozen:
            kill_until_empty(self.fs, d, self.clock, self.freeze_timeout)

    def _write_state(self, d: Path, state: str) -> None:
        try:
            self.fs.write(d / "freezer.state", state)
        except OSError as exc:
            raise os_error(exc, f"writing {state} to {d / 'freezer.state'}") from exc

    def _freeze(self, d: Path) -> bool:
        """Freeze the subtree at ``d``; False when it did not settle within the timeout."""
        self._write_state(d, FROZEN)
        deadline = self.clock.monotonic() + self.freeze_timeout
        while True:
            state = (read_optional(self.fs, d / "freezer.state") or "").strip()
            if state == FROZEN:
                return True
            if self.clock.monotonic() >= deadline:
                log.warning("cgroup %s did not freeze (state %s); killing without freezing", d, state)
                return False
            self.clock.sleep(0.005)
            self._write_state(d, FROZEN)  # kernel: a new write retries tasks that failed

    # -- measurements -------------------------------------------------------------------------

    def read_stats(self, path: str, *, full: bool = True) -> CgroupStats:
        return read_v1_stats(self.fs, self.host, self.checked(path), full=full)

    def oom_kill_count(self, path: str) -> int | None:
        return read_v1_oom_kill(self.fs, self.host, self.checked(path))
