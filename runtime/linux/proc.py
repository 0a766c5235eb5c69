"""Process identity from /proc: a process is its pid **and** its start time.

A pid alone can be reused after the process exits; runc and containerd store the start
time (field 22 of /proc/PID/stat, in clock ticks since boot) with the pid, and so do we.
"""

from __future__ import annotations

import os
import signal

from runtime.model.process import ProcessRef

__all__ = ["ProcessRef", "alive", "boot_id", "clock_ticks", "is_zombie", "open_pid_namespace", "pidfd_pid", "ref_of",
           "start_time_of", "state_of"]


def alive(ref: ProcessRef) -> bool:
    """True while this very process exists (not a later one that reused the pid)."""
    current = start_time_of(ref.pid)
    return current is not None and current == ref.start_time


def start_time_of(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when no such process exists.

    A zombie still has its start time: it is dead for every purpose but reaping, so callers
    that care check :func:`is_zombie` as well.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and ')' : split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    # rest[0] is field 3 (state); field 22 is rest[19].
    return int(rest[19])


def state_of(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, D, Z, ...) or None when absent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def is_zombie(pid: int) -> bool:
    return state_of(pid) == "Z"


def ref_of(pid: int) -> ProcessRef:
    """The ProcessRef of a live pid; raises ProcessLookupError when it is gone."""
    st = start_time_of(pid)
    if st is None:
        raise ProcessLookupError(pid, f"no process {pid}")
    return ProcessRef(pid, st)


def boot_id() -> str:
    """The kernel's boot id: records from an earlier boot have no live processes."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def pidfd_pid(pidfd: int) -> int:
    """The pid, in our PID namespace, of the process ``pidfd`` refers to (the ``Pid:`` line
    of its fdinfo, Linux >= 5.3); ProcessLookupError once it has exited (the kernel shows -1)
    or when it is not visible from here (0)."""
    with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
        for line in f:
            if line.startswith(b"Pid:"):
                pid = int(line.split()[1])
                if pid <= 0:
                    raise ProcessLookupError(f"the process of pidfd {pidfd} has exited")
                return pid
    raise OSError(f"fd {pidfd} is not a pidfd (no Pid: in its fdinfo)")


def open_pid_namespace(pidfd: int, pid: int | None = None) -> int:
    """An O_RDONLY fd (close-on-exec, the caller's to close) of the PID namespace of the
    process ``pidfd`` refers to, without the pid-reuse race of a ``/proc/<pid>/ns/pid`` path:
    the pidfd pins that process's identity, the namespace file is opened through its pid
    (``pid``, by default the pidfd's own, :func:`pidfd_pid`), and only then is the pidfd asked
    whether its process is still alive (pidfd_send_signal(2) with signal 0). While it lives
    its pid is no other process's, so the file opened was its own; if it had exited and the
    pid had gone to another process before the open, the check fails. ProcessLookupError
    when the process has exited (or was never ``pid``'s)."""
    if pid is None:
        pid = pidfd_pid(pidfd)
    try:
        fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid}") from None
    try:
        signal.pidfd_send_signal(pidfd, 0)  # kernel: ESRCH once the pidfd's process has exited
    except BaseException:
        os.close(fd)
        raise
    return fd
