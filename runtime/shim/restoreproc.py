"""Restoring a container from criu images, in a forked child of the pod shim.

CRI-O and containerd restore a container at StartContainer (CreateContainer of a checkpoint
archive makes a created container whose start is the restore). Here the pod shim does it, so
the restored process is the shim's child like any container process (exit status, CRI log,
OOM watch, exec and attach through its pidfd):

    shim ── fork ──▶ child: join the container's cgroups, report "joined", wait for "go"
              (the shim retires the container's created set-up process meanwhile: the
              cgroup, a systemd scope perhaps, is never empty), unshare(NEWNS), mount the
              container's overlay root privately, execve criu restore --restore-sibling
              ──▶ the restored tree, cloned by criu with CLONE_PARENT: the shim's child

criu gets the new pod's network namespace for the dump's external one ("extRootNetNS",
--inherit-fd), joins its ipc and uts namespaces (--join-ns), maps every external mount key
(the container path) to the new container's source (--external mnt[KEY]:SOURCE), and hands
the restored process the new container's stdout/stderr pipes in place of the dumped ones
(--inherit-fd fd[N]:pipe:[INO], as runc does). criu leaves the cgroups alone
(--manage-cgroups=ignore): the tree stays in the cgroup criu was started in, the container's.
The overlay mount lives only in the child's private mount namespace: criu's restored mount
namespace keeps its own copy, the child's goes when criu exits (nothing to leak).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NoReturn

from runtime.linux import libc
from runtime.model.launch import LaunchSpec, RestorePlan
from runtime.shim import init

PIDFILE = "restore.pid"
LOG_FILE = "restore.log"


def restore_argv(plan: RestorePlan, root: str, inherited: Sequence[tuple[str, int]]) -> list[str]:
    """criu's command line for ``plan`` with the container's root at ``root`` and the fds
    ``inherited`` (key, fd number) open in criu."""
    argv = [
        plan.criu, "restore", "--images-dir", plan.images_dir, "--work-dir", plan.work_dir,
        "--log-file", LOG_FILE, "-v4", "--root", root, "--restore-detached", "--restore-sibling",
        "--pidfile", os.path.join(plan.work_dir, PIDFILE),
        "--manage-cgroups=ignore", "--tcp-established", "--file-locks",
    ]
    for m in plan.mounts:
        argv += ["--external", f"mnt[{m.key}]:{m.source}"]
    for key, fd in inherited:
        argv += ["--inherit-fd", f"fd[{fd}]:{key}"]
    for ns in plan.join_ns:
        argv += ["--join-ns", f"{ns.key}:{ns.source}"]
    return argv


def inherited_fds(plan: RestorePlan, spec: LaunchSpec, stdio: tuple[int, int, int]) -> list[tuple[str, int]]:
    """Open (or dup) one fd per key criu must be handed: criu takes each inherited fd into its
    own store and closes it, so a key shared by two stdio fds gets one fd only."""
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for key, fd in zip(plan.stdio, stdio, strict=True):
        if key.startswith("pipe:") and key not in seen:
            seen.add(key)
            out.append((key, os.dup(fd)))
    for key in plan.files:
        out.append((key, os.open(os.devnull, os.O_RDWR)))
    if plan.net_key:
        out.append((plan.net_key, os.open(spec.namespaces.net, os.O_RDONLY)))
    return out


def run_restore(spec: LaunchSpec, plan: RestorePlan, stdio: tuple[int, int, int], report_w: int,
                go_r: int) -> NoReturn:
    """The forked child (see the module docstring); criu's own output goes to ``report_w``."""

    def body() -> None:
        init.reset_signals()
        init.join_cgroups(spec.cgroup_procs)
        init.write_all(report_w, b"joined\n")
        if os.read(go_r, 1) != b"1":
            raise RuntimeError("the shim gave the restore up")
        assert spec.rootfs is not None
        libc.unshare(libc.CLONE_NEWNS)
        libc.mount("none", "/", None, libc.MS_REC | libc.MS_PRIVATE)
        init.mount_rootfs(spec.rootfs)
        os.chdir("/")
        inherited = inherited_fds(plan, spec, stdio)
        argv = restore_argv(plan, spec.rootfs.path, inherited)
        for _, fd in inherited:
            os.set_inheritable(fd, True)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(report_w, 1)
        os.dup2(report_w, 2)
        init.close_fds_except({fd for _, fd in inherited})
        os.execv(plan.criu, argv)

    init.child_guard(report_w, body)


def failure_detail(work_dir: str, output: str, lines: int = 6) -> str:
    """Why criu restore failed: the error lines of its log (its own output is mostly empty
    with --log-file), the last ``lines`` of them, joined by "; "."""
    try:
        with open(os.path.join(work_dir, LOG_FILE), errors="replace") as f:
            errs = [ln.strip() for ln in f if "Error" in ln]
    except OSError:
        errs = []
    text = errs or [ln.strip() for ln in output.splitlines() if ln.strip()]
    return "; ".join(text[-lines:]) or "no reason in its log"


def restored_pid(work_dir: str) -> int:
    """The restored tree's root pid, as criu wrote it (--pidfile); ValueError if it did not."""
    try:
        with open(os.path.join(work_dir, PIDFILE)) as f:
            return int(f.read().strip())
    except OSError as exc:
        raise ValueError(f"criu wrote no pid file ({exc.strerror})") from None
