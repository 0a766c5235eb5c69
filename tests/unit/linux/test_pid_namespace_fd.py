"""runtime.linux.proc.open_pid_namespace: the PID namespace of a process named by its pidfd,
opened through /proc without following a reused pid. A live process gives its own namespace;
one that has exited is refused, also when its pid now names another live process (the reuse
case, made here by pairing a dead child's pidfd with a live process's pid), and nothing is left
open."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from runtime.linux import libc
from runtime.linux.proc import open_pid_namespace, pidfd_pid

pytestmark = pytest.mark.timeout(30)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_live_process_gives_its_own_pid_namespace(child: subprocess.Popen[bytes]) -> None:
    pidfd = libc.pidfd_open(child.pid)
    try:
        assert pidfd_pid(pidfd) == child.pid
        fd = open_pid_namespace(pidfd)
        try:
            assert os.readlink(f"/proc/self/fd/{fd}") == os.readlink(f"/proc/{child.pid}/ns/pid")
            assert not os.get_inheritable(fd)
        finally:
            os.close(fd)
    finally:
        os.close(pidfd)


def test_an_exited_process_is_refused_even_when_its_pid_names_another(child: subprocess.Popen[bytes]) -> None:
    pidfd = libc.pidfd_open(child.pid)
    try:
        child.kill()
        child.wait()  # reaped: its pid is free for the next process
        before = _fds()
        with pytest.raises(ProcessLookupError):
            pidfd_pid(pidfd)  # the kernel shows -1 for an exited pidfd
        with pytest.raises(ProcessLookupError):
            open_pid_namespace(pidfd)
        # the pid now names a live process (here: ours): its namespace file opens, but the
        # pidfd says the process it meant is gone, and the fd is not handed out
        with pytest.raises(ProcessLookupError):
            open_pid_namespace(pidfd, os.getpid())
        with pytest.raises(ProcessLookupError):
            open_pid_namespace(pidfd, 2**22 + 1)  # beyond pid_max: no such process at all
        assert _fds() == before
    finally:
        os.close(pidfd)
