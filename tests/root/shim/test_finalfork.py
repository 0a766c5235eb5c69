"""The exec process is forked from its set-up child with a memory of its own, never spawned
with CLONE_VM (posix_spawn's vfork): a container that ptrace-attaches it before its execve
must not be able to write the memory of the set-up child, which lives in the node's PID
namespace (runtime.shim.finalfork).

The test runs the real set-up child (``execproc.run_exec``) under ptrace with fork, vfork
and clone events traced: the kernel stops it at the very clone that makes the exec process,
before that one runs any code, and kcmp(2) tells whether the two share their memory."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Iterator

import pytest

from runtime.linux import libc
from runtime.model.launch import LaunchSpec, NamespaceSpec, ProcessSpec
from runtime.shim import execproc

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

PTRACE_TRACEME = 0
PTRACE_CONT = 7
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_O_TRACEFORK, PTRACE_O_TRACEVFORK, PTRACE_O_TRACECLONE = 0x2, 0x4, 0x8
PTRACE_O_EXITKILL = 0x100000
EVENTS = {1: "fork", 2: "vfork", 3: "clone"}
WALL = 0x40000000
KCMP_VM = 1
KCMP_SYSCALL = {"x86_64": 312, "aarch64": 272}
LIBC = ctypes.CDLL(None, use_errno=True)


def ptrace(request: int, pid: int, addr: int = 0, data: int | ctypes.c_ulong = 0) -> int:
    arg = ctypes.byref(data) if isinstance(data, ctypes.c_ulong) else ctypes.c_void_p(data)
    res = int(LIBC.ptrace(ctypes.c_long(request), ctypes.c_long(pid), ctypes.c_void_p(addr), arg))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")
    return res


def share_memory(a: int, b: int) -> bool:
    res = int(LIBC.syscall(ctypes.c_long(KCMP_SYSCALL[os.uname().machine]), ctypes.c_int(a), ctypes.c_int(b),
                           ctypes.c_int(KCMP_VM), ctypes.c_ulong(0), ctypes.c_ulong(0)))
    if res < 0:
        err = ctypes.get_errno()
        pytest.fail(f"kcmp: {os.strerror(err)}")
    return res == 0


@contextlib.contextmanager
def uts_namespace_holder() -> Iterator[int]:
    """A process in a UTS namespace of its own: the "container" the exec joins."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            libc.unshare(libc.CLONE_NEWUTS)
            os.write(w, b"x")
            signal.pause()
        finally:
            os._exit(0)
    try:
        os.close(w)
        assert os.read(r, 1) == b"x"
        os.close(r)
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def trace_until_it_forks(setup: int, deadline: float) -> tuple[str, int]:
    """Follow the traced set-up child until it makes a process; (kind of clone, its pid),
    the new process stopped before its first instruction."""
    ptrace(PTRACE_SETOPTIONS, setup, 0, PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE
           | PTRACE_O_EXITKILL)
    ptrace(PTRACE_CONT, setup)
    while time.monotonic() < deadline:
        _, status = os.waitpid(setup, WALL)
        assert os.WIFSTOPPED(status), f"the set-up child ended (status {status:#x}) without making a process"
        event = status >> 16
        if os.WSTOPSIG(status) == signal.SIGTRAP and event in EVENTS:
            msg = ctypes.c_ulong()
            ptrace(PTRACE_GETEVENTMSG, setup, 0, msg)
            child = int(msg.value)
            os.waitpid(child, WALL)  # its first stop, before it runs
            return EVENTS[event], child
        ptrace(PTRACE_CONT, setup, 0, os.WSTOPSIG(status) if not event else 0)
    pytest.fail("the set-up child made no process in time")


def test_the_exec_process_gets_a_copy_of_the_set_up_childs_memory_not_a_share() -> None:
    spec = LaunchSpec(container_id="exec:1", sandbox_id="s" * 64,
                      process=ProcessSpec(args=("/bin/true",), env=("PATH=/bin:/usr/bin",)),
                      namespaces=NamespaceSpec())
    with uts_namespace_holder() as container:
        pidfd = libc.pidfd_open(container)
        ns_flags = execproc.namespaces_to_join(container)
        report_r, report_w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        setup = os.fork()
        if setup == 0:
            try:
                ptrace(PTRACE_TRACEME, 0)
                os.kill(os.getpid(), signal.SIGSTOP)
                execproc.run_exec(spec, pidfd, ns_flags, report_w, (null, null, null))
            finally:
                os._exit(99)
        child = 0
        try:
            for fd in (report_w, null, pidfd):
                os.close(fd)
            _, status = os.waitpid(setup, WALL)
            assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGSTOP, status
            kind, child = trace_until_it_forks(setup, time.monotonic() + 30)
            shared = share_memory(setup, child)
            fds = sorted(int(fd) for fd in os.listdir(f"/proc/{child}/fd"))
            pid_ns = os.readlink(f"/proc/{child}/ns/pid")
        finally:
            for pid in (child, setup):
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for pid in (child, setup):
                with contextlib.suppress(ChildProcessError):
                    if pid:
                        os.waitpid(pid, WALL)
            report = os.read(report_r, 4096)
            os.close(report_r)
        assert report == b"spawning\n", report
        assert not shared, f"the exec process was made by {kind} with the set-up child's memory (CLONE_VM)"
        assert kind == "fork"
        # what it holds before its execve: its stdio, nothing of the runtime
        assert fds == [0, 1, 2], fds
        assert pid_ns == os.readlink(f"/proc/{container}/ns/pid")
