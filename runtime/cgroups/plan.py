"""Plans as data: the drivers compute steps, :func:`apply_plan` performs them.

A plan is a tuple of small frozen steps on absolute host paths, so tests compare a plan (or
the files it leaves behind) exactly, and the only code that touches cgroupfs for
create/update is the short applier below. Two steps read before they write, because the
value depends on what the kernel already has: enabling v2 controllers (only those the parent
offers and that are not on yet) and seeding a new v1 cpuset from its parent.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups.fs import CgroupFs
from runtime.errors import (
    EngineError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Mkdir:
    """Create a cgroup directory if absent (its parent exists by then)."""

    path: Path


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``value`` to the interface file ``path``."""

    path: Path
    value: str


@dataclass(frozen=True, slots=True)
class EnableControllers:
    """v2: turn on ``controllers`` in ``directory``'s cgroup.subtree_control.

    Only those listed in its cgroup.controllers and not yet enabled are written, in one
    write of ``"+a +b"`` (kernel: the write is all or nothing).
    """

    directory: Path
    controllers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InheritCpuset:
    """v1: a new cpuset cgroup starts with empty cpus/mems and refuses tasks until they are
    set; copy each empty one from the parent (runc's ``cpusetCopyIfNeeded``)."""

    directory: Path


PlanStep = Mkdir | Write | EnableControllers | InheritCpuset


@dataclass(frozen=True, slots=True)
class CgroupPlan:
    """Steps in order, plus notes on requested settings the host cannot apply (to be logged)."""

    steps: tuple[PlanStep, ...] = ()
    notes: tuple[str, ...] = ()

    def writes(self) -> list[tuple[Path, str]]:
        """The Write steps as (file, value), in order (for callers and tests)."""
        return [(s.path, s.value) for s in self.steps if isinstance(s, Write)]

    def __add__(self, other: CgroupPlan) -> CgroupPlan:
        return CgroupPlan(self.steps + other.steps, self.notes + other.notes)


@dataclass(frozen=True, slots=True)
class AppliedPlan:
    """What applying changed: the directories it created, top first."""

    created: tuple[Path, ...]


def os_error(exc: OSError, action: str) -> EngineError:
    """A typed engine error for a failed cgroupfs operation, naming file, value and errno."""
    text = f"{action}: {exc.strerror or exc}"
    if exc.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW):
        return InvalidArgument(f"kernel refused {text}")
    if exc.errno == errno.ENOENT:
        return NotFound(f"{text} (cgroup or controller not present)")
    if exc.errno == errno.EBUSY:
        return FailedPrecondition(f"{text} (cgroup busy)")
    if exc.errno == errno.ENOSPC:
        return FailedPrecondition(f"{text} (no cpus/mems or limit reached)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(text)
    return Internal(text)


def _enable(fs: CgroupFs, step: EnableControllers) -> None:
    available = fs.read(step.directory / "cgroup.controllers").split()
    enabled = set(fs.read(step.directory / "cgroup.subtree_control").split())
    missing = [c for c in step.controllers if c in available and c not in enabled]
    if missing:
        value = " ".join(f"+{c}" for c in missing)
        try:
            fs.write(step.directory / "cgroup.subtree_control", value)
        except OSError as exc:
            raise os_error(exc, f"enabling {value!r} in {step.directory}") from exc


def _inherit_cpuset(fs: CgroupFs, step: InheritCpuset) -> None:
    for name in ("cpuset.cpus", "cpuset.mems"):
        own = step.directory / name
        if fs.read(own).strip():
            continue
        inherited = fs.read(step.directory.parent / name).strip()
        try:
            fs.write(own, inherited)
        except OSError as exc:
            raise os_error(exc, f"writing {inherited!r} to {own}") from exc


def _apply_step(fs: CgroupFs, step: PlanStep, created: list[Path]) -> None:
    if isinstance(step, Mkdir):
        try:
            if fs.mkdir(step.path):
                created.append(step.path)
        except OSError as exc:
            raise os_error(exc, f"creating cgroup {step.path}") from exc
    elif isinstance(step, Write):
        try:
            fs.write(step.path, step.value)
        except OSError as exc:
            raise os_error(exc, f"writing {step.value!r} to {step.path}") from exc
    elif isinstance(step, EnableControllers):
        _enable(fs, step)
    else:
        _inherit_cpuset(fs, step)


def apply_plan(fs: CgroupFs, plan: CgroupPlan) -> AppliedPlan:
    """Perform ``plan``'s steps in order; stop at the first failure.

    On failure, directories this call created are removed again (deepest first) before the
    typed error is raised, so a failed create leaves nothing behind. Writes to directories
    that existed before are not undone (the kernel has no transaction to roll back).
    """
    for note in plan.notes:
        log.warning("cgroup setting not applied: %s", note)
    created: list[Path] = []
    try:
        for step in plan.steps:
            try:
                _apply_step(fs, step, created)
            except OSError as exc:  # a read inside a reading step
                raise os_error(exc, f"reading for {step}") from exc
    except EngineError:
        for path in reversed(created):
            try:
                fs.rmdir(path)
            except OSError:
                log.exception("cgroup rollback: could not remove %s", path)
        raise
    return AppliedPlan(tuple(created))
