"""OCI ``createContainer`` and ``startContainer`` hooks, run by a container's set-up process.

The OCI runtime spec (config.md, "POSIX-platform Hooks") runs both kinds in the container's
namespaces; cri-shim has no OCI runtime, so the set-up child of the pod shim
(runtime.shim.init) forks and runs them itself, at the moments runc's ``runc init`` does:

- ``createContainer``: after the container's mounts, device nodes and /dev links are in
  place in its new mount namespace (masked and read-only paths come later, as in runc), before
  pivot_root, so that the host's file system is still visible; the hook runs as the set-up
  process does (root, all capabilities, no seccomp) in the container's mount, network, IPC,
  UTS, cgroup (and user) namespaces and cgroup, its working directory the container's root.
  Its path resolves in the runtime's (the host's) mount namespace: the set-up process opens
  it with ``O_PATH`` as host root, before it leaves the host's mount (and user) namespace,
  and the hook is executed through that descriptor (fexecve). A mount of the container that
  shadows a host directory, or a user namespace root that may not search the host's
  directories, cannot change which file runs; the executable is the one the node's operator
  named when the container was created. (A script hook's interpreter is found in the mount
  namespace at exec time, which before pivot_root is still the host's tree.)
  A container set up outside the pod's shared (or a TARGET's) PID namespace
  (runtime.shim.finalfork) runs this hook in the shim's PID namespace, not in that one: a host
  binary with the host's file system in view, as root, must not be in sight of other
  containers (ptrace; CVE-2016-9962 class). In a pod with its own user namespace that switch
  is not possible (the set-up process lost its rights on the shim's PID namespace), and the
  hook is that namespace's root, with no power over the host.
- ``startContainer``: at StartContainer, after pivot_root, in the container's namespaces,
  right before the container's process is executed. Its path resolves in the container's root,
  which is the image's, so it runs as runc runs it (standard_init_linux.go: after
  finalizeNamespace and seccomp, just before execve): with the container process's
  credentials, capabilities, no_new_privs, seccomp filter, AppArmor profile (an exec
  transition is inherited) and working directory. An image can put any program at that path;
  running it with more than the container's own privileges would hand the image the set-up
  process's root.

Each hook gets the OCI state on stdin (``LaunchSpec.hook_state`` plus "status": "creating" or
"created" and "pid", the set-up process's pid as the host sees it), exactly its own
environment and argv, nothing of the runtime's descriptors but stdin, stdout and stderr (and,
for the fexecve of a createContainer hook, its own executable as fd 3: the kernel hands a
script's interpreter "/dev/fd/3"), a session and process group of its own, and at most its
timeout: then its process group is killed. Output (stdout and stderr) is kept for the error
message. A hook that cannot run, exits non-zero or times out raises :class:`HookFailed` with
the tail of its output: the create (or start) fails and the shim reports it.

Runs only in the single-threaded set-up child: blocking, no asyncio.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import time
from collections.abc import Sequence

from runtime.model.container import ContainerHook

CREATE_CONTAINER = "createContainer"
START_CONTAINER = "startContainer"
#: what of a failed hook's output goes into the error
OUTPUT_TAIL = 512
#: the executable of a createContainer hook in the hook's own descriptor table (fexecve)
_EXEC_FD = 3
_POLL_SLICE_MS = 50


class HookFailed(Exception):
    """A hook that could not run, exited non-zero or timed out (message: what and why)."""


def open_executables(hooks: Sequence[ContainerHook]) -> dict[int, int]:
    """O_PATH descriptors of the createContainer hooks' executables (by index in ``hooks``),
    opened in the current (host) mount namespace; close them with :func:`close_all`.
    Raises HookFailed for a path that cannot be opened."""
    fds: dict[int, int] = {}
    try:
        for i, hook in enumerate(hooks):
            if hook.name != CREATE_CONTAINER:
                continue
            try:
                fds[i] = os.open(hook.path, os.O_PATH | os.O_CLOEXEC)
            except OSError as exc:
                raise HookFailed(f"CDI {hook.name} hook {hook.path} cannot run: {exc.strerror}") from None
    except BaseException:
        close_all(fds)
        raise
    return fds


def close_all(fds: dict[int, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def host_pid() -> int:
    """Our pid as the host sees it, while /proc is still the host's (before pivot_root)."""
    try:
        return int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        return os.getpid()


def state_document(template: str, status: str, pid: int) -> bytes:
    """The OCI state (runtime-spec runtime.md) of the launch spec's template."""
    state = json.loads(template) if template else {}
    state.update(status=status, pid=pid)
    return json.dumps(state).encode()


def run_hooks(hooks: Sequence[ContainerHook], name: str, state: bytes, *, executables: dict[int, int] | None = None,
              cwd_fd: int = -1, own_pidns_fd: int = -1) -> None:
    """Run the hooks named ``name`` in order; the first failure raises HookFailed.

    ``executables``: O_PATH fds of the hooks by index (:func:`open_executables`), executed
    instead of their path. ``cwd_fd``: the hooks' working directory. ``own_pidns_fd``: an
    nsfs fd of the PID namespace the hooks start in, instead of the one for our children
    (which is restored afterwards)."""
    for i, hook in enumerate(hooks):
        if hook.name != name:
            continue
        exe = (executables or {}).get(i, -1)
        run_hook(hook, state, exe_fd=exe, cwd_fd=cwd_fd, own_pidns_fd=own_pidns_fd)


def run_hook(hook: ContainerHook, state: bytes, *, exe_fd: int = -1, cwd_fd: int = -1,
             own_pidns_fd: int = -1) -> None:
    """Run one hook to its end (see the module docstring). Raises HookFailed."""
    what = f"CDI {hook.name} hook {hook.path}"
    timeout = float(hook.timeout or 60)
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    previous_pipe = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a hook that never reads its stdin
    try:
        pid = _fork_hook(hook, exe_fd, cwd_fd, own_pidns_fd, stdin_r, out_w)
        os.close(stdin_r)
        os.close(out_w)
        stdin_r = out_w = -1
        output, status = _communicate(pid, stdin_w, out_r, state, timeout)
        stdin_w = -1  # closed by _communicate
    finally:
        signal.signal(signal.SIGPIPE, previous_pipe)
        for fd in (stdin_r, stdin_w, out_r, out_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    tail = output[-OUTPUT_TAIL:].decode(errors="replace").strip()
    if status is None:
        raise HookFailed(f"{what} did not finish in {timeout:g} s (killed){': ' + tail if tail else ''}")
    if os.WIFSIGNALED(status):
        raise HookFailed(f"{what} was killed by signal {os.WTERMSIG(status)}{': ' + tail if tail else ''}")
    code = os.WEXITSTATUS(status)
    if code != 0:
        raise HookFailed(f"{what} failed with exit status {code}: {tail}")


def _fork_hook(hook: ContainerHook, exe_fd: int, cwd_fd: int, own_pidns_fd: int, stdin_r: int, out_w: int) -> int:
    from runtime.linux import libc  # the set-up child has it imported already

    back = -1
    if own_pidns_fd >= 0:
        back = os.open("/proc/self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
        libc.setns(own_pidns_fd, libc.CLONE_NEWPID)
    try:
        pid = os.fork()
        if pid == 0:
            _exec_hook(hook, exe_fd, cwd_fd, stdin_r, out_w)
    finally:
        if back >= 0:
            try:
                libc.setns(back, libc.CLONE_NEWPID)
            finally:
                os.close(back)
    return pid


def _exec_hook(hook: ContainerHook, exe_fd: int, cwd_fd: int, stdin_r: int, out_w: int) -> None:
    """In the forked hook process: never returns."""
    try:
        os.setsid()
        if cwd_fd >= 0:
            os.fchdir(cwd_fd)
        os.dup2(stdin_r, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        keep = 3
        if exe_fd >= 0:
            if exe_fd == _EXEC_FD:
                os.set_inheritable(_EXEC_FD, True)  # dup2 onto itself would leave it close-on-exec
            else:
                os.dup2(exe_fd, _EXEC_FD)  # inheritable: a script's interpreter opens /dev/fd/3
            keep = _EXEC_FD + 1
        os.closerange(keep, 1 << 20)
        for sig in range(1, signal.NSIG):
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        argv = list(hook.args or (hook.path,))
        env = dict(e.split("=", 1) for e in hook.env)
        if exe_fd >= 0:
            os.execve(_EXEC_FD, argv, env)
        os.execve(hook.path, argv, env)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"cannot execute {hook.path}: {exc.strerror or exc}\n".encode())
    except BaseException:  # the fork must never return into the set-up code
        pass
    os._exit(127)


def _communicate(pid: int, stdin_w: int, out_r: int, state: bytes, timeout: float) -> tuple[bytes, int | None]:
    """Feed ``state`` to the hook's stdin, collect its output until it exits (or the
    deadline: its process group is then killed). Closes ``stdin_w``. Returns (output, wait
    status or None on timeout)."""
    os.set_blocking(stdin_w, False)
    os.set_blocking(out_r, False)
    pending = memoryview(state)
    out = bytearray()
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    if pending:
        poller.register(stdin_w, select.POLLOUT)
    else:
        os.close(stdin_w)
        stdin_w = -1
    status: int | None = None
    out_open = True
    try:
        while True:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # it leads its group: what it started too
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # killed before its setsid
                os.waitpid(pid, 0)
                return bytes(out), None
            for fd, _ in poller.poll(min(_POLL_SLICE_MS, int(left * 1000) + 1)):
                if fd == out_r:
                    out_open = _read_some(out_r, out)
                    if not out_open:
                        poller.unregister(out_r)
                elif fd == stdin_w:
                    try:
                        n = os.write(stdin_w, pending)
                    except BlockingIOError:
                        n = 0
                    except OSError as exc:  # EPIPE: the hook closed its stdin
                        if exc.errno != errno.EPIPE:
                            raise
                        n = len(pending)
                    pending = pending[n:]
                    if not pending:
                        poller.unregister(stdin_w)
                        os.close(stdin_w)
                        stdin_w = -1
        # exited: what it wrote before (a child it left running may keep the pipe open)
        while out_open:
            try:
                chunk = os.read(out_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            _keep(out, chunk)
        return bytes(out), status
    finally:
        if stdin_w >= 0:
            os.close(stdin_w)


def _read_some(fd: int, out: bytearray) -> bool:
    """Read what is there into ``out``; False at EOF."""
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return True
    if not chunk:
        return False
    _keep(out, chunk)
    return True


def _keep(out: bytearray, chunk: bytes) -> None:
    """Append, keeping no more than the tail the error message may show."""
    out += chunk
    if len(out) > 4 * OUTPUT_TAIL:
        del out[: len(out) - 2 * OUTPUT_TAIL]
