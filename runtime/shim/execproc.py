"""An exec process (ExecSync, Exec) in a running container: set up where the container cannot
see it, then spawned into the container's PID namespace already inside everything.

    shim ── fork (in the shim's own PID namespace: invisible to every container) ──▶ set-up
              child: not dumpable, stdio on 0-2, every other fd closed, the container's
              cgroups and limits (oom_score_adj, rlimits), setns(pidfd of the container's
              process, all its namespaces at once), credentials, capabilities, working
              directory, seccomp; reports "spawning", closes its last pipe ──▶
              posix_spawn (vfork: no copy of the interpreter) ──▶ the exec process, in the
              container's PID namespace, which execve()s at once

A process the runtime is still setting up must not be reachable from the container: a
container with CAP_SYS_PTRACE passes every ptrace check (uid, PR_SET_DUMPABLE, capability
subset) against what it can see, and one that runs as the process's uid needs only a
dumpable target (CVE-2016-9962). Before this, the exec child was forked into the
container's PID namespace and spent milliseconds there as host root in the host's mount
namespace, holding the shim's log file on fds 1-2 and its pipes: /proc/<pid>/root/ was the
node's /. Now the only process the container can see is the spawned one, from its clone to
its execve (microseconds): its root and working directory are the container's, its
credentials and capabilities the exec's, its fds exactly 0-2 (the exec's stdio), and its
/proc/<pid>/exe is the interpreter, which the kernel does not open for writing while it runs
(ETXTBSY; runc copies itself to a memfd against CVE-2019-5736 for the same reason).

The set-up child tells the shim nothing over a pipe once the exec process exists (no pipe
of the shim is left for it to inherit): it signals the shim (SIGCHLD) and waits; the shim
reads the exec process's pid from the kernel (``/proc/<child>/task/<child>/children``),
tracks it, and kills the set-up child; the exec process is reparented to the shim (child
subreaper). A failed spawn ends the set-up child with ``SPAWN_FAILED + errno``.

A tty exec needs a session of its own with the pty as controlling terminal, which only the
process itself can take (TIOCSCTTY): it is forked instead of spawned (a few hundred
microseconds more), takes it, and execve()s.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
from typing import NoReturn

from runtime.linux import libc
from runtime.model.launch import LaunchSpec, ProcessSpec
from runtime.shim.init import (
    _TIOCSCTTY,
    apply_apparmor,
    apply_oom_score_adj,
    child_guard,
    close_fds_except,
    enter_process,
    join_cgroups,
    reset_signals,
)

#: exit status of a set-up child whose spawn failed: SPAWN_FAILED + errno (errno < 134)
SPAWN_FAILED = 64
#: signals an exec process starts with at their default action (not SIGKILL/SIGSTOP)
_ALL_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}

NAMESPACES = (
    ("user", libc.CLONE_NEWUSER), ("mnt", libc.CLONE_NEWNS), ("pid", libc.CLONE_NEWPID),
    ("net", libc.CLONE_NEWNET), ("ipc", libc.CLONE_NEWIPC), ("uts", libc.CLONE_NEWUTS),
    ("cgroup", libc.CLONE_NEWCGROUP),
)


def namespaces_to_join(pid: int, proc_dir: str = "/proc") -> int:
    """CLONE_NEW* flags of ``pid``'s namespaces that are not the caller's (setns into one's
    own user namespace is EINVAL). ``pid`` must be a child the caller has not reaped, so the
    number cannot name another process. OSError (ENOENT) when it has exited."""
    flags = 0
    for name, flag in NAMESPACES:
        theirs = os.stat(f"{proc_dir}/{pid}/ns/{name}")
        ours = os.stat(f"{proc_dir}/self/ns/{name}")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            flags |= flag
    return flags


def children_of(pid: int, proc_dir: str = "/proc") -> list[int]:
    """The children of ``pid`` (a process of ours that is waiting), from the kernel."""
    try:
        with open(f"{proc_dir}/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def find_executable(name: str, path: str) -> str:
    """``name`` as execvp(3) would run it: as given when it holds a "/", else the first
    regular, executable file of that name in the ``path`` directories. OSError (ENOENT:
    "executable file not found in $PATH", or the error of the last candidate)."""
    if "/" in name:
        return name
    error: OSError | None = None
    for d in path.split(":"):
        candidate = os.path.join(d or ".", name)
        try:
            st = os.stat(candidate)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                error = exc
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        error = OSError(errno.EACCES, "permission denied")
    if error is not None:
        raise OSError(error.errno, f"exec: {name!r}: {error.strerror}")
    raise OSError(errno.ENOENT, f"exec: {name!r}: executable file not found in $PATH")


def run_exec(
    spec: LaunchSpec, container_pidfd: int, ns_flags: int, report_fd: int, stdio: tuple[int, int, int]
) -> NoReturn:
    """The set-up child (see the module docstring), forked by the shim in its own PID
    namespace. ``container_pidfd``: a pidfd of the container's process, taken by the shim
    while it was its unreaped child; ``ns_flags``: :func:`namespaces_to_join` of it."""

    def body() -> None:
        libc.set_pdeathsig(signal.SIGKILL)  # the shim gone: no orphan set-up child
        reset_signals()
        close_fds_except({report_fd, container_pidfd, *stdio})
        # the exec's stdio on 0-2 at once: the shim's own (its log file) must not reach it
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        for fd in set(stdio) - {0, 1, 2}:
            os.close(fd)
        proc = spec.process
        join_cgroups(spec.cgroup_procs)
        # as host root, before the user namespace: lowering oom_score_adj and raising hard
        # rlimits need CAP_SYS_RESOURCE there (kernel); /proc/self is still ours
        _apply_limits(proc)
        apply_apparmor(proc.apparmor_profile)  # takes effect at the exec process's execve
        # every namespace of that very process at once (kernel >= 5.8: setns on a pidfd);
        # the PID namespace applies to our children: the exec process
        libc.setns(container_pidfd, ns_flags)
        os.close(container_pidfd)
        env = enter_process(proc, apparmor=False)
        libc.set_pdeathsig(signal.SIGKILL)  # the uid change cleared it (kernel: commit_creds)
        path = find_executable(proc.args[0], env.get("PATH", ""))
        _write_all(report_fd, b"spawning\n")
        os.close(report_fd)
        if proc.tty:
            _spawn_tty(path, proc, env)
        else:
            _spawn(path, proc, env)
        while True:
            # Stopping notifies the shim (SIGCHLD), which needs no permission of ours to
            # signal it; it reads our child from the kernel, then kills us.
            os.kill(os.getpid(), signal.SIGSTOP)

    child_guard(report_fd, body)


def _apply_limits(proc: ProcessSpec) -> None:
    import resource

    apply_oom_score_adj(proc.oom_score_adj)
    for rl in proc.rlimits:
        resource.setrlimit(rl.resource, (rl.soft, rl.hard))


def _spawn(path: str, proc: ProcessSpec, env: dict[str, str]) -> int:
    try:
        return os.posix_spawn(path, list(proc.args), env, setsid=True, setsigmask=(), setsigdef=_ALL_SIGNALS)
    except OSError as exc:
        os._exit(SPAWN_FAILED + (exc.errno or errno.EIO))


def _spawn_tty(path: str, proc: ProcessSpec, env: dict[str, str]) -> int:
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        os.setsid()
        fcntl.ioctl(0, _TIOCSCTTY, 0)
        reset_signals()
        os.execve(path, list(proc.args), env)
    except BaseException as exc:
        text = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            os.write(2, f"exec: {proc.args[0]!r}: {text}\r\n".encode(errors="replace"))
        os._exit(127 if isinstance(exc, OSError) and exc.errno == errno.ENOENT else 126)
    os._exit(126)  # not reached: execve does not return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
