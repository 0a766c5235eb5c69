"""An exec process (ExecSync, Exec) in a running container: set up where the container cannot
see it, then forked into the container's PID namespace already inside everything.

    shim ── fork (in the shim's own PID namespace: invisible to every container) ──▶ set-up
              child: not dumpable, stdio on 0-2, every other fd closed, the container's
              cgroups and limits (oom_score_adj, rlimits), setns(pidfd of the container's
              process, all its namespaces at once), credentials, capabilities, working
              directory, seccomp; reports "spawning" ──▶ fork (runtime.shim.finalfork: a
              copy of its memory, not shared) ──▶ the exec process, in the container's PID
              namespace, which takes its session (and tty) and execve()s at once

A process the runtime is still setting up must not be reachable from the container: a
container with CAP_SYS_PTRACE passes every ptrace check (uid, PR_SET_DUMPABLE, capability
subset) against what it can see, and one that runs as the process's uid needs only a
dumpable target (CVE-2016-9962). Before this, the exec child was forked into the
container's PID namespace and spent milliseconds there as host root in the host's mount
namespace, holding the shim's log file on fds 1-2 and its pipes: /proc/<pid>/root/ was the
node's /. Now the only process the container can see is the forked one, from its clone to
its execve (about a hundred microseconds): its root and working directory are the
container's, its credentials, capabilities and seccomp filter the exec's, its fds exactly
0-2 (the exec's stdio), its memory a copy (taking it over
reaches nothing of the set-up child, see runtime.shim.finalfork), and its /proc/<pid>/exe is
the interpreter, which the kernel does not open for writing while it runs (ETXTBSY; runc
copies itself to a memfd against CVE-2019-5736 for the same reason).

The set-up child reports "spawning" and closes its pipe to the shim, then forks; the exec
process gets only its stdio. The shim reads the exec process's pid from the kernel
(``/proc/<child>/task/<child>/children``) once the set-up child has stopped after the
fork, tracks it, and kills the set-up child; the exec process is reparented to the shim
(child subreaper). What cannot be executed is found before the fork (ExecSync fails with
the reason); an execve that fails anyway ends the exec process with 126/127 and the reason
on its stderr.
"""

from __future__ import annotations

import os
import signal
from typing import NoReturn

from runtime.linux import libc
from runtime.model.launch import LaunchSpec, ProcessSpec
from runtime.shim.finalfork import find_executable, fork_final
from runtime.shim.init import (
    apply_apparmor,
    apply_oom_score_adj,
    child_guard,
    close_fds_except,
    enter_process,
    join_cgroups,
    reset_signals,
)

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
        os.close(report_fd)  # the exec process gets nothing of ours but its stdio
        fork_final(path, proc.args, env, tty=proc.tty)

    child_guard(report_fd, body)


def _apply_limits(proc: ProcessSpec) -> None:
    import resource

    apply_oom_score_adj(proc.oom_score_adj)
    for rl in proc.rlimits:
        resource.setrlimit(rl.resource, (rl.soft, rl.hard))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
