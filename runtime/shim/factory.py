"""The shim factory: forks pod shims from a pre-imported, frozen interpreter.

Measured here (docs/ARCHITECTURE.md §2): a fresh Python process costs ~18 MB PSS, a fork of a
pre-imported template about a third of that, because the interpreter's pages stay shared until
written (bench/shim_memory.py measures what a shim writes). So the daemon
starts this factory once per state directory; it imports and runs once everything a shim runs
(runtime.shim.warmup), calls ``gc.freeze()`` (the collector then never touches, and so never
copies, those pages), and forks one shim per pod on request.

The factory is single-threaded (it forks) and outlives a daemon restart, so a new daemon
forks its shims at once and the factory stays the parent that reaps the shims; shims never
depend on it (they keep running if it dies). It does not outlive its purpose, though
(:class:`Lifetime`): it watches the daemons that use it (by pidfd) and exits once none is
left and no shim of its own runs, or at once when its socket is no longer at its path (the
state directory was removed, or a newer factory took the path).

Protocol on its unix socket, one JSON line each way:
  {"op": "ping"}                      -> {"pid": ..., "code": <code hash>, "merge": ..., "merging": ...}
  {"op": "attach"}                    -> the same, and the caller (SO_PEERCRED) is watched as a daemon
  {"op": "spawn", "sandbox_id", "socket", "log"} -> {"pid": <shim pid>} once the shim listens
  {"op": "exit"}                      -> {} and the factory exits
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any, NoReturn

from runtime.linux import libc
from runtime.shim import warmup
from runtime.shim.version import code_hash

SPAWN_TIMEOUT = 20.0
#: how often the factory looks whether its socket is still at its path (no inotify in the stdlib)
CHECK_INTERVAL = 2.0


class Lifetime:
    """The daemons a factory serves (pidfds, readable once the process has exited) and its
    socket's identity; :meth:`reason_to_exit` says when the factory has no purpose left."""

    def __init__(self) -> None:
        self.daemons: dict[int, int] = {}  # pidfd -> pid
        self._socket: tuple[str, int, int] | None = None  # path, st_dev, st_ino

    def watch(self, pid: int) -> int | None:
        """Watch daemon ``pid`` (the caller knows it is alive: its parent or a connected peer);
        returns the new pidfd, None when it is watched already or gone."""
        if pid <= 0 or pid in self.daemons.values():
            return None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        self.daemons[fd] = pid
        return fd

    def gone(self, fd: int) -> int:
        """The daemon behind pidfd ``fd`` exited: stop watching it; returns its pid."""
        os.close(fd)
        return self.daemons.pop(fd)

    def bound(self, path: str) -> None:
        st = os.stat(path)
        self._socket = (path, st.st_dev, st.st_ino)

    def socket_ours(self) -> bool:
        """True while the path we listen on is still our socket."""
        if self._socket is None:
            return False
        path, dev, ino = self._socket
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (dev, ino)

    def reason_to_exit(self, has_children: bool) -> str:
        """Why the factory should exit now ("" while it has a purpose). Unreachable (its socket
        gone) it exits even with shims: they do not depend on it, and no daemon can ask it for
        more. Otherwise it stays while a daemon it serves runs or a shim it forked does (the
        next daemon reuses it, and it reaps them)."""
        if not self.socket_ours():
            return "its socket is no longer at its path (state directory removed or factory replaced)"
        if not self.daemons and not has_children:
            return "its daemon has gone and no shim of it runs"
        return ""

    def close_in_child(self) -> None:
        for fd in self.daemons:
            with contextlib.suppress(OSError):
                os.close(fd)


def _reap() -> bool:
    """Collect exited shims; True while any child is left."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _peer_pid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


def _spawn(req: dict[str, Any], close: list[int]) -> dict[str, Any]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _shim_child(req, [*close, r], w)
    os.close(w)
    deadline = time.monotonic() + SPAWN_TIMEOUT
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("shim did not report ready")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 256)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(r)
    line = buf.decode(errors="replace").strip()
    if not line.startswith("ready "):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return {"error": {"kind": "Internal", "message": f"pod shim failed to start: {line or 'no report'}"}}
    return {"result": {"pid": int(line.split()[1])}}


def _shim_child(req: dict[str, Any], close: list[int], w: int) -> NoReturn:
    try:
        # nothing of the factory's own stays open in the shim: its listener, the connection,
        # the daemons' pidfds, the signal wake-up pipe (forked, not exec'd: CLOEXEC does not help)
        signal.set_wakeup_fd(-1)
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # stdio: nothing of the factory's; errors go to the shim's own log
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        log_path = req.get("log") or os.devnull
        logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        os.close(null)
        os.close(logfd)
        from runtime.shim import server

        server.main(req["sandbox_id"], req["socket"], w, req.get("log", ""))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(w, f"error {type(exc).__name__}: {exc}\n".encode())
        os._exit(1)
    os._exit(0)


def _log(message: str) -> None:
    sys.stderr.write(f"shim factory {os.getpid()}: {message}\n")
    sys.stderr.flush()


class Factory:
    """The factory's serving loop (after warm-up): one request per connection, in turn."""

    def __init__(self, path: str, lifetime: Lifetime, merge_requested: bool, merging: bool) -> None:
        self.path = path
        self.lifetime = lifetime
        self.merge_requested = merge_requested
        self.merging = merging
        self.code = code_hash()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.poller = select.poll()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o600)
        self.lifetime.bound(self.path)
        self.listener.listen(64)
        # SIGCHLD (a shim ended) wakes poll() through this pipe; the handler does nothing
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for fd in (self.listener.fileno(), self.wake_r, *self.lifetime.daemons):
            self.poller.register(fd, select.POLLIN)
        sys.stdout.write(f"ready {os.getpid()}\n")
        sys.stdout.flush()
        while True:
            for fd, _event in self.poller.poll(CHECK_INTERVAL * 1000):
                if fd == self.listener.fileno():
                    if self._accept():
                        return
                elif fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                elif fd in self.lifetime.daemons:
                    self.poller.unregister(fd)
                    _log(f"daemon {self.lifetime.gone(fd)} has gone")
            why = self.lifetime.reason_to_exit(_reap())
            if why:
                _log(f"exiting: {why}")
                self._close()
                return

    def _close(self) -> None:
        ours = self.lifetime.socket_ours()
        self.listener.close()
        if ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _info(self) -> dict[str, Any]:
        # "merge" is the setting asked for, not its effect: on a kernel without memory merging
        # (prctl PR_SET_MEMORY_MERGE, Linux < 6.4) a factory asked to merge cannot, and reporting
        # that made every daemon start replace it as one "with other settings"
        return {"pid": os.getpid(), "code": self.code, "merge": self.merge_requested, "merging": self.merging}

    def _accept(self) -> bool:
        """Serve one connection; True when asked to exit."""
        try:
            conn, _ = self.listener.accept()
        except (InterruptedError, BlockingIOError):
            return False
        with conn:
            conn.settimeout(SPAWN_TIMEOUT + 5)
            try:
                f = conn.makefile("rb")
                line = f.readline(65536)
                f.close()
                if not line:
                    return False
                req = json.loads(line)
                op = req.get("op")
                if op == "ping":
                    reply: dict[str, Any] = {"result": self._info()}
                elif op == "attach":
                    # the caller holds the connection open, so SO_PEERCRED's pid is alive now
                    fd = self.lifetime.watch(_peer_pid(conn))
                    if fd is not None:
                        self.poller.register(fd, select.POLLIN)
                    reply = {"result": self._info()}
                elif op == "spawn":
                    close = [self.listener.fileno(), conn.fileno(), self.wake_r, self.wake_w,
                             *self.lifetime.daemons]
                    reply = _spawn(req, close)
                elif op == "exit":
                    conn.sendall(json.dumps({"result": {}}).encode() + b"\n")
                    self._close()
                    return True
                else:
                    reply = {"error": {"kind": "InvalidArgument", "message": f"unknown factory op {op!r}"}}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError) as exc:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"error": {"kind": "Internal", "message": str(exc)}}).encode() + b"\n")
        return False


def serve(path: str, daemon_pid: int, merge_memory: bool = False) -> None:
    """Warm up, then serve on ``path`` until the factory has no purpose left (see
    :class:`Lifetime`). ``daemon_pid``: the daemon that started us, watched from the start."""
    lifetime = Lifetime()
    lifetime.watch(daemon_pid)
    if os.getppid() != daemon_pid:  # it died before we could watch it (the pidfd may name another)
        for fd in list(lifetime.daemons):
            lifetime.gone(fd)
    warmup.preload()
    warmup.warm_up(os.path.dirname(path))
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    merging = False
    if merge_memory:
        # Shims dirty mostly the same pages in the same way; offered to KSM (inherited by
        # every shim we fork), identical pages are merged back (see runtime.linux.ksm).
        try:
            libc.set_memory_merge()
            merging = True
        except OSError as exc:
            _log(f"memory merging not available: {exc}")
    gc.collect()
    gc.freeze()
    Factory(path, lifetime, merge_memory, merging).serve()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cri-shim-factory")
    p.add_argument("--socket", required=True)
    p.add_argument("--daemon-pid", type=int, required=True,
                   help="the daemon starting us (our parent); with no daemon left and no shim, we exit")
    p.add_argument("--merge-memory", action="store_true", help="offer shim memory to KSM")
    args = p.parse_args(argv)
    serve(args.socket, args.daemon_pid, args.merge_memory)


if __name__ == "__main__":
    main()
