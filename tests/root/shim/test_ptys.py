"""runtime.linux.ptys: a pty of the devpts instance inside a root, and refusals of what a
hostile container could put at its dev/pts/ptmx."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runtime.linux import inroot, ptys

pytestmark = [pytest.mark.root, pytest.mark.timeout(30)]


def _root(tmp_path: Path) -> Path:
    (tmp_path / "dev" / "pts").mkdir(parents=True)
    return tmp_path


def test_pty_of_the_roots_own_devpts(tmp_path: Path) -> None:
    root = _root(tmp_path)
    pts = root / "dev" / "pts"
    subprocess.run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", str(pts)],
                   check=True, timeout=10)
    try:
        root_fd = inroot.open_root(str(root))
        try:
            master, slave = ptys.open_pty_in_root(root_fd)
        finally:
            os.close(root_fd)
        try:
            # the slave is a pts of that instance (its node exists there), not of the host's
            name = os.readlink(f"/proc/self/fd/{slave}")
            assert name.startswith(str(pts) + "/"), name
            assert (pts / name.rsplit("/", 1)[1]).exists()
            os.write(slave, b"up\n")
            assert os.read(master, 100).startswith(b"up")
            assert os.get_inheritable(master) is False and os.get_inheritable(slave) is False
        finally:
            os.close(master)
            os.close(slave)
    finally:
        subprocess.run(["umount", str(pts)], check=True, timeout=10)


@pytest.mark.parametrize("kind", ["file", "fifo", "symlink-out", "null-device"])
def test_what_is_not_the_ptmx_is_refused(tmp_path: Path, kind: str) -> None:
    root = _root(tmp_path)
    ptmx = root / "dev" / "pts" / "ptmx"
    if kind == "file":
        ptmx.write_text("")
    elif kind == "fifo":
        os.mkfifo(ptmx)
    elif kind == "symlink-out":
        ptmx.symlink_to("/dev/ptmx")  # resolved inside the root: there is no /dev/ptmx there
    else:
        os.mknod(ptmx, 0o666 | 0o020000, os.makedev(1, 3))
    root_fd = inroot.open_root(str(root))
    try:
        with pytest.raises(OSError):
            ptys.open_pty_in_root(root_fd)
    finally:
        os.close(root_fd)
