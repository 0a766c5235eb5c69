"""pid 1 of a pod-shared PID namespace: reaps orphans, and leaves a container nothing to take.

Every container of a pod that shares its PID namespace sees the holder as pid 1. A
container with CAP_SYS_PTRACE (in the host's user namespace, or in the pod's own) passes
the kernel's ptrace checks against any process it can see (``__ptrace_may_access``:
CAP_SYS_PTRACE overrides the uid match, PR_SET_DUMPABLE and the capability subset), so
/proc/1/{root,cwd,fd,exe,mem} and ptrace-attach are open to it. A holder that stayed as
the shim forked it (host root, every capability, the host's mount namespace, the shim's
stdio) handed such a container the node: /proc/1/root/ was the host's /.

So the child the shim forks confines itself first (:func:`_confine`): stdio on /dev/null,
every other fd closed, a private mount namespace whose only mount is an empty read-only
tmpfs (pivot_root, the old root detached: ``..`` from /proc/1/root stops there), no
capabilities and an empty bounding set, uid/gid nobody (65534) when the namespace maps it,
no_new_privs, not dumpable. Then it execs the pause binary (runtime/shim/pause: a few
hundred bytes of raw system calls, 16 kB of memory where the forked interpreter that used
to stay there cost megabytes) from a sealed memfd the shim made of the configured file
(runtime.shim.pause.binary): /proc/1/exe names that copy, which no pod can write, never a
file of the host. What a container can still reach is that program, with nothing of the
node's open or mounted.
"""

from __future__ import annotations

import contextlib
import os
from typing import NoReturn

from runtime.linux import caps, libc
from runtime.linux import userns as userns_mod
from runtime.shim.init import children_in_pid_ns, close_fds_except, reset_signals
from runtime.shim.pause import binary

NOBODY = 65534
#: argv of the holder: what a container's ps shows as pid 1's command line
ARGV = ("pod-pid-holder",)


def start_pid_holder(pause: str, user_ns: str = "") -> int:
    """Fork the pid 1 of a new PID namespace (the pod-shared one) from the calling shim, the
    pause binary at ``pause`` exec'd from a sealed copy; returns its pid once it is confined
    and exec'ing; FailedPrecondition when the binary is unusable, OSError when the holder
    could not be started.

    With ``user_ns`` (the pod's pinned user namespace) the PID namespace must belong to it,
    so a process inside it must make it: a helper child enters it, unshares the PID
    namespace, forks the holder, reports its pid and exits; the holder is then ours (we are
    the child subreaper)."""
    exe = binary.sealed_copy(pause)
    try:
        return _start(exe, user_ns)
    finally:
        os.close(exe)


def _start(exe: int, user_ns: str) -> int:
    r, w = os.pipe()  # close-on-exec: the holder's exec ends our read with EOF
    try:
        if user_ns:
            helper = os.fork()
            if helper == 0:
                _helper_main(user_ns, exe, r, w)
            pid = 0
        else:
            with children_in_pid_ns(new=True):
                pid = os.fork()
                if pid == 0:
                    os.close(r)
                    _holder_main(exe, w)
            helper = 0
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    os.close(w)
    try:
        chunks = []
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
    finally:
        os.close(r)
        if helper:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(helper, 0)
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    for line in lines:
        if line.startswith("pid ") and line[4:].isdigit():
            pid = int(line[4:])
    error = next((ln[6:] for ln in lines if ln.startswith("error ")), "")
    if "exec" not in lines or error or not pid:
        if pid and not helper:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        raise OSError(0, error or "the pod's PID namespace holder ended without reporting")
    return pid


def _helper_main(user_ns: str, exe: int, r: int, w: int) -> NoReturn:
    try:
        os.close(r)
        libc.set_not_dumpable()
        reset_signals()
        close_fds_except({w, exe})
        userns_mod.enter(user_ns)
        libc.unshare(libc.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            _holder_main(exe, w)
        os.write(w, f"pid {pid}\n".encode())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(w, f"error {exc}\n".encode(errors="replace"))
        os._exit(1)
    os._exit(0)


def _holder_main(exe: int, report_fd: int) -> NoReturn:
    """The holder: confine, report "exec" and exec the pause binary (the report pipe closes
    on exec); "error ..." and exit 1 when either fails."""
    try:
        libc.set_not_dumpable()
        reset_signals()
        close_fds_except({report_fd, exe})
        _confine()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_fd, f"error confining the PID namespace holder: {exc}\n".encode(errors="replace"))
        os._exit(1)
    try:
        os.write(report_fd, b"exec\n")
        # execveat(exe, "", AT_EMPTY_PATH): our root is an empty tmpfs without /proc
        os.execve(exe, list(ARGV), {})
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_fd, f"error executing the pause binary: {exc}\n".encode(errors="replace"))
    os._exit(1)


def _confine() -> None:
    """See the module docstring. Runs in the holder: single-threaded, pid 1 of its namespace."""
    libc.set_process_name("pod-pid-holder")
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    for fd in (0, 1, 2):
        os.dup2(null, fd, inheritable=True)  # the pause binary keeps them (a pid 1 with stdio)
    os.close(null)
    caps.drop_bounding(())  # reads /proc/sys/kernel/cap_last_cap: before /proc goes
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    # /proc exists on every host: the empty tmpfs is stacked on it, in our namespace only
    libc.mount("tmpfs", "/proc", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "size=4k,mode=555")
    os.chdir("/proc")
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)  # the old root, stacked on the new one
    os.chdir("/")
    libc.mount(None, "/", None, libc.MS_REMOUNT | libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
    os.setgroups([])
    try:
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)  # clears the permitted and effective sets
    except OSError:
        # a user namespace that does not map nobody: its root, no capabilities, and none
        # regained by the exec (the bounding set is empty)
        caps.capset((), (), ())
    libc.set_no_new_privs()
    libc.set_not_dumpable()  # a uid change resets it to fs.suid_dumpable
