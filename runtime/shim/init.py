"""What a forked child of the pod shim does between fork() and execve().

Runs only in a child of the single-threaded pod shim, so setns/unshare/mount are safe.
Every entry point ends in an execve or ``os._exit``: the child never returns into the
shim's event loop. Errors are reported as one line on the ``report`` pipe
(``error <message>``) before exiting.

A new (or another) PID namespace applies to children only, so the shim forks each container
and exec process *in* its PID namespace (:func:`children_in_pid_ns`: unshare or setns of
CLONE_NEWPID around the fork, then back to its own) and the child does the rest itself:

    shim ── fork (in the container's PID ns) ──▶ the container's process: join cgroups,
              setns(net/ipc/uts), unshare(NEWNS|NEWCGROUP), mounts, pivot_root, reports
              "ready", waits for "start", drops privileges, seccomp, execve

A container that joins a PID namespace other containers already live in (a pod-shared one,
or a TARGET container's) must not be set up in their sight: a container with CAP_SYS_PTRACE
there passes every ptrace check against what it can see, and the set-up child is host root
in the node's mount namespace with the shim's pipes until its pivot_root (CVE-2016-9962
class). Where procfs can show a PID namespace to a process outside it (``pidns=``, Linux
>= 6.15, probed once) the shim forks it in its own PID namespace instead, with a pidfd of a
process of the target namespace; the child joins that namespace for its children only,
mounts the container's /proc showing it, and at start forks the container's process into
it already inside its root with its credentials, capabilities, seccomp and stdio
(:func:`start_final`, runtime.shim.finalfork), then stops; the shim takes that process
over (its pid is the container's from then on) and kills the set-up child:

    shim ── fork (in its own PID ns) ──▶ set-up child: setns(pidfd, NEWPID) for its
              children, ... as above, /proc with pidns=, ... "ready", "start", drops
              privileges, seccomp ──▶ fork ──▶ the container's process (in the target PID
              ns): setsid, execve

Measured (bench/lifecycle.py): every fork of the interpreter costs milliseconds here (page
tables, copy-on-write faults), so one fork per container and per exec (two where the set-up
stays outside the PID namespace), and none for the pod's namespaces (the shim makes and pins
them itself, then returns to its own: ``runtime.shim.nsinit.make_namespaces``).

In a pod with its own user namespace (hostUsers: false) the child first does, as host root,
what only host root can (cgroups, the rootfs overlay over idmapped layers and the bind
mounts as detached mounts, oom_score_adj, rlimits), then enters the user namespace before
the namespaces it owns, so that its new mount and cgroup namespaces belong to it too:

    shim ── fork ──▶ child (host root): join cgroups, prepare_detached_mounts, limits,
              setns(user) + become its root, setns(net/ipc/uts); a PID namespace of its
              own must belong to the user namespace, so: unshare(NEWPID), fork, exit ──▶
              the container's process (pid 1 there; reports "pid N"): unshare(NEWNS|
              NEWCGROUP), attach the mounts, proc/sysfs/mqueue/devpts/tmpfs mounted from
              inside, pivot_root, ... as above.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
from collections.abc import Callable, Iterator
from typing import NoReturn

from runtime.linux import caps, libc, mountapi, seccomp
from runtime.linux.inroot import ensure_in_root, fd_path, open_in_root, open_root, opened
from runtime.linux.mounts import apply_mount, attach_bind, mask_path, proc_in_pidns, readonly_path
from runtime.model.launch import DeviceSpec, LaunchSpec, NamespaceSpec, ProcessSpec, RootfsSpec
from runtime.shim import finalfork, hookrun
from runtime.shim.userns_setup import DetachedMounts, enter_pod_user_namespace, prepare_detached_mounts

_TIOCSCTTY = 0x540E

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@contextlib.contextmanager
def children_in_pid_ns(join: str = "", new: bool = False, join_fd: int = -1) -> Iterator[None]:
    """Within the block, children forked by this (single-threaded) process start in another
    PID namespace: a new one (``new``), the one of the process ``join_fd`` (a pidfd, taken
    while that process was known to be the right one: kernel >= 5.8 accepts it for setns)
    or the one at ``join`` (a path); afterwards ours again.

    kernel: unshare/setns(CLONE_NEWPID) change only where *children* go, and a process may
    always return to its own active namespace. A child forked in the block must never leave
    it (it must exec or _exit inside), or it would put its own children back in ours.
    """
    if not join and not new and join_fd < 0:
        yield
        return
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if new:
            libc.unshare(libc.CLONE_NEWPID)
        elif join_fd >= 0:
            libc.setns(join_fd, libc.CLONE_NEWPID)
        else:
            libc.setns_path(join, libc.CLONE_NEWPID)
        yield
    finally:
        try:
            libc.setns(own, libc.CLONE_NEWPID)
        finally:
            os.close(own)


def child_guard(report_fd: int, body: Callable[[], None]) -> NoReturn:
    """Run ``body`` in a forked child; any failure is reported and the child exits 1.

    The child is not dumpable from here until its execve (which sets it back for a normal
    binary): a container process that can see it (a shared or TARGET PID namespace) cannot
    open its /proc files or ptrace it without CAP_SYS_PTRACE (CVE-2016-9962)."""
    try:
        libc.set_not_dumpable()
        body()
    except BaseException as exc:
        msg = f"{exc}" if isinstance(exc, (OSError, hookrun.HookFailed)) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            write_all(report_fd, b"error " + msg.replace("\n", " ").encode(errors="replace") + b"\n")
        os._exit(1)
    os._exit(0)


def reset_signals() -> None:
    """Default dispositions and an empty mask: Python ignores SIGPIPE and the shim blocks/handles
    others; a container must start with the kernel defaults."""
    for sig in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                signal.SIGUSR1, signal.SIGUSR2, signal.SIGXFSZ):
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError, ValueError):
        signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def join_cgroups(procs_files: tuple[str, ...]) -> None:
    for path in procs_files:
        with open(path, "w") as f:
            f.write("0")


def close_fds_except(keep: set[int]) -> None:
    """Close every fd but 0-2 and ``keep``: a waiting child must not hold the shim's other
    pipes (another container's exec-report pipe would never see EOF)."""
    lo = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)


def setup_stdio(stdin: int, stdout: int, stderr: int, tty: bool, session: bool = True) -> None:
    """stdio on 0-2 and a session of its own (the tty, if any, as controlling terminal);
    without ``session`` the stdio only (the process we fork takes the session: a session
    leader's death hangs up its terminal's foreground process group)."""
    os.dup2(stdin, 0)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    for fd in {stdin, stdout, stderr} - {0, 1, 2}:
        os.close(fd)
    if not session:
        return
    os.setsid()
    if tty:
        import fcntl

        fcntl.ioctl(0, _TIOCSCTTY, 0)


def _mknod(root_fd: int, dev: DeviceSpec) -> None:
    """Create the device node ``dev.path`` inside the root (its directory made there when
    missing), relative to the directory's fd: mknodat, fchownat without following, chmod
    through the node's own fd."""
    parent_path, name = os.path.split(dev.path.rstrip("/"))
    if not name:
        raise OSError(errno.EINVAL, f"device path {dev.path!r} names no file")
    with opened(ensure_in_root(root_fd, parent_path, create="dir")) as parent:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent)
        kind = stat.S_IFCHR if dev.type == "c" else stat.S_IFBLK
        try:
            os.mknod(name, kind | (dev.file_mode & 0o7777), os.makedev(dev.major, dev.minor), dir_fd=parent)
        except PermissionError:
            # no CAP_MKNOD (e.g. a user namespace): bind the host's node instead, as runc does
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, flags, 0o644, dir_fd=parent))
            with opened(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)) as node:
                libc.mount(dev.host_path or dev.path, fd_path(node), None, libc.MS_BIND)
            return
        os.chown(name, dev.uid, dev.gid, dir_fd=parent, follow_symlinks=False)
        with opened(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)) as node:
            if not stat.S_ISCHR(os.fstat(node).st_mode) and not stat.S_ISBLK(os.fstat(node).st_mode):
                raise OSError(errno.EEXIST, f"device {dev.path}: something else took its place")
            os.chmod(fd_path(node), dev.file_mode & 0o7777)  # not masked by the umask


#: /dev's conventional links (runc's defaultSymlinks), made when the image's /dev lacks them
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
)


def _dev_links(root_fd: int) -> None:
    """The links in the container's /dev, made relative to its fd resolved inside the root
    (an image's /dev symlink to a host path must not take them to the host: CVE-2024-45310
    class)."""
    try:
        dev = open_in_root(root_fd, "/dev")
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise
    with opened(dev):
        if not stat.S_ISDIR(os.fstat(dev).st_mode):
            return
        for name, target in DEV_LINKS:
            try:
                os.symlink(target, name, dir_fd=dev)
            except FileExistsError:
                pass
        try:
            pts = os.stat("pts", dir_fd=dev, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(pts.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink("ptmx", dir_fd=dev)
            os.symlink("pts/ptmx", "ptmx", dir_fd=dev)


def mount_rootfs(rootfs: RootfsSpec) -> None:
    """Mount the overlay (or bind) at rootfs.path in this (new) mount namespace."""
    if not rootfs.lowerdirs:
        libc.mount(rootfs.upperdir, rootfs.path, None, libc.MS_BIND | libc.MS_REC)
        return
    lowers = list(rootfs.lowerdirs)
    options = f"lowerdir={':'.join(lowers)},upperdir={rootfs.upperdir},workdir={rootfs.workdir}"
    if len(options) >= 4000:
        # kernel: mount data is one page; shorten the paths by mounting from their common parent
        # (containerd does the same for long layer chains).
        base = os.path.commonpath([*lowers, rootfs.upperdir, rootfs.workdir])
        os.chdir(base)
        rel = [os.path.relpath(p, base) for p in lowers]
        options = (
            f"lowerdir={':'.join(rel)},upperdir={os.path.relpath(rootfs.upperdir, base)},"
            f"workdir={os.path.relpath(rootfs.workdir, base)}"
        )
    libc.mount("overlay", rootfs.path, "overlay", 0, options)


def build_mount_namespace(spec: LaunchSpec, detached: DetachedMounts | None = None, proc_pidns: int = -1,
                          before_pivot: Callable[[int], None] | None = None) -> None:
    """In a fresh mount namespace: rootfs, mounts, devices, masks, pivot_root, read-only root.
    With ``detached`` (a pod with its own user namespace) the rootfs and bind mounts are
    attached from those fds (closed here) instead of mounted from paths, and the new root is
    reached as our working directory: the user namespace's root may have no right to search
    the host directories on the way to its mount point. With ``proc_pidns`` (an nsfs fd of
    the PID namespace the container's process will be forked into, while we stay outside
    it) a "proc" mount shows that namespace (runtime.linux.mounts.proc_in_pidns); after
    pivot_root nothing here needs /proc. ``before_pivot`` is called with the new root's fd once
    its mounts, device nodes and /dev links are made, before the masked and read-only paths
    and pivot_root (OCI createContainer hooks, runtime.shim.hookrun).

    Every path inside the new root is resolved inside it, at the moment of use, into a file
    descriptor (``runtime.linux.inroot``) that the mount, mknod or symlink goes through."""
    assert spec.rootfs is not None
    if detached is None and any("rshared" in m.options for m in spec.mounts):
        # A BIDIRECTIONAL mount must stay a peer of the host's shared mount (runc's
        # rootfsPropagation "rshared"); the rootfs's parent mount is made private instead, so
        # the overlay and everything under it stay out of the host's mount table.
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_SHARED)
        libc.mount(None, mount_point_of(spec.rootfs.path), None, libc.MS_PRIVATE)
    else:
        # Do not propagate anything we mount back to the host; receive the host's mounts.
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
    if detached is None:
        mount_rootfs(spec.rootfs)
        root_fd = open_root(spec.rootfs.path)
    else:
        mountapi.move_mount(detached.rootfs, ".")  # on our working directory, the mount point
        os.fchdir(detached.rootfs)  # now the root of the attached overlay
        root_fd = open_root(".")
    with opened(root_fd):
        # pivot_root needs the new root's parent mount to be private to this namespace.
        libc.mount(None, fd_path(root_fd), None, libc.MS_PRIVATE)
        for i, m in enumerate(spec.mounts):
            fd = detached.binds.get(i) if detached is not None else None
            if fd is not None:
                attach_bind(root_fd, m.destination, fd, m.options)
            elif m.type == "proc" and proc_pidns >= 0:
                proc_in_pidns(root_fd, m.destination, m.options, proc_pidns)
            else:
                apply_mount(root_fd, m.destination, m.type, m.source, m.options)
        if detached is not None:
            detached.close()
        for dev in spec.devices:
            _mknod(root_fd, dev)
        _dev_links(root_fd)
        if before_pivot is not None:
            before_pivot(root_fd)
        # Before pivot_root: they mount through /proc/self/fd/N, and the container's /proc
        # may show a PID namespace we are not in (``proc_pidns``: no /proc/self there).
        for path in spec.masked_paths:
            mask_path(root_fd, path)
        for path in spec.readonly_paths:
            readonly_path(root_fd, path)
        old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        os.fchdir(root_fd)
    libc.pivot_root(".", ".")
    # Stand in the old root (stacked on the new one) and make it a slave before detaching
    # it, so its unmounts cannot propagate to the host; the new root's mounts keep their
    # propagation (runc's pivotRoot does the same).
    os.fchdir(old_root)
    os.close(old_root)
    libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    with opened(open_root("/")) as root_fd:
        cwd = spec.process.cwd
        if cwd and cwd != "/":
            # CRI: the working directory is created when the image lacks it (as runc does), as
            # root and inside the new root, before a read-only rootfs forbids it; when that
            # fails, finalize_and_exec says why.
            with contextlib.suppress(OSError):
                os.close(ensure_in_root(root_fd, cwd, create="dir"))
    if spec.rootfs.readonly:
        libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)


def _apply_process_limits(process: ProcessSpec) -> None:
    apply_oom_score_adj(process.oom_score_adj)
    _apply_rlimits(process)


def _apply_rlimits(process: ProcessSpec) -> None:
    for rl in process.rlimits:
        import resource

        resource.setrlimit(rl.resource, (rl.soft, rl.hard))


def apply_oom_score_adj(value: int | None) -> None:
    if value is None:
        return
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(value))


def mount_point_of(path: str) -> str:
    """The mount point ``path`` lies on in this mount namespace (last mounted wins)."""
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best = point
    return best


def load_seccomp(bpf: bytes) -> None:
    """Install a classic-BPF seccomp filter (array of struct sock_filter, 8 bytes each)."""
    seccomp.load_filter(bpf)


def apply_apparmor(profile: str) -> None:
    """Switch to the AppArmor ``profile`` at the coming execve (change_onexec)."""
    if not profile:
        return
    path = "/proc/self/attr/apparmor/exec"
    if not os.path.exists(path):
        path = "/proc/self/attr/exec"
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, f"exec {profile}".encode())
    except OSError as exc:
        raise OSError(exc.errno, f"AppArmor profile {profile!r}: {exc.strerror}") from None
    finally:
        os.close(fd)


def enter_process(proc: ProcessSpec, *, apparmor: bool = True) -> dict[str, str]:
    """Drop to the process's credentials and capabilities, enter its working directory,
    load seccomp: everything but the execve; returns the process's environment.

    Order as runc's finalizeNamespace: keep caps across setuid, drop the bounding set,
    switch uid/gid, set the capability sets, no_new_privs, seccomp last (or before the
    switch when no_new_privs is off, since loading a filter then needs CAP_SYS_ADMIN).

    The working directory is resolved inside the root first (as root: no magic link, no
    symlink out), then entered by path as the process's user (runc: so that its permission
    checks apply) and must be the very directory resolved: :class:`WorkingDirError` (an
    OSError) otherwise, before anything is executed. ``apparmor``: False when the caller
    asked for the profile already.
    """
    cwd = proc.cwd or "/"
    try:
        with opened(open_root("/")) as root, opened(open_in_root(root, cwd)) as fd:
            want = os.fstat(fd)
    except OSError as exc:
        raise WorkingDirError(exc.errno, f"working directory {cwd!r}: {exc.strerror}") from None
    # AppArmor first, as runc's init does (before finalizeNamespace): the change applies at
    # execve, and with no_new_privs set the kernel would only allow stacking a profile.
    if apparmor:
        apply_apparmor(proc.apparmor_profile)
    c = proc.capabilities
    if c is not None:
        libc.prctl(libc.PR_SET_KEEPCAPS, 1)
        caps.drop_bounding(c.bounding)
    if proc.seccomp_bpf and not proc.no_new_privs:
        load_seccomp(proc.seccomp_bpf)
    os.setgroups(list(proc.additional_gids))
    os.setresgid(proc.gid, proc.gid, proc.gid)
    os.setresuid(proc.uid, proc.uid, proc.uid)
    libc.set_not_dumpable()  # the uid change set it to fs.suid_dumpable (kernel: commit_creds)
    if c is not None:
        libc.prctl(libc.PR_SET_KEEPCAPS, 0)
        caps.capset(c.effective, c.permitted, c.inheritable)
        if c.ambient:
            caps.raise_ambient(c.ambient)
    if proc.no_new_privs:
        libc.set_no_new_privs()
    try:
        os.chdir(cwd)
        got = os.stat(".")
    except OSError as exc:
        raise WorkingDirError(exc.errno, f"working directory {cwd!r}: {exc.strerror}") from None
    if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
        raise WorkingDirError(errno.EXDEV, f"working directory {cwd!r} changed while the process started (a "
                                           "symlink swapped in?)")
    env: dict[str, str] = {}
    for e in proc.env:
        key, _, value = e.partition("=")
        env[key] = value
    if "PATH" not in env:
        env["PATH"] = DEFAULT_PATH
    if proc.seccomp_bpf and proc.no_new_privs:
        load_seccomp(proc.seccomp_bpf)
    return env


class WorkingDirError(OSError):
    """The process's working directory cannot be entered (or is not the one resolved)."""


def finalize_and_exec(proc: ProcessSpec, exec_report_fd: int, start_hooks: Callable[[], None] | None = None
                      ) -> NoReturn:
    """:func:`enter_process`, then ``start_hooks`` (OCI startContainer hooks, with the
    process's privileges: runtime.shim.hookrun), then execve; a working directory, hook or
    execve failure is reported on ``exec_report_fd`` (the start's answer)."""
    try:
        env = enter_process(proc)
        if start_hooks is not None:
            start_hooks()
    except (WorkingDirError, hookrun.HookFailed) as exc:
        _fail_exec(exec_report_fd, (exc.strerror if isinstance(exc, OSError) else "") or str(exc))
    reset_signals()
    try:
        os.execvpe(proc.args[0], list(proc.args), env)
    except OSError as exc:
        what = "executable file not found in $PATH" if exc.errno == 2 else exc.strerror
        _fail_exec(exec_report_fd, f"exec: {proc.args[0]!r}: {what}")


def start_final(proc: ProcessSpec, exec_report_fd: int, start_hooks: Callable[[], None] | None = None
                ) -> NoReturn:
    """:func:`enter_process` (AppArmor asked for already), ``start_hooks`` (as in
    :func:`finalize_and_exec`), then fork the container's process into the PID namespace
    for our children, which execve()s (runtime.shim.finalfork); a working directory, hook or
    lookup failure is reported on ``exec_report_fd`` (closed before the fork: EOF tells the
    shim to look for our child)."""
    try:
        env = enter_process(proc, apparmor=False)
        path = finalfork.find_executable(proc.args[0], env["PATH"])
        if start_hooks is not None:
            start_hooks()
    except (OSError, hookrun.HookFailed) as exc:
        _fail_exec(exec_report_fd, (exc.strerror if isinstance(exc, OSError) else "") or str(exc))
    libc.set_pdeathsig(signal.SIGKILL)  # stopped after the fork: never outlive the shim
    os.close(exec_report_fd)  # the container's process gets nothing of ours but its stdio
    finalfork.fork_final(path, proc.args, env, tty=proc.tty)


def join_pid_namespace_for_children(pid_fd: int) -> int:
    """setns(CLONE_NEWPID) on the pidfd ``pid_fd`` (closed here): the process we fork last
    starts in that PID namespace, we stay outside it, invisible to what lives there.
    Returns an nsfs fd of it, for the container's procfs (``pidns=``)."""
    try:
        libc.setns(pid_fd, libc.CLONE_NEWPID)
    except ProcessLookupError:
        raise OSError(errno.ESRCH, "the process whose PID namespace the container joins has exited") from None
    finally:
        os.close(pid_fd)
    return os.open("/proc/self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)


def _fail_exec(exec_report_fd: int, message: str) -> NoReturn:
    """The process cannot run: say why where the shim's start waits for it, exit 127."""
    with contextlib.suppress(OSError):
        write_all(exec_report_fd, message.encode(errors="replace"))
    os._exit(127)


def run_container(
    spec: LaunchSpec,
    report_fd: int,
    start_fd: int,
    exec_report_fd: int,
    stdio: tuple[int, int, int],
    pid_fd: int = -1,
) -> NoReturn:
    """The container's first process, forked by the shim in the container's PID namespace
    (see :func:`children_in_pid_ns`): set up, report "ready", wait for "start", exec. With
    ``pid_fd`` (a pidfd of a process in the PID namespace to join) it is forked in the
    shim's own instead and, at start, forks the container's process into that one
    (:func:`start_final`)."""

    def body() -> None:
        reset_signals()
        close_fds_except({report_fd, start_fd, exec_report_fd, *stdio, pid_fd} - {-1})
        pidns = join_pid_namespace_for_children(pid_fd) if pid_fd >= 0 else -1
        if not spec.namespaces.user:
            join_pod_namespaces(spec.namespaces)
        _container_setup(spec, report_fd, start_fd, exec_report_fd, stdio, cgroups_joined=False, pidns=pidns)

    child_guard(report_fd, body)


def run_precreated(
    namespaces: NamespaceSpec,
    cgroup_procs: tuple[str, ...],
    spec_fd: int,
    report_fd: int,
    start_fd: int,
    exec_report_fd: int,
    stdio: tuple[int, int, int],
    pid_fd: int = -1,
) -> NoReturn:
    """A container's first process forked ahead of its LaunchSpec (the daemon is still
    preparing the rootfs): joins the pod's namespaces and the container's cgroups, then waits
    for the spec (pickled by the shim, until EOF on ``spec_fd``; nothing means "not needed":
    exit 0) and goes on as :func:`run_container` (``pid_fd`` as there). The fork, the
    interpreter's start and the cgroup moves (measured: 7-20 ms on cgroup v1, each write
    waits for an RCU grace period) overlap the daemon's work."""

    def body() -> None:
        reset_signals()
        close_fds_except({spec_fd, report_fd, start_fd, exec_report_fd, *stdio, pid_fd} - {-1})
        pidns = join_pid_namespace_for_children(pid_fd) if pid_fd >= 0 else -1
        if not namespaces.user:  # with one, the mounts are prepared as host root first
            join_pod_namespaces(namespaces)
        join_cgroups(cgroup_procs)
        chunks = []
        while True:
            chunk = os.read(spec_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(spec_fd)
        if not chunks:
            os._exit(0)
        import pickle

        spec: LaunchSpec = pickle.loads(b"".join(chunks))  # from our own parent, same code
        if spec.cgroup_procs != cgroup_procs:
            join_cgroups(spec.cgroup_procs)
        _container_setup(spec, report_fd, start_fd, exec_report_fd, stdio, cgroups_joined=True, pidns=pidns)

    child_guard(report_fd, body)


def _wait_for_start(start_fd: int, tty: bool) -> tuple[bytes, int]:
    """The start byte ("1": go; nothing: removed before start) and, for a tty, the pty slave
    sent with it over the unix socket ``start_fd`` (-1 when none came)."""
    if not tty:
        return os.read(start_fd, 1), -1
    import socket

    sock = socket.socket(fileno=start_fd)
    try:
        msg, fds, _, _ = socket.recv_fds(sock, 1, 1)
    finally:
        sock.detach()
    for extra in fds[1:]:
        os.close(extra)
    return msg, fds[0] if fds else -1


def join_pod_namespaces(ns: NamespaceSpec) -> None:
    for path, flag in ((ns.net, libc.CLONE_NEWNET), (ns.ipc, libc.CLONE_NEWIPC), (ns.uts, libc.CLONE_NEWUTS)):
        if path:
            libc.setns_path(path, flag)


def _container_setup(
    spec: LaunchSpec, report_fd: int, start_fd: int, exec_report_fd: int, stdio: tuple[int, int, int],
    *, cgroups_joined: bool, pidns: int = -1,
) -> None:
    """``pidns`` >= 0: we stand outside the container's PID namespace (an nsfs fd of it, see
    :func:`join_pid_namespace_for_children`) and fork its process at start."""
    if not cgroups_joined:
        join_cgroups(spec.cgroup_procs)
    detached = None
    late = pidns >= 0
    # createContainer hooks: their executables opened now, as host root in the host's mount
    # namespace (runtime.shim.hookrun)
    executables = hookrun.open_executables(spec.hooks)
    own_pidns = -1
    if executables and late and not spec.namespaces.user:
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    if spec.namespaces.user:
        detached = prepare_detached_mounts(spec)
        # kernel: lowering oom_score_adj and raising hard rlimits need CAP_SYS_RESOURCE in
        # the host's user namespace; both are inherited by the process we may fork next
        _apply_process_limits(spec.process)
        enter_pod_user_namespace(spec.namespaces, report_fd)
    else:
        apply_oom_score_adj(spec.process.oom_score_adj)  # /proc/self: before /proc is the container's
    if late:
        # /proc/self/attr as well; the change applies at the execve of the process we fork
        # (AppArmor copies a pending exec transition to the child)
        apply_apparmor(spec.process.apparmor_profile)
    # new mount and cgroup namespaces, owned by the pod's user namespace when it has one;
    # the cgroup namespace after joining the cgroup: it is rooted at the container's cgroup
    seen_pid = hookrun.host_pid() if spec.hooks else 0  # /proc is still the host's

    def create_hooks(root_fd: int) -> None:
        state = hookrun.state_document(spec.hook_state, "creating", seen_pid)
        hookrun.run_hooks(spec.hooks, hookrun.CREATE_CONTAINER, state, executables=executables, cwd_fd=root_fd,
                          own_pidns_fd=own_pidns)

    libc.unshare(libc.CLONE_NEWNS | (libc.CLONE_NEWCGROUP if spec.namespaces.cgroup_ns else 0))
    build_mount_namespace(spec, detached, pidns, before_pivot=create_hooks if executables else None)
    hookrun.close_all(executables)
    if own_pidns >= 0:
        os.close(own_pidns)
    if late:
        os.close(pidns)
    if detached is None:
        _apply_rlimits(spec.process)
    tty = spec.process.tty  # its pty comes with the start, from its own devpts (procs.make_stdio)
    setup_stdio(*stdio, tty=False, session=not late)
    close_fds_except({report_fd, start_fd, exec_report_fd})
    write_all(report_fd, b"ready\n")
    go, terminal = _wait_for_start(start_fd, tty)
    if go != b"1":
        os._exit(0)  # removed before start: nothing to run
    os.close(start_fd)
    os.close(report_fd)
    if tty:
        if terminal < 0:
            _fail_exec(exec_report_fd, "the start carried no terminal for a tty container")
        setup_stdio(terminal, terminal, terminal, tty=False, session=False)
        if not late:  # the session leader takes it as its controlling terminal
            import fcntl

            fcntl.ioctl(0, _TIOCSCTTY, 0)
    start_hooks = None
    if any(h.name == hookrun.START_CONTAINER for h in spec.hooks):
        def start_hooks() -> None:
            state = hookrun.state_document(spec.hook_state, "created", seen_pid)
            hookrun.run_hooks(spec.hooks, hookrun.START_CONTAINER, state)
    if late:
        start_final(spec.process, exec_report_fd, start_hooks)
    finalize_and_exec(spec.process, exec_report_fd, start_hooks)
