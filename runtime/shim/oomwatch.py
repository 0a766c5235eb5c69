"""OOM-kill counters of the pod's containers, read the moment the kernel bumps them.

The shim decides "OOMKilled" when a container's main process died of SIGKILL after its
memory cgroup's ``oom_kill`` counter grew (``procs.oom_kill_count``, read at create and at
exit). With the systemd cgroup driver that second read can come too late: once the last
process of a scope is gone, systemd stops the scope and removes its cgroup, racing the
shim's SIGCHLD (cri-o#7035; containerd skips critest's OOM test under systemd for it).

So on cgroup v2 the shim also watches each container's ``memory.events`` for POLLPRI
(kernfs notifies on every counter change, cgroup-v2.rst "memory.events") and keeps the
last ``oom_kill`` value it saw: the kill is counted when the victim is chosen, while it
still sits in the cgroup, well before the cgroup can be removed. At exit the shim uses
the larger of that and a fresh read. One epoll, registered in the shim's loop, holds the
watches; v1 (memory.oom_control, no POLLPRI) keeps the plain reads.

That alone still lost one OOM kill in three hogs on the node VM: the kernel rate-limits
cgroup file notifications (one per 20 ms, cgroup_file_notify), so the wake-up for the
``oom_kill`` bump can trail the ``max``/``oom`` ones, the exit, and systemd's removal of
the cgroup; and the exit may be handled before a wake-up already queued. So at exit
:meth:`OomCounters.killed` first handles pending wake-ups, reads afresh, and, when the
container's cgroup is gone, falls back to its parent's counter (the pod's: v2 counters are
hierarchical) against the value it had when the watch began: a kill in the pod during
the container's life, with the container dead of SIGKILL, is taken as its OOM kill (only
another container of the same pod OOM-killed meanwhile could make that wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select

log = logging.getLogger("cri_shim.shim")


def read_oom_kill(fd: int) -> int | None:
    """``oom_kill`` from an open memory.events; None when the cgroup is gone or it is absent."""
    try:
        text = os.pread(fd, 8192, 0).decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def read_count(memory_cgroup: str) -> int | None:
    """The ``oom_kill`` of a v2 cgroup's memory.events; None when it cannot be read."""
    if not memory_cgroup:
        return None
    try:
        fd = os.open(os.path.join(memory_cgroup, "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return read_oom_kill(fd)
    finally:
        os.close(fd)


class OomCounters:
    """Live ``oom_kill`` counters by key (container id). Single-threaded; construction does
    no I/O: the epoll is made, and registered in the running loop, by the first watch."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._fds: dict[str, int] = {}
        self._keys: dict[int, str] = {}
        self._latest: dict[str, int] = {}
        self._parents: dict[str, tuple[str, int]] = {}

    def watch(self, key: str, memory_cgroup: str) -> None:
        """Watch ``<memory_cgroup>/memory.events`` under ``key`` (replacing an older watch).
        Nothing happens where there is no such file (cgroup v1, no memory controller)."""
        self.unwatch(key)
        if not memory_cgroup:
            return
        try:
            fd = os.open(os.path.join(memory_cgroup, "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        first = read_oom_kill(fd)
        if first is not None:
            self._latest[key] = first
        parent = os.path.dirname(memory_cgroup.rstrip("/"))
        parent_count = read_count(parent)
        if parent_count is not None:
            self._parents[key] = (parent, parent_count)
        try:
            self._poller().register(fd, select.EPOLLPRI)
        except OSError:  # not a kernfs file (tests) or no epoll: fresh reads only
            os.close(fd)
            return
        self._fds[key] = fd
        self._keys[fd] = key

    def latest(self, key: str) -> int | None:
        """The last ``oom_kill`` value seen for ``key`` (None if never read)."""
        return self._latest.get(key)

    def killed(self, key: str, memory_cgroup: str, base: int) -> bool:
        """Whether ``key``'s cgroup counted an OOM kill above ``base``: pending wake-ups, a
        fresh read, the last value seen, and when the cgroup is gone its parent's counter
        (see the module's docstring). Never raises."""
        self.drain()
        fresh = read_count(memory_cgroup)
        if max(fresh or 0, self._latest.get(key) or 0) > base:
            return True
        if fresh is None and key in self._parents:
            parent, before = self._parents[key]
            now = read_count(parent)
            return now is not None and now > before
        return False

    def drain(self) -> None:
        """Handle the wake-ups the kernel has queued but the loop has not yet delivered."""
        if self._epoll is not None:
            self._ready()

    def refresh(self, key: str) -> None:
        """Read ``key``'s counter now (what a POLLPRI wake-up does)."""
        fd = self._fds.get(key)
        if fd is None:
            return
        value = read_oom_kill(fd)
        if value is not None:
            self._latest[key] = max(value, self._latest.get(key, 0))

    def unwatch(self, key: str) -> None:
        """Stop watching ``key`` and forget its counter (idempotent)."""
        self._latest.pop(key, None)
        self._parents.pop(key, None)
        fd = self._fds.pop(key, None)
        if fd is None:
            return
        self._keys.pop(fd, None)
        if self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        os.close(fd)

    def _poller(self) -> select.epoll:
        if self._epoll is None:
            self._epoll = select.epoll()
            asyncio.get_running_loop().add_reader(self._epoll.fileno(), self._ready)
        return self._epoll

    def _ready(self) -> None:
        assert self._epoll is not None
        for fd, _mask in self._epoll.poll(0):
            key = self._keys.get(fd)
            if key is not None:
                self.refresh(key)
