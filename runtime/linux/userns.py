"""User namespaces: making one with given id mappings, entering one, probing idmapped mounts.

kernel: unshare(CLONE_NEWUSER) changes the caller's credentials for good and is refused in a
multithreaded process, and a new namespace's uid_map/gid_map can be written only by a
process with CAP_SETUID/CAP_SETGID in the *parent* namespace. So a user namespace is made by
a forked child (:func:`new_user_namespace`) that unshares it and waits while its parent,
still host root, writes the maps; then the child makes the namespaces the new one is to own
(net, ipc, uts) and waits again while the parent pins them all. ``setgroups`` stays "allow":
the maps are written by a privileged process, and containers call setgroups(2) for their
supplementary groups (user_namespaces(7) requires "deny" only for unprivileged writers).

Everything here runs in a single-threaded process: a child of the pod shim, the shim itself
(synchronously, never across an await), or ``python -m runtime.linux.userns probe DIR``,
which the daemon runs once at start to learn whether this kernel and the snapshot
filesystem support what pods with their own user namespace need.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import NoReturn

from runtime.linux import libc, mountapi

#: (container id, host id, length): one line of /proc/PID/uid_map or gid_map.
IdMap = tuple[int, int, int]


def map_text(mappings: Sequence[IdMap]) -> str:
    """The uid_map/gid_map text of ``mappings`` (one "container host length" line each)."""
    return "".join(f"{c} {h} {n}\n" for c, h, n in mappings)


def write_id_maps(pid: int, uid_map: Sequence[IdMap], gid_map: Sequence[IdMap]) -> None:
    """Write the maps of the user namespace ``pid`` just made (once; EPERM after that)."""
    for name, text in (("uid_map", map_text(uid_map)), ("setgroups", "allow"), ("gid_map", map_text(gid_map))):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        except OSError as exc:
            raise OSError(exc.errno, f"writing /proc/{pid}/{name} ({text.strip()!r}): {exc.strerror}") from None
        finally:
            os.close(fd)


def become_root() -> None:
    """In a user namespace just entered: take uid/gid 0 of it (no supplementary groups), so
    what we create is owned by the namespace's root. Capabilities stay (kernel: the switch
    to the namespace's root keeps the permitted set)."""
    os.setresgid(0, 0, 0)
    os.setgroups([])
    os.setresuid(0, 0, 0)


def enter(user_ns: str) -> None:
    """setns(2) into the user namespace pinned at ``user_ns`` and become its root. Must come
    before entering namespaces it owns, so the process holds its capabilities there."""
    libc.setns_path(user_ns, libc.CLONE_NEWUSER)
    become_root()


def _read_byte(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, 1)
        except InterruptedError:
            continue


@contextlib.contextmanager
def new_user_namespace(uid_map: Sequence[IdMap], gid_map: Sequence[IdMap], owned: int = 0) -> Iterator[int]:
    """A child process in a new user namespace with these maps, which has also unshared the
    namespaces in ``owned`` (CLONE_NEW* flags; they belong to the new user namespace).
    Yields its pid: ``/proc/<pid>/ns/*`` are the namespaces, to open or pin while the block
    runs. Afterwards the child exits and is reaped. Raises OSError with the child's error.

    The caller must be single-threaded and must not reap children in between (the pod
    shim's SIGCHLD handler runs on its event loop, never inside this synchronous block)."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_child_w)
        os.close(from_child_r)
        _child(to_child_r, from_child_w, owned)
    os.close(to_child_r)
    os.close(from_child_w)
    try:
        _expect(from_child_r, b"u", "unsharing the user namespace")
        write_id_maps(pid, uid_map, gid_map)
        os.write(to_child_w, b"m")
        _expect(from_child_r, b"n", "unsharing the namespaces the user namespace owns")
        yield pid
    finally:
        os.close(to_child_w)  # EOF: the child exits
        os.close(from_child_r)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _expect(fd: int, want: bytes, step: str) -> None:
    got = _read_byte(fd)
    if got == want:
        return
    rest = b""
    with contextlib.suppress(OSError):
        rest = os.read(fd, 4096)
    message = (got + rest).decode(errors="replace").removeprefix("e").strip() or "the helper process ended"
    raise OSError(0, f"user namespace: {step}: {message}")


def _child(cmd: int, report: int, owned: int) -> NoReturn:
    try:
        # a fork of the pod shim: its loop's signal wakeup fd and other pipes are not ours
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        low, high = sorted((cmd, report))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, 1 << 20)
        libc.unshare(libc.CLONE_NEWUSER)
        os.write(report, b"u")
        if _read_byte(cmd) != b"m":
            os._exit(1)
        become_root()
        if owned:
            libc.unshare(owned)
        os.write(report, b"n")
        while _read_byte(cmd):
            pass
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report, b"e" + str(exc).encode(errors="replace"))
        os._exit(1)
    os._exit(0)


# -- the start-up probe -----------------------------------------------------------------------------

PROBE_HOST_ID = 3_000_000_000  # far above any real user; nothing is written with it
PROBE_LENGTH = 65536


def probe_idmapped_overlay(base: str) -> str:
    """Whether a pod with its own user namespace can get its rootfs on the filesystem of
    ``base``: an idmapped clone of a directory there (open_tree + MOUNT_ATTR_IDMAP), used as
    an overlay lower layer (fsopen ``lowerdir+``), shows a file host root owns as the
    mapping's root. Returns "" when it does, else the reason. Touches only a temp dir in
    ``base``; mounts nothing anywhere (the overlay stays detached and goes with its fd)."""
    try:
        tmp = tempfile.mkdtemp(prefix=".userns-probe-", dir=base)
    except OSError as exc:
        return f"cannot make a scratch directory in {base}: {exc}"
    fds: list[int] = []
    try:
        for d in ("lower", "upper", "work"):
            os.mkdir(os.path.join(tmp, d), 0o755)
        with open(os.path.join(tmp, "lower", "file"), "w"):
            pass
        mapping = [(0, PROBE_HOST_ID, PROBE_LENGTH)]
        with new_user_namespace(mapping, mapping) as pid:
            userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            fds.append(userns)
            lower = mountapi.idmapped_tree(os.path.join(tmp, "lower"), userns)
            fds.append(lower)
            overlay = mountapi.overlay_mount([mountapi.fd_path(lower)], os.path.join(tmp, "upper"),
                                             os.path.join(tmp, "work"))
            fds.append(overlay)
            owner = os.stat(os.path.join(mountapi.fd_path(overlay), "file")).st_uid
        if owner != PROBE_HOST_ID:
            return f"an idmapped overlay layer shows host uid 0 as {owner}, not {PROBE_HOST_ID}"
        return ""
    except OSError as exc:
        return str(exc)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


async def probe_in_subprocess(base: str, python: str = sys.executable, timeout: float = 30.0) -> str:
    """:func:`probe_idmapped_overlay` run by ``python -m runtime.linux.userns probe`` (the
    daemon is multithreaded: it must not fork or unshare itself). "" when supported, else
    the reason."""
    import asyncio

    try:
        proc = await asyncio.create_subprocess_exec(
            python, "-m", "runtime.linux.userns", "probe", base,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return f"cannot run the probe: {exc}"
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"the probe did not finish within {timeout:g}s"
    try:
        result = json.loads(out)
        return "" if result["supported"] else str(result["reason"])
    except (ValueError, KeyError, TypeError):
        return f"the probe failed (exit {proc.returncode}): {err.decode(errors='replace').strip()[-500:]}"


def main(argv: list[str] | None = None) -> None:
    """``python -m runtime.linux.userns probe DIR``: prints {"supported": bool, "reason": str}."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "probe":
        sys.stderr.write("usage: python -m runtime.linux.userns probe DIR\n")
        sys.exit(2)
    reason = probe_idmapped_overlay(args[1])
    sys.stdout.write(json.dumps({"supported": not reason, "reason": reason}) + "\n")


if __name__ == "__main__":
    main()
