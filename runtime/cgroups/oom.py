"""Learning that a container was OOM-killed.

Recommended (simple, exact, no file descriptors): the pod shim reads
``driver.oom_kill_count(path)`` when it starts a container (the baseline; 0 for a fresh
cgroup) and again the moment the container's main process exits, *before* the cgroup is
removed, and reports reason ``OOMKilled`` when :func:`oom_killed` says the counter grew and
the process died of SIGKILL. The signal check matters: the counter is cumulative, so an
OOM-killed helper process followed by a clean SIGTERM exit of the main process must not be
reported as OOMKilled (kubernetes/kubernetes#140718; containerd#6323 chose ``oom_kill``
over ``oom`` for the same reason: ``oom`` also counts OOMs that killed nothing).

For live notification (events, metrics) :class:`OomWatcher` gives one pollable fd, to be
registered in the shim's selector for reading:

- v1: an eventfd registered through cgroup.event_control on memory.oom_control (the kernel
  signals it on each OOM in the cgroup and when the cgroup is removed);
- v2: memory.events itself, polled for POLLPRI (kernfs notifies on every counter change).

Both are watched by a private epoll, whose fd the shim's selector watches.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass

from runtime.cgroups.host import CgroupHost
from runtime.cgroups.parse import flat_keyed
from runtime.cgroups.paths import check_cgroup_path, under
from runtime.errors import AlreadyExists, InvalidArgument
from runtime.hostinfo import CgroupMode


def oom_killed(before: int | None, after: int | None, *, killed_by_sigkill: bool = True) -> bool:
    """True when the OOM killer killed in the cgroup between two counter reads and the
    process died of SIGKILL (pass False for any other exit to get False)."""
    if after is None or not killed_by_sigkill:
        return False
    return after > (before or 0)


@dataclass(frozen=True, slots=True)
class OomEvent:
    """The OOM killer killed ``new_kills`` processes in the cgroup watched as ``key``."""

    key: str
    oom_kill: int
    new_kills: int


@dataclass(slots=True)
class _Watch:
    key: str
    counter_fd: int  # the file the oom_kill counter is read from
    poll_fd: int  # the fd registered in the epoll (eventfd on v1, counter_fd on v2)
    last: int


def _read_counter(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 8192).decode(errors="replace")
    except OSError:
        return None  # the cgroup is gone
    return flat_keyed(text).get("oom_kill")


class OomWatcher:
    """Watches cgroups for OOM kills; single-threaded, non-blocking, one fd for a selector.

    Construction does no I/O; the epoll is created by the first :meth:`watch`. Call
    :meth:`close` when done (it closes every fd it opened).
    """

    def __init__(self, host: CgroupHost) -> None:
        self.host = host
        self._epoll: select.epoll | None = None
        self._by_key: dict[str, _Watch] = {}
        self._by_fd: dict[int, _Watch] = {}

    def _poller(self) -> select.epoll:
        if self._epoll is None:
            self._epoll = select.epoll()
        return self._epoll

    def fileno(self) -> int:
        """The fd to register for reading in the caller's selector."""
        return self._poller().fileno()

    def watch(self, key: str, path: str) -> int:
        """Start watching cgroup ``path`` under ``key``; returns the current oom_kill count.

        Raises AlreadyExists for a key in use, InvalidArgument when the host has no memory
        controller or no oom_kill counter, OSError when the cgroup is missing.
        """
        if key in self._by_key:
            raise AlreadyExists(f"OOM watch {key!r} exists")
        checked = check_cgroup_path(path)
        if self.host.mode is CgroupMode.V2:
            return self._watch_v2(key, checked)
        return self._watch_v1(key, checked)

    def _watch_v2(self, key: str, path: str) -> int:
        if "memory" not in self.host.controllers or self.host.unified is None:
            raise InvalidArgument("no memory controller: OOM kills cannot be watched")
        fd = os.open(under(self.host.unified, path) / "memory.events", os.O_RDONLY | os.O_CLOEXEC)
        return self._add(key, fd, fd, select.EPOLLPRI)

    def _watch_v1(self, key: str, path: str) -> int:
        memory = self.host.v1_mounts.get("memory")
        if memory is None or not self.host.oom_kill_counter:
            raise InvalidArgument("no v1 memory hierarchy with an oom_kill counter (kernel >= 4.13)")
        d = under(memory, path)
        control = os.open(d / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        efd = -1
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            reg = os.open(d / "cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(reg, f"{efd} {control}".encode())
            finally:
                os.close(reg)
            return self._add(key, control, efd, select.EPOLLIN)
        except BaseException:
            os.close(control)
            if efd >= 0:
                os.close(efd)
            raise

    def _add(self, key: str, counter_fd: int, poll_fd: int, mask: int) -> int:
        w = _Watch(key, counter_fd, poll_fd, _read_counter(counter_fd) or 0)
        self._poller().register(poll_fd, mask)
        self._by_key[key] = w
        self._by_fd[poll_fd] = w
        return w.last

    def unwatch(self, key: str) -> None:
        """Stop watching ``key``; unknown keys are ignored (idempotent)."""
        w = self._by_key.pop(key, None)
        if w is None:
            return
        del self._by_fd[w.poll_fd]
        if self._epoll is not None:
            try:
                self._epoll.unregister(w.poll_fd)
            except OSError:
                pass
        os.close(w.poll_fd)
        if w.counter_fd != w.poll_fd:
            os.close(w.counter_fd)

    def poll(self, timeout: float = 0.0) -> list[OomEvent]:
        """Collect OOM kills since the last call; returns only cgroups whose oom_kill grew.

        Non-blocking by default. A readiness that is not an OOM kill (v2: another counter
        in memory.events; v1: the cgroup was removed) is consumed and not reported.
        """
        if self._epoll is None:
            return []
        events: list[OomEvent] = []
        for fd, _mask in self._epoll.poll(timeout):
            w = self._by_fd.get(fd)
            if w is None:
                continue
            if w.poll_fd != w.counter_fd:
                try:
                    os.eventfd_read(w.poll_fd)
                except BlockingIOError:
                    pass
            now = _read_counter(w.counter_fd)
            if now is None:
                self.unwatch(w.key)  # cgroup removed: nothing more will come
                continue
            if now > w.last:
                events.append(OomEvent(w.key, now, now - w.last))
            w.last = now
        return events

    def keys(self) -> list[str]:
        return sorted(self._by_key)

    def close(self) -> None:
        for key in list(self._by_key):
            self.unwatch(key)
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
