"""Killing what is left of a container once its main process has exited (the pod shim's side).

A container with a PID namespace of its own needs nothing: the kernel kills every process
of a PID namespace when its pid 1 exits (pid_namespaces(7)). A container that joins one
(the pod-shared namespace, a TARGET container's) or runs in the host's keeps its other
processes: they are reparented to that namespace's pid 1 (the pod's PID holder) and hold
the container's stdout/stderr pipes. containerd's shim kills them when the main process
exits (``ShouldKillAllOnExit``: true unless the spec asks for a new PID namespace, then
``Init.KillAll`` before the TaskExit event), with runc's ``signalAllProcesses``: SIGKILL
through ``cgroup.kill`` (cgroup v2 or the unified hierarchy of a hybrid host, kernel >=
5.14), otherwise freeze the cgroup, signal every pid in it, thaw. So do we
(:meth:`CgroupKiller.kill_all`, called by ``procs.ProcessTable``), and, unlike runc, we
repeat until the cgroup is empty: only then are the pipes the leftovers held closed
(kernel: do_exit closes a task's files before cgroup_exit takes it off cgroup.procs), so
the shim reports the exit at once instead of waiting on them.

Signals go through pidfds: a pid read from cgroup.procs is pinned with pidfd_open(2) and
signalled only if it is still listed afterwards, so a pid that a process of the container
freed and a host process reused meanwhile is never killed (with the freezer, frozen tasks
cannot exit; without it, or when it does not settle, nothing else would stop that race).

Runs in the single-threaded shim: waits are ``asyncio.sleep`` (injected), file access is a
few small cgroupfs reads and writes (:class:`CgroupKillHost`, a temp tree in unit tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime.linux import libc
from runtime.model.launch import NamespaceSpec

log = logging.getLogger("cri_shim.shim")

#: how long the leftovers may take to die before the exit is reported anyway (a task in
#: uninterruptible sleep dies when it wakes); processes then left are logged by pid
KILL_WAIT_SECONDS = 2.0
#: how long a freeze may take to settle before signalling without it (runc: warns, goes on)
FREEZE_WAIT_SECONDS = 0.5
_FIRST_POLL = 0.001
_MAX_POLL = 0.02

FROZEN, THAWED = "FROZEN", "THAWED"
#: errnos of an interface file whose cgroup is gone: ENOENT, or ENODEV when the cgroup was
#: removed while the file was open (kernfs deactivates a removed node's files); with the
#: systemd driver that is common: systemd removes a scope as soon as its last process exits
_GONE = frozenset({errno.ENOENT, errno.ENODEV})


def owns_pid_namespace(ns: NamespaceSpec) -> bool:
    """Whether the process is pid 1 of a PID namespace made for it, which the kernel empties
    when it exits. False for the pod-shared, a TARGET and the host's PID namespace, where
    its other processes outlive it (containerd: ShouldKillAllOnExit is true for those)."""
    return ns.new_pid and not ns.pid and not ns.pid_of


class CgroupKillHost(Protocol):
    """The cgroupfs and process operations of a kill (host paths, pids of our namespace)."""

    def read(self, path: Path) -> str:
        """An interface file's content; OSError (ENOENT once the cgroup is gone, ENODEV when
        it was removed between the open and the read: kernfs of a removed cgroup)."""
        ...

    def write(self, path: Path, value: str) -> None:
        """One write(2) to an existing interface file; OSError."""
        ...

    def is_file(self, path: Path) -> bool: ...

    def child_dirs(self, path: Path) -> list[Path]:
        """The child cgroups of a cgroup directory ([] when it is gone)."""
        ...

    def pin(self, pid: int) -> int:
        """A handle naming the process ``pid`` is now (a pidfd); -1 when there is none."""
        ...

    def kill_pinned(self, handle: int) -> None:
        """SIGKILL the pinned process (nothing when it has exited since)."""
        ...

    def unpin(self, handle: int) -> None: ...


class LinuxCgroupKillHost:
    """The real cgroupfs and pidfds. Holds no state."""

    def read(self, path: Path) -> str:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()

    def write(self, path: Path, value: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # never O_CREAT: a missing file is a missing feature
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def is_file(self, path: Path) -> bool:
        return path.is_file()

    def child_dirs(self, path: Path) -> list[Path]:
        try:
            with os.scandir(path) as it:
                return [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []

    def pin(self, pid: int) -> int:
        try:
            return libc.pidfd_open(pid)
        except OSError:
            return -1  # ESRCH: gone already

    def kill_pinned(self, handle: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(handle, signal.SIGKILL)

    def unpin(self, handle: int) -> None:
        os.close(handle)


@dataclass(frozen=True, slots=True)
class KillPlan:
    """How one container's cgroup is emptied, from the directories of its cgroup.procs files.

    ``watch``: the directory whose cgroup.procs (and its descendants') lists who is left;
    ``kill_file``: its cgroup.kill, when the kernel has one; ``freezer``: the directory
    frozen around a signal round otherwise (v1 ``freezer.state`` or v2 ``cgroup.freeze``)."""

    watch: Path
    kill_file: Path | None = None
    freezer: Path | None = None
    freezer_v2: bool = False

    @property
    def method(self) -> str:
        if self.kill_file is not None:
            return "cgroup.kill"
        return "freezer" if self.freezer is not None else "signals"


def plan_kill(host: CgroupKillHost, procs_files: Sequence[str]) -> KillPlan | None:
    """The plan for a container whose process joined ``procs_files`` (one per v1 hierarchy,
    plus the unified one: runc also takes cgroup.kill from the unified hierarchy of a hybrid
    host). None when it joined no cgroup."""
    dirs = list(dict.fromkeys(Path(f).parent for f in procs_files))
    if not dirs:
        return None
    for d in dirs:
        if host.is_file(d / "cgroup.kill"):
            return KillPlan(watch=d, kill_file=d / "cgroup.kill")
    for d in dirs:
        if host.is_file(d / "freezer.state"):
            return KillPlan(watch=d, freezer=d)
    for d in dirs:
        if host.is_file(d / "cgroup.freeze"):
            return KillPlan(watch=d, freezer=d, freezer_v2=True)
    return KillPlan(watch=dirs[0])


@dataclass(frozen=True, slots=True)
class KillOutcome:
    """What :meth:`CgroupKiller.kill_all` did: ``rounds`` of killing (0: nobody was left),
    and the pids still listed when it gave up (empty: the cgroup is empty, or gone)."""

    method: str
    rounds: int
    left: tuple[int, ...] = ()


class CgroupKiller:
    """Empties a container's cgroup with SIGKILL. Construction does no I/O."""

    def __init__(
        self, host: CgroupKillHost | None = None, *, timeout: float = KILL_WAIT_SECONDS,
        freeze_timeout: float = FREEZE_WAIT_SECONDS, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host: CgroupKillHost = host if host is not None else LinuxCgroupKillHost()
        self.timeout = timeout
        self.freeze_timeout = freeze_timeout
        self._sleep = sleep
        self._monotonic = monotonic

    async def kill_all(self, procs_files: Sequence[str]) -> KillOutcome:
        """SIGKILL every process in the cgroup (and below it), again until none is listed or
        ``timeout`` has passed; returns what is left then (logged). A cgroup that is gone, or
        goes meanwhile (the systemd driver's scope ends with its last process), is empty.
        Never raises for cgroupfs errors: they are logged, and the pids left are reported."""
        plan = plan_kill(self.host, procs_files)
        if plan is None:
            return KillOutcome("", 0)
        deadline = self._monotonic() + self.timeout
        delay = _FIRST_POLL
        rounds = 0
        while True:
            try:
                left = self.pids(plan.watch)
            except OSError as exc:  # not a gone cgroup (pids() takes those as empty)
                log.error("shim: reading the processes of cgroup %s: %s", plan.watch, exc)
                return KillOutcome(plan.method, rounds)
            if not left:
                return KillOutcome(plan.method, rounds)
            if self._monotonic() >= deadline:
                log.warning("shim: processes %s of cgroup %s outlived SIGKILL for %gs", left[:20], plan.watch,
                            self.timeout)
                return KillOutcome(plan.method, rounds, tuple(left))
            rounds += 1
            try:
                if plan.kill_file is not None:
                    # kernel >= 5.14: the whole subtree, forks in progress included
                    self.host.write(plan.kill_file, "1")
                else:
                    await self._signal_round(plan)
            except OSError as exc:
                if exc.errno not in _GONE:  # the cgroup went: the next look says so
                    log.error("shim: killing the processes of cgroup %s: %s", plan.watch, exc)
            await self._sleep(delay)
            delay = min(delay * 2, _MAX_POLL)

    def pids(self, directory: Path) -> list[int]:
        """The pids in ``directory``'s cgroup.procs and its descendants' ([] once gone)."""
        pids: list[int] = []
        for d in [directory, *self._descendants(directory)]:
            try:
                text = self.host.read(d / "cgroup.procs")
            except OSError as exc:
                if exc.errno in _GONE:
                    continue
                raise
            pids.extend(int(tok) for tok in text.split())
        return pids

    def _descendants(self, directory: Path) -> list[Path]:
        out: list[Path] = []
        for child in self.host.child_dirs(directory):
            out.append(child)
            out.extend(self._descendants(child))
        return out

    async def _signal_round(self, plan: KillPlan) -> None:
        """runc's signalAllProcesses: freeze (so nothing forks or exits between our read of
        the list and the kill), SIGKILL each listed process through a pidfd, thaw (v1:
        frozen tasks die only once thawed)."""
        if plan.freezer is None:
            self._kill_listed(plan.watch)
            return
        try:
            if not await self._freeze(plan):
                log.warning("shim: cgroup %s did not freeze within %gs; signalling without freezing",
                            plan.freezer, self.freeze_timeout)
            self._kill_listed(plan.watch)
        finally:
            self._thaw(plan)  # also when cancelled or failed half-way: never leave it frozen

    def _kill_listed(self, directory: Path) -> None:
        pinned = [(pid, self.host.pin(pid)) for pid in self.pids(directory)]
        try:
            # still listed after the pin: the pidfd names a process of this cgroup (a pid
            # reused by then would belong to a process outside it and not be listed)
            still = set(self.pids(directory))
            for pid, handle in pinned:
                if handle >= 0 and pid in still:
                    self.host.kill_pinned(handle)
        finally:
            for _pid, handle in pinned:
                if handle >= 0:
                    self.host.unpin(handle)

    async def _freeze(self, plan: KillPlan) -> bool:
        assert plan.freezer is not None
        d = plan.freezer
        deadline = self._monotonic() + self.freeze_timeout
        delay = _FIRST_POLL
        while True:
            if plan.freezer_v2:
                self.host.write(d / "cgroup.freeze", "1")
                if "frozen 1" in self.host.read(d / "cgroup.events").splitlines():
                    return True
            else:
                # kernel (cgroup-v1/freezer-subsystem.rst): FREEZING until every task is
                # frozen; writing FROZEN again retries the tasks that were not
                self.host.write(d / "freezer.state", FROZEN)
                if self.host.read(d / "freezer.state").strip() == FROZEN:
                    return True
            if self._monotonic() >= deadline:
                return False
            await self._sleep(delay)
            delay = min(delay * 2, _MAX_POLL)

    def _thaw(self, plan: KillPlan) -> None:
        assert plan.freezer is not None
        if plan.freezer_v2:
            self.host.write(plan.freezer / "cgroup.freeze", "0")
        else:
            self.host.write(plan.freezer / "freezer.state", THAWED)
