"""The sandbox service's directory, mount and namespace-pin calls on the host.

:class:`PodHost` is the port :class:`runtime.sandbox.service.SandboxService` makes and undoes
a sandbox's host state through; :class:`LinuxPodHost` is the real one (the engine injects
it), ``tests.support.fake_hosts.FakePodHost`` a recording double. All methods block
(mounts, directory walks): the service calls them through ``asyncio.to_thread``.

The daemon is multithreaded, so nothing here enters a namespace: the namespaces themselves
are made and pinned by the pod shim (``runtime.shim.nsinit``); this side only makes the pin
directory and unmounts the pins (umount of a bind mount works from any thread).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Protocol

from runtime.linux import libc
from runtime.model.network import DnsConfig
from runtime.sandbox import podfiles


class PodHost(Protocol):
    """What a sandbox has on the host besides its shim, cgroup and network. Every undo
    (``remove_dirs``, ``unpin_namespaces``, ``unmount``) is idempotent."""

    def make_dirs(self, state_dir: Path, files_dir: Path) -> None:
        """The sandbox's volatile state dir and its files dir (mode 0711)."""
        ...

    def remove_dirs(self, state_dir: Path, files_dir: Path) -> None:
        """Unpin and unmount what is left under ``state_dir``, then remove both directories."""
        ...

    def make_pin_dir(self, pin_dir: Path) -> None:
        """The directory the shim pins the pod's namespaces in."""
        ...

    def unpin_namespaces(self, pin_dir: Path) -> None:
        """Unmount and delete every namespace pin in ``pin_dir``, then the directory."""
        ...

    def write_pod_files(self, files_dir: Path, hostname: str, dns: DnsConfig | None, host_network: bool,
                        ip: str, owner: tuple[int, int] | None) -> None:
        """hostname, hosts and resolv.conf (``runtime.sandbox.podfiles``)."""
        ...

    def mount_shm(self, path: Path, size: int, owner: tuple[int, int] | None) -> None:
        """The pod's /dev/shm tmpfs at ``path``."""
        ...

    def unmount(self, path: Path) -> None:
        """Unmount whatever is mounted at ``path`` (nothing mounted is fine)."""
        ...


class LinuxPodHost:
    """:class:`PodHost` on this machine. Construction does no I/O."""

    def make_dirs(self, state_dir: Path, files_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        files_dir.mkdir(parents=True, exist_ok=True, mode=0o711)

    def remove_dirs(self, state_dir: Path, files_dir: Path) -> None:
        unpin_namespaces(state_dir / "ns")
        unmount_quietly(state_dir / "shm")
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.rmtree(files_dir, ignore_errors=True)

    def make_pin_dir(self, pin_dir: Path) -> None:
        pin_dir.mkdir(mode=0o711, exist_ok=True)

    def unpin_namespaces(self, pin_dir: Path) -> None:
        unpin_namespaces(pin_dir)

    def write_pod_files(self, files_dir: Path, hostname: str, dns: DnsConfig | None, host_network: bool,
                        ip: str, owner: tuple[int, int] | None) -> None:
        podfiles.write_pod_files(files_dir, hostname, dns, host_network, ip, owner)

    def mount_shm(self, path: Path, size: int, owner: tuple[int, int] | None) -> None:
        mount_shm(path, size, owner)

    def unmount(self, path: Path) -> None:
        unmount_quietly(path)


def mount_shm(path: Path, size: int, owner: tuple[int, int] | None = None) -> None:
    """The pod's /dev/shm: a sized tmpfs, world-writable with the sticky bit; owned by
    ``owner`` (host uid, gid: the root of the pod's user namespace) when given, so it is
    root's inside the pod."""
    path.mkdir(mode=0o755, exist_ok=True)
    ids = f",uid={owner[0]},gid={owner[1]}" if owner is not None else ""
    libc.mount("shm", path, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
               f"mode=1777,size={size}{ids}")


def unmount_quietly(path: Path) -> None:
    """Unmount (lazily) whatever is mounted at ``path``; nothing mounted is fine."""
    while True:
        try:
            libc.umount2(str(path), libc.MNT_DETACH)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise


def unpin_namespaces(pin_dir: Path) -> None:
    """Unmount and delete every namespace pin in ``pin_dir`` (idempotent)."""
    try:
        entries = list(pin_dir.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        unmount_quietly(entry)
        entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        pin_dir.rmdir()
