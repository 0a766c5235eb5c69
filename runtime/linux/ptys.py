"""Pseudo-terminals allocated in a container's own devpts instance.

A container's /dev/pts is a devpts mount of its own (``newinstance``, runtime.security.mounts).
A pty taken from the shim's /dev/ptmx is a pts of the host's instance: the process gets a
working terminal, but ``ttyname(3)`` of its stdin (/dev/pts/N read from /proc/self/fd/0)
names no node in the container's /dev/pts, so ``tty`` says "not a tty" and programs that
reopen their terminal fail. runc makes the console inside the container for the same reason
(it opens /dev/ptmx in the container's mount namespace and sends the master out).

Here the shim opens the container's ``dev/pts/ptmx`` through the container's root, resolved
inside it (runtime.linux.inroot: the container's symlinks cannot lead out), checks that it is
the ptmx character device (5:2: a container that replaced it with a FIFO or another device
gets a pty of the shim's instance instead), opens it, unlocks the new pty and takes its slave
with TIOCGPTPEER (Linux 4.13), which needs no path lookup of /dev/pts/N at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct

from runtime.linux import inroot

#: linux/tty.h: the ptmx device, major 5 minor 2
PTMX_DEVICE = os.makedev(5, 2)
#: asm-generic/ioctls.h: _IOW('T', 0x31, int), _IO('T', 0x41)
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441


def open_pty_in_root(root_fd: int) -> tuple[int, int]:
    """(master, slave) of a new pty of the devpts instance at ``dev/pts`` inside the directory
    ``root_fd`` (a container's root), both close-on-exec, the slave without a controlling-tty
    side effect. Raises OSError when there is no such ptmx or it is not the ptmx device."""
    path_fd = inroot.open_in_root(root_fd, "dev/pts/ptmx")
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX_DEVICE:
            raise OSError(f"dev/pts/ptmx of the container is not the ptmx device ({stat.filemode(st.st_mode)})")
        master = os.open(inroot.fd_path(path_fd), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(path_fd)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(master)
        raise
    return master, slave


#: asm-generic/ioctls.h: _IOR('T', 0x30, unsigned int)
TIOCGPTN = 0x80045430


def check_master(fd: int) -> int:
    """The pty number of ``fd`` when it is a pty master (the ptmx character device, 5:2, of
    some devpts instance, answering TIOCGPTN); OSError otherwise. For a master another
    process sent us (an OCI runtime's console socket), before the shim reads or resizes it."""
    st = os.fstat(fd)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX_DEVICE:
        raise OSError(f"not a pty master ({stat.filemode(st.st_mode)}, device "
                      f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)})")
    n: int = struct.unpack("I", fcntl.ioctl(fd, TIOCGPTN, b"\0" * 4))[0]
    return n
