"""The last step of a process the runtime sets up out of a container's sight: the set-up
child forks the final process into the container's PID namespace, that one execve()s.

    shim ── fork (in the shim's own PID namespace) ──▶ set-up child: namespaces (its PID
              namespace only for its children: setns(CLONE_NEWPID)), mounts, root,
              credentials, capabilities, working directory, seccomp, not dumpable ──▶
              fork_final ──▶ the final process, in the container's PID namespace:
              setsid (and its tty), default signals, execve

Used for exec processes (runtime.shim.execproc) and, where the kernel allows it, for a
container's process in a PID namespace other containers already live in (a pod-shared one,
or a TARGET container's: runtime.shim.init).

Why a plain fork, not posix_spawn: posix_spawn is clone(CLONE_VM | CLONE_VFORK), so the
child shares its memory with the set-up child until the execve. The child is visible in the
container's PID namespace from its clone, and a container holding CAP_SYS_PTRACE in the
initial user namespace passes every ptrace check against what it can see (non-dumpable or
not): it could attach to the vfork child and write the shared memory (stack, interpreter
state) of the set-up child, which lives in the shim's PID namespace and may hold
CAP_SYS_PTRACE / CAP_KILL there, and so run code in the node's PID namespace once the set-up
child resumes. A fork gives the final process its own copy: taking it over before its execve
yields a process with the container's namespaces, root, credentials, capabilities and
seccomp filter, nothing more. (The copy holds what the shim's memory holds: the pod's own
launch specs; a container that can ptrace the pod's processes reads their environments
anyway.)

The final process holds nothing of the runtime: the set-up child closes its last pipe to
the shim before the fork, so the final process has its stdio on 0-2 and no other
descriptor. After the fork the set-up child does nothing the final process could influence:
it stops itself (SIGSTOP, which notifies the shim); the shim reads the final process's pid
from the kernel (:func:`children_of`), tracks it, and kills the set-up child; the final
process is reparented to the shim (a child subreaper). So the shim learns nothing from the
final process but its pid and its exit: what could not be executed is found before the fork
(:func:`find_executable`, as the process's user in its root); an execve that fails anyway
(a bad ELF or script interpreter) writes "exec: 'name': why" on the process's stderr and
exits 127 (not found) or 126, as a shell does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
from collections.abc import Mapping, Sequence
from typing import NoReturn

_TIOCSCTTY = 0x540E
#: signals the final process starts with at their default action (SIGKILL/SIGSTOP have no other)
ALL_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def find_executable(name: str, path: str) -> str:
    """``name`` as execvp(3) would run it, checked before anything is forked: as given when it
    holds a "/", else the first of that name in the ``path`` directories; a regular file
    the caller may execute (access(2): X_OK, also refused on a noexec mount). OSError
    ("exec: 'name': executable file not found in $PATH", or the error of the last candidate)."""
    candidates = [name] if "/" in name else [os.path.join(d or ".", name) for d in path.split(":")]
    error: OSError | None = None
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR) or "/" in name:
                error = exc
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        error = OSError(errno.EACCES, "permission denied")
    if error is not None:
        raise OSError(error.errno, f"exec: {name!r}: {(error.strerror or '').lower()}")
    raise OSError(errno.ENOENT, f"exec: {name!r}: executable file not found in $PATH")


def children_of(pid: int, proc_dir: str = "/proc") -> list[int]:
    """The children of ``pid`` (a process of ours that is waiting), from the kernel."""
    try:
        with open(f"{proc_dir}/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def fork_final(path: str, args: Sequence[str], env: Mapping[str, str], *, tty: bool) -> NoReturn:
    """The set-up child's last act (see the module docstring): fork the final process, which
    execve()s ``path``; then stop until the shim kills us.

    Preconditions: single-threaded; already everything the process must be (namespaces, the
    PID namespace for children, root, working directory, credentials, capabilities,
    seccomp, not dumpable); stdio on 0-2 and no other descriptor. When the fork fails (a
    seccomp profile without clone) we exit 126 after saying so on stderr."""
    try:
        pid = os.fork()
    except OSError as exc:
        _fail(f"exec: {args[0]!r}: fork: {exc.strerror}", 126, tty)
    if pid == 0:
        _final(path, args, env, tty)
    # Nothing below depends on the child: whatever it does before its execve cannot reach us.
    while True:
        # Stopping notifies the shim (SIGCHLD), which needs no permission of ours to signal
        # it; it reads our child from the kernel, then kills us.
        os.kill(os.getpid(), signal.SIGSTOP)


def _final(path: str, args: Sequence[str], env: Mapping[str, str], tty: bool) -> NoReturn:
    try:
        # a session of its own; a tty becomes its controlling terminal (only the session
        # leader itself can take one: TIOCSCTTY)
        os.setsid()
        if tty:
            fcntl.ioctl(0, _TIOCSCTTY, 0)
        for sig in ALL_SIGNALS:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.execve(path, list(args), dict(env))
    except BaseException as exc:
        text = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        _fail(f"exec: {args[0]!r}: {text}", 127 if isinstance(exc, OSError) and exc.errno == errno.ENOENT else 126,
              tty)
    os._exit(126)  # not reached: execve does not return


def _fail(message: str, code: int, tty: bool) -> NoReturn:
    with contextlib.suppress(OSError):
        os.write(2, message.replace("\n", " ").encode(errors="replace") + (b"\r\n" if tty else b"\n"))
    os._exit(code)
