"""The configured pause binary: the daemon's start-up check, and the copy the shim execs.

The holder runs inside the pod's PID namespace, where a container with CAP_SYS_PTRACE
reaches /proc/1/exe. Exec'ing the installed file would let such a container name it, and
CVE-2019-5736 (runc) is what follows when a container can open the runtime's executable for
writing: every later pod runs what it wrote. So the shim execs a memfd copy instead
(:func:`sealed_copy`), as runc >= 1.0-rc6 does with itself (libcontainer/dmz, cloned binary):
sealed against writes, growth and shrinking, with no write access left open (the kernel's
execve refuses a file open for writing, ETXTBSY), and mode 0511, so the holder (nobody, or
a user namespace's root without capabilities) cannot read it and execve marks the process
not dumpable at once (fs/exec.c, would_dump). Each pod gets its own copy: at under 1 KiB
the copy costs one page, and a pod that somehow changed its copy would change nothing else.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from runtime import errors

#: the binary is under 1 KiB: anything far bigger is not the file we build
MAX_BYTES = 1 << 20
ELF_MAGIC = b"\x7fELF"
MEMFD_NAME = "cri-shim-pause"
#: linux/memfd.h (Linux >= 6.3): an executable memfd even where vm.memfd_noexec = 1 would
#: make memfds non-executable by default; older kernels refuse the unknown flag (EINVAL)
MFD_EXEC = 0x0010
#: r-x for its owner (root), execute only for everyone else
COPY_MODE = 0o511
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def read_checked(path: Path | str) -> bytes:
    """The bytes of the pause binary at ``path`` once it passes the checks a file that runs
    in every shared-PID pod must pass: a regular file, executable, an ELF of at most
    MAX_BYTES, owned by root (or by the uid we run as) and writable by no one else.
    FailedPrecondition naming the path, what is wrong and how to make the file."""
    how = "build it with `python -m runtime.shim.pause build --out PATH` (scripts/install.sh does for the default)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise errors.FailedPrecondition(
            f"pods.pause_binary {str(path)!r} (the pod PID holder): {exc.strerror}; {how}") from None
    try:
        st = os.fstat(fd)
        problem = ""
        if not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif not st.st_mode & 0o111:
            problem = "not executable"
        elif st.st_uid not in (0, os.geteuid()):
            problem = f"owned by uid {st.st_uid}, not root"
        elif st.st_mode & 0o022:
            problem = f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
        elif st.st_size > MAX_BYTES:
            problem = f"{st.st_size} bytes: not the pause binary"
        data = b"" if problem else os.pread(fd, MAX_BYTES + 1, 0)
        if not problem and (not data.startswith(ELF_MAGIC) or len(data) > MAX_BYTES):
            problem = "not an ELF executable of the expected size"
        if problem:
            raise errors.FailedPrecondition(f"pods.pause_binary {str(path)!r} (the pod PID holder): {problem}; {how}")
        return data
    finally:
        os.close(fd)


def check(path: Path | str) -> None:
    """The daemon's start-up check: FailedPrecondition as :func:`read_checked` says."""
    read_checked(path)


def sealed_copy(path: Path | str) -> int:
    """A read-only, close-on-exec descriptor of a sealed memfd holding the pause binary at
    ``path`` (checked as :func:`read_checked`), ready for execveat(fd, "", AT_EMPTY_PATH).
    The caller closes it. FailedPrecondition when the file fails the checks or the kernel
    allows no executable memfd (vm.memfd_noexec = 2); OSError otherwise."""
    data = read_checked(path)
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        rw = os.memfd_create(MEMFD_NAME, flags | MFD_EXEC)
    except OSError as exc:
        if exc.errno == errno.EACCES:
            raise errors.FailedPrecondition(
                "the kernel refuses executable memfds (vm.memfd_noexec = 2), which the pod PID holder is "
                "started from; set vm.memfd_noexec to 0 or 1") from None
        if exc.errno != errno.EINVAL:
            raise
        rw = os.memfd_create(MEMFD_NAME, flags)  # Linux < 6.3: every memfd may be executed
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(rw, view):]
        os.fchmod(rw, COPY_MODE)
        fcntl.fcntl(rw, fcntl.F_ADD_SEALS, SEALS)
        # a read-only descriptor of the same file, and the writable one closed: execve
        # refuses a file that any descriptor holds open for writing
        return os.open(f"/proc/self/fd/{rw}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(rw)
