"""CRIU, the program that checkpoints and restores process trees: finding it, asking whether
it works on this kernel, and the command lines of a container dump.

The daemon runs ``criu`` as a plain binary (``asyncio.create_subprocess_exec``): criu does its
own namespace work (ptrace, parasite code, its own forks), so the daemon stays free of
setns/unshare (docs/ARCHITECTURE.md §2).

Whether criu can work is decided by criu itself: ``criu check`` initialises its kernel
feature detection (kerndat) exactly as ``criu dump`` does, so a host where it fails would fail
every dump. Example: Debian 12's criu 3.17 on Linux >= 6.13 fails with "vdso: Unexpected rt
vDSO area bounds" (the kernel split the vvar mapping, CRIU issue #2532, fixed in CRIU 4.1 by
"vdso: handle vvar_vclock vma-s").
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from runtime import errors

log = logging.getLogger(__name__)

#: Enough of criu's output to name the reason, short enough for a gRPC status message.
_REASON_LINES = 6

#: File systems criu recreates by itself inside the dumped mount namespace (criu's
#: fstypes table); every other mount of a container comes from the host (a bind of a pod file,
#: a volume) and must be declared external, as runc does for its bind mounts
#: (libcontainer/criu_linux.go addCriuDumpMount).
CRIU_OWN_FSTYPES = frozenset(
    {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "binfmt_misc", "securityfs", "debugfs"}
)


@dataclass(frozen=True, slots=True)
class CriuStatus:
    """What the probe found. ``usable`` only when ``criu check`` passed; ``reason`` says why
    not otherwise (criu missing, or criu's own error lines)."""

    path: str
    version: str
    usable: bool
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "version": self.version, "usable": self.usable, "reason": self.reason}


def tail_lines(text: str, n: int = _REASON_LINES) -> str:
    """The last ``n`` non-empty lines of criu's output, joined by "; " (its errors come last)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[-n:])


async def _run(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run a criu command, returning (exit status, stdout+stderr). A timeout kills it."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def probe(binary: str, timeout: float = 30.0) -> CriuStatus:
    """Find ``binary`` (a path or a name on PATH) and run ``criu check`` with it. Never raises
    for a broken criu: the answer says why it cannot be used."""
    path = shutil.which(binary) or ""
    if not path:
        why = f"criu is not installed ({binary!r} not found; Debian: apt-get install criu)"
        return CriuStatus(binary, "", False, why)
    try:
        rc, out = await _run((path, "--version"), timeout)
        version = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Version:")), "")
        rc, out = await _run((path, "check"), timeout)
    except TimeoutError:
        return CriuStatus(path, "", False, f"`{path} check` did not answer within {timeout:.0f}s")
    except OSError as exc:
        return CriuStatus(path, "", False, f"cannot run {path}: {exc}")
    if rc != 0:
        return CriuStatus(path, version, False, f"`criu check` failed on this kernel: {tail_lines(out)}")
    return CriuStatus(path, version, True)


async def run_criu(argv: Sequence[str], timeout: float, log_file: str, what: str) -> None:
    """Run a criu action; FailedPrecondition with the tail of its log when it fails (criu
    refuses what it cannot checkpoint: the reason is in its log), DeadlineExceeded on timeout."""
    log.debug("%s: %s", what, " ".join(argv))
    try:
        rc, out = await _run(argv, timeout)
    except TimeoutError:
        raise errors.DeadlineExceeded(f"{what}: criu did not finish within {timeout:.0f}s") from None
    if rc == 0:
        return
    detail = await asyncio.to_thread(_failure_detail, log_file, out)
    log.warning("%s: criu exited %d: %s", what, rc, detail)
    raise errors.FailedPrecondition(f"{what}: criu failed (exit {rc}): {detail}")


def _failure_detail(log_file: str, output: str) -> str:
    """criu's error lines from its log (its stdout is mostly empty with --log-file)."""
    try:
        with open(log_file, errors="replace") as f:
            errs = [ln for ln in f if "Error" in ln]
    except OSError:
        errs = []
    return tail_lines("".join(errs) or output)


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/PID/mountinfo, the fields criu's mount handling needs."""

    mount_id: int
    device: str
    mount_point: str
    root: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # kernel: mountinfo escapes space, tab, newline and backslash as \ooo (show_mountinfo)
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo (proc(5)): ``id parent major:minor root mount_point opts [tags] - fstype source super``."""
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 2:
            continue
        entries.append(MountEntry(int(f[0]), f[2], _unescape(f[4]), _unescape(f[3]), r[0], _unescape(r[1])))
    return entries


def external_mounts(mounts: Sequence[MountEntry]) -> tuple[str, ...]:
    """Mount points of a container that criu must treat as external: every mount but the root,
    the file systems criu makes itself, and binds of those (kubelet's read-only /proc/bus,
    /proc/sys...: same device as a whole mount of the tree, which criu binds again). Their key
    in the images is the mount point, the same convention as runc (key = destination), so a
    restore maps each key to a host source."""
    whole = {m.device for m in mounts if m.fstype in CRIU_OWN_FSTYPES and m.root == "/"}
    out = []
    for m in mounts:
        if m.mount_point == "/":
            continue
        if m.fstype in CRIU_OWN_FSTYPES and m.device in whole:
            continue
        out.append(m.mount_point)
    return tuple(dict.fromkeys(out))


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (every thread's children), read from /proc."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            continue  # exited meanwhile: criu sees the same tree once it freezes it
    return out


def external_files(pids: Sequence[int], mount_ids: set[int]) -> tuple[str, ...]:
    """criu's external file keys (``file[mnt_id:inode]``, hex, criu files-reg.c) of the files
    the tree holds open on mounts outside its mount namespace: the stdin /dev/null the shim
    opens before the container's pivot_root is one. criu refuses them ("Can't lookup mount")
    unless they are declared external; a restore hands each one in with --inherit-fd."""
    keys = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    info = dict(ln.split(":", 1) for ln in f.read().splitlines() if ":" in ln)
            except OSError:
                continue
            # pipes, sockets and anonymous inodes criu dumps by itself
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                continue
            mnt_id = int(info.get("mnt_id", "-1").strip())
            if mnt_id >= 0 and mnt_id not in mount_ids:
                keys.append(f"file[{mnt_id:x}:{st.st_ino:x}]")
    return tuple(dict.fromkeys(keys))


def dump_argv(
    criu: str,
    pid: int,
    images_dir: str,
    work_dir: str,
    externals: Sequence[str],
    *,
    files: Sequence[str] = (),
    external_net_ns: int = 0,
    leave_running: bool = True,
    freeze_cgroup: str = "",
) -> list[str]:
    """The ``criu dump`` command of a container whose init is host ``pid``.

    As runc's Checkpoint does: the tree is dumped from its root pid; TCP connections
    established are dumped too (--tcp-established, kubelet's checkpoint is taken of live
    services); file locks are kept (--file-locks); the pod's network namespace is external
    (it belongs to the sandbox, not the container: criu records its inode under the key
    "extRootNetNS", the key runc and CRI-O use, and a restore joins a namespace given for that
    key); cgroups are left to the runtime (--manage-cgroups=ignore: the restoring runtime
    puts the tree in the new container's cgroup). ``freeze_cgroup``: the tree's cgroup, frozen
    already by the caller (CheckpointPod's one cut of several containers): criu takes the
    tasks from the frozen cgroup and leaves it as it found it, frozen."""
    argv = [
        criu, "dump", "--tree", str(pid), "--images-dir", images_dir, "--work-dir", work_dir,
        "--log-file", "dump.log", "-v4", "--tcp-established", "--file-locks", "--manage-cgroups=ignore",
    ]
    if leave_running:
        argv.append("--leave-running")
    if freeze_cgroup:
        argv += ["--freeze-cgroup", freeze_cgroup]
    for mp in externals:
        argv += ["--external", f"mnt[{mp}]:{mp}"]
    for key in files:
        argv += ["--external", key]
    if external_net_ns:
        argv += ["--external", f"net[{external_net_ns}]:extRootNetNS"]
    return argv
