"""Writing a sysctl of the calling process's namespaces, resolved beneath /proc/sys.

kernel (Documentation/admin-guide/sysctl, fs/proc/proc_sysctl.c): /proc/sys/net/* and the
IPC sysctls show the namespaces of the process that opens them, so the pod shim writes a
pod's sysctls standing in the pod's new namespaces. The name comes from a pod spec: it is
opened component by component from a directory fd of /proc/sys, each component a plain
name (never "", "." or "..", never with a "/") opened with O_NOFOLLOW, so no spelling of it
can reach a file outside /proc/sys or a node-wide sysctl through ``..`` (the bug of a pod
sysctl ``net/../fs/lease-break-time``) or a symlink.
"""

from __future__ import annotations

import os

PROC_SYS = "/proc/sys"


def check_component(part: str) -> None:
    """ValueError unless ``part`` is one plain file name."""
    if part in ("", ".", "..") or "/" in part or "\0" in part:
        raise ValueError(f"sysctl path component {part!r} is not a plain name")


def open_beneath(root_fd: int, parts: tuple[str, ...] | list[str], flags: int) -> int:
    """Open ``parts`` (plain names, see :func:`check_component`) below the directory
    ``root_fd``, one component at a time, following no symlink; returns the fd (CLOEXEC).
    Raises ValueError for a bad component, OSError from the kernel."""
    if not parts:
        raise ValueError("empty sysctl path")
    for part in parts:
        check_component(part)
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def write_sysctl(parts: tuple[str, ...] | list[str], value: str, proc_sys: str = PROC_SYS) -> None:
    """Write ``value`` to the sysctl whose /proc/sys path components are ``parts``, in the
    calling process's namespaces. Raises ValueError (bad component) or OSError."""
    root = os.open(proc_sys, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_beneath(root, parts, os.O_WRONLY)
    finally:
        os.close(root)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def parts_of(path: str) -> list[str]:
    """The components below /proc/sys of ``path`` ("/proc/sys/net/ipv4/ip_forward" or the
    relative "net/ipv4/ip_forward"), as given: :func:`write_sysctl` checks them."""
    rel = path.removeprefix(PROC_SYS + "/") if path.startswith(PROC_SYS + "/") else path
    return rel.split("/")
