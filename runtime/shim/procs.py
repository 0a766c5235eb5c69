"""The pod shim's process table: spawning container/exec children, their stdio, and exits.

Single-threaded asyncio. Each container process has its stdio held here: output goes to
the CRI log and to attached sessions; input comes from attached sessions. When a process
ends, its OOM state is read from its memory cgroup, its output drained, and the exit
written atomically to ``<exit_dir>/exit.json`` before anyone is told.

When the main process of a container without a PID namespace of its own ends (pod-shared,
TARGET or host PID namespace), whatever else runs in its cgroup, exec processes included,
is SIGKILLed first (runtime.shim.cgkill, as containerd's shim does with runc), so its exit
is reported as soon as the cgroup is empty, with everything the process wrote, instead of
after OUTPUT_DRAIN_SECONDS spent waiting on pipes its leftovers held open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import pickle
import pty
import signal
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from runtime import errors
from runtime.linux import libc, mountapi, ptys
from runtime.model.launch import PID_HOLDER, ExitStatus, LaunchSpec, NamespaceSpec, ProcessSpec, RestorePlan
from runtime.shim import execproc, finalfork, init, ociproc, restoreproc
from runtime.shim.cgkill import CgroupKiller, KillOutcome, owns_pid_namespace
from runtime.shim.logwriter import CriLogFile, LineSplitter
from runtime.shim.oomwatch import OomCounters
from runtime.shim.reaper import ChildReaper
from runtime.store.codec import to_json
from runtime.store.files import atomic_write

log = logging.getLogger("cri_shim.shim")

#: how long the output of an ended process may stay open (held by a process it left behind)
OUTPUT_DRAIN_SECONDS = 2.0
#: the same once the container's cgroup is empty: only a pipe end that left the cgroup (an
#: fd passed to a process outside it) can still hold it
KILLED_OUTPUT_GRACE_SECONDS = 0.1
#: what is read from one output pipe after that, at most (a writer that outlived SIGKILL
#: may still be writing)
FINAL_DRAIN_BYTES = 4 * 1024 * 1024
EXEC_SYNC_MAX_OUTPUT = 16 * 1024 * 1024


class OutputSink:
    """Receives a process's output chunks (an attach or exec session)."""

    def on_output(self, stream: int, data: bytes) -> None: ...

    def on_exit(self, status: ExitStatus) -> None: ...


@dataclass
class Proc:
    """One container (or streaming exec) process held by the shim."""

    key: str  # container id, or "exec:<n>"
    spec: LaunchSpec
    pid: int = 0
    state: str = "created"  # created | running | exited
    created_at_ns: int = field(default_factory=time.time_ns)
    started_at_ns: int = 0
    exit: ExitStatus | None = None
    start_w: int = -1
    exec_report_r: int = -1
    stdin_w: int = -1
    tty_master: int = -1
    #: a container's pty slave, sent to its set-up process with the start (see _open_late_tty)
    tty_slave: int = -1
    log: CriLogFile | None = None
    splitters: dict[int, LineSplitter] = field(default_factory=dict)
    sinks: set[OutputSink] = field(default_factory=set)
    open_outputs: int = 0
    output_fds: set[int] = field(default_factory=set)
    readers: dict[int, Callable[[], bool]] = field(default_factory=dict)
    stdin_buf: bytearray = field(default_factory=bytearray)
    stdin_idle: asyncio.Event = field(default_factory=asyncio.Event)
    stdin_writer: bool = False
    stdin_close_pending: bool = False
    paused: bool = False
    io_done: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    oom_base: int = 0
    stdin_attached_once: bool = False
    #: a pidfd of the container's process, taken while it was our unreaped child (so the pid
    #: was its own); execs and TARGET containers join its namespaces through it
    pidfd: int = -1
    #: ``pid`` is a set-up child outside the container's PID namespace that forks the
    #: container's process at start (init.start_final); then ``pid`` becomes that one
    handover: bool = False
    #: kill() while the set-up child hands over: signals for the container's process
    pending_signals: list[int] = field(default_factory=list)
    handing_over: bool = False
    #: a created container's set-up, still running after ``create`` answered (create with
    #: ``early``): :meth:`ProcessTable.start` awaits it
    setup: asyncio.Task[None] | None = None
    #: why that set-up failed (or was aborted): the container has no process (``pid`` 0),
    #: and its start raises FailedPrecondition with this
    setup_error: str = ""

    @property
    def ended(self) -> bool:
        """Exited, or created without a process left (its set-up failed or was aborted)."""
        return self.state == "exited" or bool(self.setup_error)


def oom_kill_count(memory_cgroup: str) -> int:
    """The cgroup's cumulative OOM-kill counter (v2 memory.events, v1 memory.oom_control);
    0 when there is none, or no longer one (see ``runtime.shim.oomwatch``)."""
    if not memory_cgroup:
        return 0
    for name in ("memory.events", "memory.oom_control"):
        try:
            with open(os.path.join(memory_cgroup, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            # ENOENT, or ENODEV from a file opened just before its cgroup was removed (the
            # systemd driver's scope is removed as soon as its last process is gone): the
            # exit must still be recorded; runtime.shim.oomwatch has the last count seen
            continue
    return 0


@dataclass
class Stdio:
    """A child's stdio: ``child`` are its ends (0, 1, 2), the rest ours (-1: none). ``tty``
    and ``stdin``: the shape asked for (a late tty has no master yet: see make_stdio)."""

    child: tuple[int, int, int]
    tty: bool = False
    stdin: bool = False
    tty_master: int = -1
    stdin_w: int = -1
    out_r: int = -1
    err_r: int = -1

    def close_ours(self) -> None:
        for fd in {self.tty_master, self.stdin_w, self.out_r, self.err_r} - {-1}:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close_child(self) -> None:
        for fd in set(self.child):
            with contextlib.suppress(OSError):
                os.close(fd)


def make_stdio(want_stdin: bool, tty: bool, pty_root: int = -1, *, late_tty: bool = False) -> Stdio:
    """The child's stdio: a pty (of the devpts inside ``pty_root``, a container's root, when
    given and usable: runtime.linux.ptys), or pipes. ``late_tty``: a container's terminal,
    which can only come from its own devpts once its set-up has mounted it: the child gets
    /dev/null until then, and the pty with its start (ProcessTable._open_late_tty)."""
    if tty and late_tty:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        return Stdio((null, null, null), tty=True, stdin=want_stdin)
    if tty:
        master, slave = _open_pty(pty_root)
        return Stdio((slave, slave, slave), tty=True, stdin=want_stdin, tty_master=master,
                     stdin_w=master if want_stdin else -1)
    if want_stdin:
        stdin, stdin_w = os.pipe()
    else:
        stdin, stdin_w = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC), -1
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    return Stdio((stdin, out_w, err_w), stdin=want_stdin, stdin_w=stdin_w, out_r=out_r, err_r=err_r)


def _start_channel(tty: bool) -> tuple[int, int]:
    """(read end, write end) of the channel a created container waits on for its start: a
    pipe, or for a tty a unix socket pair, which carries the pty's slave with the start."""
    if not tty:
        return os.pipe()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a.detach(), b.detach()


def _open_pty(pty_root: int) -> tuple[int, int]:
    if pty_root >= 0:
        try:
            return ptys.open_pty_in_root(pty_root)
        except OSError as exc:  # no devpts of its own (or a hostile one): the shim's pty still works
            log.warning("pty from the container's devpts failed (%s); using the shim's", exc)
    return pty.openpty()


@dataclass
class Precreated:
    """A container's first process forked ahead of its spec (see init.run_precreated)."""

    pid: int
    namespaces: NamespaceSpec
    spec_w: int
    report_r: int
    start_w: int
    exec_r: int
    stdio: Stdio
    setup: asyncio.Future[int]
    #: forked outside its PID namespace (see ProcessTable._forking_for)
    handover: bool = False

    def discard(self) -> None:
        """Closing the spec pipe without a spec makes the process exit 0."""
        for fd in (self.spec_w, self.report_r, self.start_w, self.exec_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.stdio.close_ours()


def _write_all_blocking(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fork_pid_ns(ns: NamespaceSpec) -> tuple[str, bool]:
    """(join, new) for :func:`init.children_in_pid_ns` when forking a container's process. A
    PID namespace of its own in a pod with a user namespace must belong to that user
    namespace: the child makes it itself (init.enter_pod_user_namespace), not the shim."""
    return ns.pid, ns.new_pid and not ns.pid and not ns.user


def _handed_over_pid(lines: list[str]) -> int:
    """The pid a set-up child handed the container over to ("pid N"), else 0."""
    for line in lines:
        if line.startswith("pid ") and line[4:].isdigit():
            return int(line[4:])
    return 0


def hook_seconds(spec: LaunchSpec, name: str) -> float:
    """The longest the OCI hooks named ``name`` of ``spec`` may take, all together."""
    return float(sum(h.timeout or 60 for h in spec.hooks if h.name == name))


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


def _set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


class ProcessTable:
    """Spawns and tracks the processes of one pod. Events go to ``on_exit``."""

    def __init__(
        self, on_exit: Callable[[Proc], None], proc_pidns: bool | None = None, killer: CgroupKiller | None = None,
        reaper: ChildReaper | None = None,
    ) -> None:
        """``proc_pidns``: whether procfs takes ``pidns=`` (runtime.linux.mountapi), so a
        container joining a PID namespace others live in is set up outside it (None: probed
        when first needed). ``killer`` empties a container's cgroup when its main process
        ends in a PID namespace it does not own (default: the real cgroupfs). ``reaper``:
        the process's one reaper, shared by the tables of every pod a shim hosts
        (runtime.shim.reaper; default: one of this table's own)."""
        self.procs: dict[str, Proc] = {}
        self._killer = killer if killer is not None else CgroupKiller()
        self._proc_pidns = proc_pidns
        self.reaper = reaper if reaper is not None else ChildReaper()
        self._on_exit = on_exit
        self.precreated: dict[str, Precreated] = {}
        self._loop = asyncio.get_running_loop()
        self._exec_seq = 0
        self.oom = OomCounters()
        #: a pidfd of the pod-shared PID namespace's pid 1 (see :meth:`set_holder`)
        self.holder_pidfd = -1
        #: runs the external OCI runtime for containers whose spec names one
        self.oci = ociproc.OciRunner(self)

    # -- reaping ------------------------------------------------------------------------------

    def reap(self) -> None:
        """Collect every exited child of the process (we are a child subreaper: orphans come
        here too), each routed to the table that claimed it (runtime.shim.reaper)."""
        self.reaper.reap()

    def wait_child(self, pid: int) -> asyncio.Future[int]:
        """A future for the wait status of a direct helper child."""
        fut: asyncio.Future[int] = self._loop.create_future()

        def done(status: int) -> None:
            if not fut.done():
                fut.set_result(status)

        status = self.reaper.claim(pid, done)
        if status is not None:
            fut.set_result(status)
        return fut

    def set_holder(self, pid: int) -> None:
        """Take a pidfd of the pod-shared PID namespace's pid 1, just made by us (our child,
        or our grandchild whose parent exited: either way reaped by nobody but us)."""
        self.holder_pidfd = libc.pidfd_open(pid)

    def _track(self, proc: Proc, pid: int, pidfd: bool = True) -> None:
        proc.pid = pid
        status = self.reaper.claim(pid, lambda st: self._finish_soon(proc, st))
        if status is None:
            if pidfd and not proc.key.startswith("exec:") and proc.pidfd < 0:
                # not reaped yet, and reaped by nobody but us (our child, or reparented to
                # us): the pid is still its own, so this pidfd names this very process
                try:
                    proc.pidfd = libc.pidfd_open(pid)
                except OSError as exc:
                    log.error("shim: no pidfd for %s (pid %d): %s; exec into it will fail", proc.key, pid, exc)
        else:
            self._finish_soon(proc, status)

    def _finish_soon(self, proc: Proc, status: int) -> None:
        self._loop.create_task(self._finish(proc, status))

    async def _finish(self, proc: Proc, status: int) -> None:
        finished = time.time_ns()
        if proc.pidfd >= 0:
            os.close(proc.pidfd)
            proc.pidfd = -1
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            code = 128 + sig
        else:
            sig = 0
            code = os.WEXITSTATUS(status)
        # The counter is cumulative over the cgroup: only a SIGKILL death after it grew is an
        # OOM kill of this process (kubernetes#140718: a SIGTERM exit is not OOMKilled).
        # the live counter too: with the systemd driver the scope's cgroup may already be gone
        oom = sig == signal.SIGKILL and (
            oom_kill_count(proc.spec.memory_cgroup) > proc.oom_base  # v1, or v2 still there
            or self.oom.killed(proc.key, proc.spec.memory_cgroup, proc.oom_base))
        self.oom.unwatch(proc.key)
        drain = OUTPUT_DRAIN_SECONDS
        if self._kills_leftovers(proc):
            # pipes close as the leftovers die (kernel: do_exit closes files before the task
            # leaves cgroup.procs), so an empty cgroup leaves nothing to wait for
            began = time.monotonic()
            try:
                outcome = await self._killer.kill_all(proc.spec.cgroup_procs)
            except Exception:  # never lose the exit over the leftovers (logged, then recorded)
                log.exception("shim: killing what %s left in its cgroup failed", proc.key)
                outcome = KillOutcome("", 0)
            if outcome.rounds:
                log.info("shim: %s ended in a PID namespace it does not own; killed what it left in its cgroup "
                         "(%s, %d rounds, %.1f ms)", proc.key, outcome.method, outcome.rounds,
                         (time.monotonic() - began) * 1000)
            drain = KILLED_OUTPUT_GRACE_SECONDS
        # Drain what the process wrote before it died (bounded: a daemonized grandchild may
        # hold the pipe open forever; kubernetes#92057), then what is still buffered.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain):  # not wait_for: it may swallow a cancel (gh-86296)
                await proc.io_done.wait()
        self._drain_buffered(proc)
        self._close_io(proc)
        proc.exit = ExitStatus(
            exit_code=code, signal=sig, started_at_ns=proc.started_at_ns, finished_at_ns=finished,
            oom_killed=oom, pid=proc.pid,
        )
        proc.state = "exited"
        if proc.spec.exit_dir:
            try:
                atomic_write(Path(proc.spec.exit_dir) / "exit.json", to_json(proc.exit).encode(), 0o644)
            except OSError:
                log.exception("shim: cannot write exit file of %s", proc.key)
        for sink in list(proc.sinks):
            sink.on_exit(proc.exit)
        proc.exited.set()
        self._on_exit(proc)

    @staticmethod
    def _kills_leftovers(proc: Proc) -> bool:
        """A container's main process (not an exec) that joined cgroups and is not pid 1 of
        a PID namespace of its own: what it left behind is killed when it ends (see
        runtime.shim.cgkill; its own namespace the kernel empties itself)."""
        return (not proc.key.startswith("exec:") and bool(proc.spec.cgroup_procs)
                and not owns_pid_namespace(proc.spec.namespaces))

    # -- stdio --------------------------------------------------------------------------------

    def _open_stdio(self, proc: Proc, want_stdin: bool, tty: bool, pty_root: int = -1) -> tuple[int, int, int]:
        """Create the child's stdio; returns the child's ends (closed here after fork)."""
        io = make_stdio(want_stdin, tty, pty_root)
        self._attach_stdio(proc, io)
        return io.child

    def _open_late_tty(self, proc: Proc, pid: int) -> None:
        """A created container's terminal, from its own devpts (mounted by its set-up, which
        waits for its start now): the master read and written as a tty's, the slave kept
        for :meth:`start`. ``pid``: the process that made the container's mounts. Where the
        container's ptmx cannot serve (not the ptmx device), the shim's devpts does, as before."""
        root_fd = -1
        try:
            root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("container %s: its root is not reachable for its pty (%s)", proc.key, exc)
        try:
            master, slave = _open_pty(root_fd)
        finally:
            if root_fd >= 0:
                os.close(root_fd)
        self.attach_tty(proc, master, proc.spec.process.stdin)
        proc.tty_slave = slave

    def attach_tty(self, proc: Proc, master: int, want_stdin: bool) -> None:
        """Take over the pty ``master`` of ``proc``'s terminal (ours from here on): its
        output read into the log and sinks, its input written to it when ``want_stdin``,
        :meth:`resize` on it. Also for a master an OCI runtime sent (runtime.shim.ociproc)."""
        self._attach_stdio(proc, Stdio((-1, -1, -1), tty=True, stdin=want_stdin, tty_master=master,
                                       stdin_w=master if want_stdin else -1))

    def _attach_stdio(self, proc: Proc, io: Stdio) -> None:
        """Take over our ends of ``io`` for ``proc``: read its output, hold its stdin."""
        if io.tty and io.tty_master < 0:
            return  # a late tty: _open_late_tty attaches it
        if io.tty_master >= 0:
            proc.tty_master = io.tty_master
            self._reader(proc, io.tty_master, 1)
            if io.stdin_w == io.tty_master:
                proc.stdin_w = io.tty_master
            return
        if io.stdin_w >= 0:
            proc.stdin_w = io.stdin_w
            _set_nonblocking(io.stdin_w)
        self._reader(proc, io.out_r, 1)
        self._reader(proc, io.err_r, 2)

    def _reader(self, proc: Proc, fd: int, stream: int) -> None:
        _set_nonblocking(fd)
        proc.open_outputs += 1
        proc.output_fds.add(fd)
        if proc.log is not None:
            proc.splitters[stream] = LineSplitter(b"stdout" if stream == 1 else b"stderr")

        def readable() -> bool:
            """Read once; True when data came (more may be buffered)."""
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return False
            except OSError:
                data = b""  # EIO: the pty's other side is closed
            if data:
                self._deliver(proc, stream, data)
                return True
            self._loop.remove_reader(fd)
            proc.output_fds.discard(fd)
            proc.readers.pop(fd, None)
            os.close(fd)
            if fd == proc.tty_master:
                if proc.stdin_w == fd:
                    proc.stdin_w = -1
                proc.tty_master = -1
            self._flush_stream(proc, stream)
            proc.open_outputs -= 1
            if proc.open_outputs == 0:
                proc.io_done.set()
            return False

        proc.readers[fd] = readable
        self._loop.add_reader(fd, readable)

    def _drain_buffered(self, proc: Proc) -> None:
        """Read what the output pipes still hold, without waiting (also while paused: the
        process is gone, its output goes to the log and sessions before they close)."""
        for fd in list(proc.output_fds):
            read = proc.readers.get(fd)
            budget = FINAL_DRAIN_BYTES
            while read is not None and budget > 0 and fd in proc.output_fds and read():
                budget -= 65536

    def _deliver(self, proc: Proc, stream: int, data: bytes) -> None:
        splitter = proc.splitters.get(stream)
        if splitter is not None and proc.log is not None:
            proc.log.write(splitter.feed(data, time.time_ns()))
        for sink in list(proc.sinks):
            sink.on_output(stream, data)

    def _flush_stream(self, proc: Proc, stream: int) -> None:
        splitter = proc.splitters.get(stream)
        if splitter is not None and proc.log is not None:
            proc.log.write(splitter.flush(time.time_ns()))

    def _close_io(self, proc: Proc) -> None:
        if proc.stdin_writer and proc.stdin_w >= 0:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_writer(proc.stdin_w)
        proc.stdin_writer = False
        proc.stdin_buf.clear()
        proc.stdin_idle.set()
        if proc.stdin_w >= 0 and proc.stdin_w == proc.tty_master:
            proc.stdin_w = -1  # the same fd: closed once, as tty_master
        if proc.tty_master >= 0:
            proc.output_fds.discard(proc.tty_master)
        for fd in list(proc.output_fds):  # a grandchild still holds the pipe: stop reading it
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        proc.output_fds.clear()
        for fd_attr in ("stdin_w", "tty_master", "tty_slave", "start_w", "exec_report_r"):
            fd = getattr(proc, fd_attr)
            if fd >= 0:
                with contextlib.suppress(OSError, ValueError):
                    self._loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(proc, fd_attr, -1)
        if proc.log is not None:
            for stream in list(proc.splitters):
                self._flush_stream(proc, stream)
            proc.log.close()

    def pause_output(self, proc: Proc) -> None:
        """Stop reading the process's output pipes (its writes block once they fill)."""
        for fd in proc.output_fds:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(fd)
        proc.paused = True

    def resume_output(self, proc: Proc) -> None:
        if not proc.paused:
            return
        proc.paused = False
        for fd, cb in list(proc.readers.items()):
            if fd in proc.output_fds:
                self._loop.add_reader(fd, cb)

    def write_stdin(self, proc: Proc, data: bytes) -> None:
        """Queue input for the process; written as its stdin accepts it (never blocks the shim).

        Callers that feed a lot await :meth:`stdin_drained` to apply backpressure.
        """
        if proc.stdin_w < 0 or not data:
            return
        proc.stdin_buf += data
        proc.stdin_idle.clear()
        self._flush_stdin(proc)

    def _flush_stdin(self, proc: Proc) -> None:
        fd = proc.stdin_w
        if fd < 0:
            proc.stdin_buf.clear()
            proc.stdin_idle.set()
            return
        try:
            while proc.stdin_buf:
                n = os.write(fd, proc.stdin_buf[:65536])
                del proc.stdin_buf[:n]
        except BlockingIOError:
            if not proc.stdin_writer:
                proc.stdin_writer = True
                self._loop.add_writer(fd, self._flush_stdin, proc)
            return
        except OSError:
            proc.stdin_buf.clear()  # the process closed its stdin (EPIPE): input is moot
        if proc.stdin_writer:
            proc.stdin_writer = False
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_writer(fd)
        proc.stdin_idle.set()
        if proc.stdin_close_pending:
            proc.stdin_close_pending = False
            self.close_stdin(proc)

    async def stdin_drained(self, proc: Proc, high_water: int = 1 << 20) -> None:
        """Wait while more than ``high_water`` bytes of input are queued."""
        if len(proc.stdin_buf) > high_water:
            await proc.stdin_idle.wait()

    def close_stdin(self, proc: Proc) -> None:
        """End the process's input (after queued input is written)."""
        if proc.stdin_buf and proc.stdin_w >= 0:
            proc.stdin_close_pending = True
            return
        if proc.stdin_w >= 0 and proc.stdin_w != proc.tty_master:
            if proc.stdin_writer:
                proc.stdin_writer = False
                with contextlib.suppress(OSError, ValueError):
                    self._loop.remove_writer(proc.stdin_w)
            os.close(proc.stdin_w)
            proc.stdin_w = -1
        elif proc.tty_master >= 0 and proc.stdin_w == proc.tty_master:
            # tty: send EOF (^D) the way a terminal would; keep the pty open for output
            self.write_stdin(proc, b"\x04")

    @staticmethod
    def resize(proc: Proc, width: int, height: int) -> None:
        if proc.tty_master >= 0:
            fcntl.ioctl(proc.tty_master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    # -- spawning -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _forking_for(self, ns: NamespaceSpec) -> Iterator[int]:
        """Where a container's first process is forked. Joining a PID namespace other
        processes live in (``ns.pid_of``: the pod-shared one, a TARGET container's) where
        procfs can show it to a process outside it (:meth:`_sets_up_outside`): here, in our
        own PID namespace, invisible to them; the block gets the pidfd the child joins it
        through for the process it forks at start (init.start_final). Otherwise the block's
        children start in the container's PID namespace (-1)."""
        if self._sets_up_outside(ns):
            yield self._pid_target(ns)[0]
            return
        join, new = _fork_pid_ns(ns)
        if not ns.pid_of:
            with init.children_in_pid_ns(join=join, new=new):
                yield -1
            return
        fd, what = self._pid_target(ns)
        try:
            with init.children_in_pid_ns(join_fd=fd):
                yield -1
        except ProcessLookupError:  # kernel: setns on the pidfd of a process that exited
            raise errors.FailedPrecondition(f"{what} has exited") from None

    def _pid_target(self, ns: NamespaceSpec) -> tuple[int, str]:
        """The pidfd (and a description) of the process whose PID namespace ``ns.pid_of``
        names (the pod's holder, or a TARGET container), taken when we made it; never a
        /proc/<pid> path a reused pid redirects. FailedPrecondition when it is gone."""
        if ns.pid_of == PID_HOLDER:
            fd, what = self.holder_pidfd, "the pod's shared PID namespace"
        else:
            target = self.procs.get(ns.pid_of)
            fd = target.pidfd if target is not None and target.state == "running" else -1
            what = f"target container {ns.pid_of}"
        if fd < 0:
            raise errors.FailedPrecondition(f"{what} is not running in this pod")
        return fd, what

    def _sets_up_outside(self, ns: NamespaceSpec) -> bool:
        """Whether a container of ``ns`` is set up outside its PID namespace: it joins one
        other containers live in, and the kernel's procfs takes ``pidns=`` (probed once; on
        an older kernel the set-up runs inside that namespace, as before, and is logged)."""
        if not ns.pid_of:
            return False
        if self._proc_pidns is None:
            why = mountapi.proc_pidns_supported()
            self._proc_pidns = not why
            if why:
                log.warning("shim: %s; containers joining a pod-shared or TARGET PID namespace are set up inside it, "
                            "where a container with CAP_SYS_PTRACE can reach the set-up process", why)
        return self._proc_pidns

    async def _read_report(self, fd: int | BinaryIO, lines: list[str] | None = None) -> list[str]:
        """Lines from a child's report pipe (an fd, or a file object of it) until "ready", an
        error, or EOF (appended to ``lines`` as they come, so a caller that times out still
        has them). The pipe is closed on return."""
        if lines is None:
            lines = []
        buf = b""
        reader = asyncio.StreamReader()
        pipe = os.fdopen(fd, "rb", buffering=0) if isinstance(fd, int) else fd
        transport, _ = await self._loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    lines.append(text)
                    if text == "ready" or text.startswith("error "):
                        return lines
        finally:
            transport.close()
        return lines

    def precreate(
        self, container_id: str, ns: NamespaceSpec, cgroup_procs: tuple[str, ...], stdin: bool, tty: bool
    ) -> int:
        """Fork a container's first process before its spec is known (in its PID namespace,
        joined to the pod's namespaces); :meth:`create` hands it the spec. Returns its pid."""
        if container_id in self.procs or container_id in self.precreated:
            raise errors.AlreadyExists(f"container {container_id} already exists in this pod")
        io = make_stdio(stdin, tty, late_tty=True)
        pipes = [os.pipe(), os.pipe(), _start_channel(tty), os.pipe()]  # spec, report, start, exec report
        (spec_r, spec_w), (report_r, report_w), (start_r, start_w), (exec_r, exec_w) = pipes
        try:
            with self._forking_for(ns) as pid_fd:
                pid = os.fork()
                if pid == 0:
                    init.run_precreated(ns, cgroup_procs, spec_r, report_w, start_r, exec_w, io.child, pid_fd)
        except BaseException:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            io.close_child()
            io.close_ours()
            raise
        for fd in (spec_r, report_w, start_r, exec_w):
            os.close(fd)
        io.close_child()
        self.precreated[container_id] = Precreated(
            pid, ns, spec_w, report_r, start_w, exec_r, io, self.wait_child(pid), handover=pid_fd >= 0
        )
        return pid

    def discard_precreated(self, container_id: str) -> None:
        pre = self.precreated.pop(container_id, None)
        if pre is not None:
            pre.discard()

    async def create(self, spec: LaunchSpec, *, early: bool = False) -> Proc:
        """Create a container process: set up, then waiting for :meth:`start`. A spec with
        ``oci`` is created by that OCI runtime (runtime.shim.ociproc). Raises
        FailedPrecondition ("creating container <id>: <reason>") when its set-up fails, with
        everything undone.

        ``early``: return once the set-up child has the spec; the set-up (mounts, pivot_root,
        "ready") goes on in ``proc.setup``, whose outcome :meth:`start` awaits and raises, as
        containerd runs ``runc create`` in StartContainer, not in CreateContainer. Ignored (the
        set-up is awaited here) for a spec with createContainer hooks, whose failure must fail
        the create (runtime.shim.hookrun), and for an OCI runtime's container."""
        if spec.oci is not None:
            self.discard_precreated(spec.container_id)
            return await self.oci.create(spec)
        if spec.container_id in self.procs:
            raise errors.AlreadyExists(f"container {spec.container_id} already exists in this pod")
        pre = self.precreated.pop(spec.container_id, None)
        if pre is not None and (
            pre.namespaces != spec.namespaces or pre.stdio.tty != spec.process.tty
            or pre.stdio.stdin != spec.process.stdin or pre.setup.done()
        ):
            pre.discard()  # made for another shape of container: start afresh
            pre = None
        proc = Proc(key=spec.container_id, spec=spec)
        proc.log = CriLogFile(spec.log_path) if spec.log_path else None
        proc.oom_base = oom_kill_count(spec.memory_cgroup)
        self.oom.watch(proc.key, spec.memory_cgroup)
        if pre is not None:
            self._attach_stdio(proc, pre.stdio)
            try:
                _write_all_blocking(pre.spec_w, pickle.dumps(spec))
            finally:
                os.close(pre.spec_w)
            pid, setup, report_r = pre.pid, pre.setup, pre.report_r
            proc.start_w, proc.exec_report_r = pre.start_w, pre.exec_r
            proc.handover = pre.handover
        else:
            report_r, report_w = os.pipe()
            start_r, start_w = _start_channel(spec.process.tty)
            exec_r, exec_w = os.pipe()
            io = make_stdio(spec.process.stdin, spec.process.tty, late_tty=True)
            self._attach_stdio(proc, io)
            stdio = io.child
            try:
                with self._forking_for(spec.namespaces) as pid_fd:
                    pid = os.fork()
                    if pid == 0:
                        init.run_container(spec, report_w, start_r, exec_w, stdio, pid_fd)
                proc.handover = pid_fd >= 0
            except BaseException:
                for fd in (report_r, report_w, start_r, start_w, exec_r, exec_w, *stdio):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                self._close_io(proc)
                raise
            for fd in {report_w, start_r, exec_w, *stdio}:
                os.close(fd)
            proc.start_w, proc.exec_report_r = start_w, exec_r
            setup = self.wait_child(pid)
        proc.pid = pid
        self.procs[spec.container_id] = proc
        # a file object from here on: closed by the report's reader, or by the undo of a set-up
        # cancelled before it read anything (see _setup_ended)
        pipe = os.fdopen(report_r, "rb", buffering=0)
        # createContainer hooks run before "ready" (runtime.shim.hookrun), each within its timeout
        timeout = 60 + hook_seconds(spec, "createContainer")
        if not early or spec.hooks:
            await self._settle_setup(proc, setup, pipe, timeout)
            return proc
        task = self._loop.create_task(self._settle_setup(proc, setup, pipe, timeout))
        proc.setup = task
        task.add_done_callback(lambda t: self._setup_ended(proc, t, setup, pipe))
        return proc

    async def _settle_setup(self, proc: Proc, setup: asyncio.Future[int], pipe: BinaryIO, timeout: float) -> None:
        """Wait for a created container's set-up child (``proc.pid``, its exit in ``setup``)
        to report "ready" on ``pipe``, then take its process over: the pid it handed over to
        (a pod user namespace), its late tty, its exit tracked as the container's. On a
        failure, a timeout or a cancel everything is undone (:meth:`_abort`) and the error
        raised (FailedPrecondition naming the reason when the set-up failed)."""
        key, pid = proc.key, proc.pid
        lines: list[str] = []
        try:
            await asyncio.wait_for(self._read_report(pipe, lines), timeout)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                pipe.close()
            why = "removed while being set up" if isinstance(exc, asyncio.CancelledError) else (
                f"setup process did not report ready within {timeout:g}s" if isinstance(exc, TimeoutError)
                else str(exc))
            self._abort(proc, setup, _handed_over_pid(lines), f"creating container {key}: {why}")
            await self._gone(proc, setup)
            raise
        # In a pod with its own user namespace the child we forked may hand the container
        # over to its own child (init.enter_pod_user_namespace) and exit: that one is ours
        # now (reparented: we are the child subreaper).
        handed = _handed_over_pid(lines)
        err = next((ln[6:] for ln in lines if ln.startswith("error ")), None)
        if err is not None or "ready" not in lines or (setup.done() and not handed):
            if err is None and not setup.done():
                # the report pipe closed first: give the reaper a moment to learn how it ended
                await asyncio.wait({setup}, timeout=1.0)
            message = f"creating container {key}: {err or _silent_end(lines, setup)}"
            self._abort(proc, setup, handed, message)
            await self._gone(proc, setup)
            raise errors.FailedPrecondition(message)
        if proc.spec.process.tty:
            try:
                self._open_late_tty(proc, handed or pid)
            except BaseException as exc:
                self._abort(proc, setup, handed, f"creating container {key}: its terminal: {exc}")
                await self._gone(proc, setup)
                raise
        # ready and waiting: from now on its end is the container's end
        if handed:
            proc.pid = handed
        else:
            self.reaper.unclaim(pid)
        # a set-up child that hands over at start gets no pidfd: nothing may join its
        # namespaces (it is in ours) until the container's process has replaced it
        self._track(proc, proc.pid, pidfd=not proc.handover)

    def _setup_ended(self, proc: Proc, task: asyncio.Task[None], setup: asyncio.Future[int], pipe: BinaryIO) -> None:
        """A background set-up ended (done callback, before anyone awaiting it resumes). Its
        failure was undone and kept in ``proc.setup_error`` for :meth:`start`; a task
        cancelled before its first step never ran its own undo, so that happens here."""
        if task.cancelled():
            if not proc.setup_error:
                with contextlib.suppress(OSError):
                    pipe.close()
                self._abort(proc, setup, 0, f"creating container {proc.key}: removed while being set up")
            return
        exc = task.exception()  # retrieved: it is reported by start, not as a lost task's error
        if exc is not None and not isinstance(exc, errors.EngineError):
            log.error("shim: setting up container %s failed: %s: %s", proc.key, type(exc).__name__, exc)

    def _abort(self, proc: Proc, setup: asyncio.Future[int], handed: int = 0, why: str = "") -> None:
        """Undo a failed create: the set-up process (and the one it handed over to, if any)
        is killed and reaped quietly, its stdio closed, its OOM watch ended. A create that
        answered before the set-up ended (``proc.setup``) keeps its entry, without a
        process, and ``why`` for its start; otherwise the entry goes."""
        if handed and not self.reaper.reaped_unclaimed(handed):  # reaped already: the pid may be reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(handed, signal.SIGKILL)
        if not setup.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        self._close_io(proc)
        self.oom.unwatch(proc.key)
        if proc.setup is None:
            self.procs.pop(proc.key, None)
        else:
            proc.pid = 0
            proc.setup_error = why or f"creating container {proc.key}: the set-up failed"

    @staticmethod
    async def _gone(proc: Proc, setup: asyncio.Future[int]) -> None:
        """After the undo of a background set-up: wait (bounded) until its killed child is
        reaped, so a failed start or a delete answers once the container's mounts (in the
        child's mount namespace) are gone. A create that fails answers at once, as before."""
        if proc.setup is None or setup.done():
            return
        with contextlib.suppress(BaseException):  # a second cancel: the first one is raised anyway
            await asyncio.wait({setup}, timeout=10)

    async def _await_setup(self, proc: Proc) -> None:
        """Wait for a created container's background set-up (create with ``early``); when it
        failed, the container ends without a process (exit 128, StartError, no exit event:
        the daemon records the failed start) and FailedPrecondition says why."""
        if proc.setup is not None and not proc.setup.done():
            await asyncio.wait({proc.setup})
        if proc.setup_error and proc.state == "created":
            self._start_failed(proc, proc.setup_error)
        if proc.setup_error:
            raise errors.FailedPrecondition(proc.setup_error)

    async def start(self, proc: Proc) -> None:
        """Let a created process exec; raises if execve fails (the container then ends 127).
        A set-up still running (create with ``early``) is awaited first; when it failed,
        FailedPrecondition says why ("creating container <id>: <reason>") and the container
        has ended (exit 128, StartError)."""
        if proc.spec.oci is not None:
            await self.oci.start(proc)
            return
        await self._await_setup(proc)
        if proc.state != "created" or proc.start_w < 0:
            raise errors.FailedPrecondition(f"container {proc.key} is {proc.state}, not created")
        proc.started_at_ns = time.time_ns()
        try:
            if proc.tty_slave >= 0:  # the container's terminal goes with the start
                sock = socket.socket(fileno=proc.start_w)
                try:
                    socket.send_fds(sock, [b"1"], [proc.tty_slave])
                finally:
                    sock.detach()
            else:
                os.write(proc.start_w, b"1")
        except BrokenPipeError:
            # it died while waiting (killed from outside: an OOM kill, or its cgroup's
            # processes killed by someone); its exit is recorded as it is reaped
            raise errors.FailedPrecondition(
                f"container {proc.key}: its process ended before it was started (killed while created)"
            ) from None
        finally:
            os.close(proc.start_w)
            proc.start_w = -1
        proc.state = "running"
        fd, proc.exec_report_r = proc.exec_report_r, -1
        # startContainer hooks run before the execve (runtime.shim.hookrun), each within its timeout
        grace = 5.0 + hook_seconds(proc.spec, "startContainer")
        message = await (self._hand_over(proc, fd, grace) if proc.handover else self._read_all(fd, grace))
        if message:
            raise errors.FailedPrecondition(f"starting container {proc.key}: {message}")

    async def restore(self, proc: Proc, plan: RestorePlan) -> None:
        """Start a created container by restoring criu images instead of letting its process
        exec (runtime.shim.restoreproc). Its set-up process is retired once the criu child
        is in the container's cgroups; the restored tree's root becomes ``proc.pid``, tracked
        as any container process, with fresh stdout/stderr pipes. Raises
        FailedPrecondition with criu's reason (the container is then exited, code 128)."""
        if proc.spec.oci is not None:
            raise errors.Unimplemented(f"container {proc.key}: restoring a checkpoint through an OCI runtime")
        await self._await_setup(proc)
        if proc.state != "created" or proc.start_w < 0:
            raise errors.FailedPrecondition(f"container {proc.key} is {proc.state}, not created")
        if proc.handover or proc.spec.process.tty or proc.spec.rootfs is None:
            raise errors.FailedPrecondition(
                f"container {proc.key}: a restore needs a container with its own PID namespace, no tty and a rootfs")
        io = make_stdio(proc.spec.process.stdin, False)
        (report_r, report_w), (go_r, go_w) = os.pipe(), os.pipe()
        try:
            pid = os.fork()
            if pid == 0:
                restoreproc.run_restore(proc.spec, plan, io.child, report_w, go_r)
        except BaseException:
            for fd in (report_r, report_w, go_r, go_w):
                os.close(fd)
            io.close_child()
            io.close_ours()
            raise
        os.close(report_w)
        os.close(go_r)
        io.close_child()
        criu = self.wait_child(pid)
        reader = asyncio.StreamReader()
        transport, _ = await self._loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(report_r, "rb", buffering=0))
        retired = False
        try:
            # deadlines with asyncio.timeout, not wait_for: it may swallow a cancel (gh-86296)
            async with asyncio.timeout(30):
                first = (await reader.readline()).decode(errors="replace").strip()
            if first != "joined":
                raise errors.FailedPrecondition(f"restoring container {proc.key}: {first[6:] or 'the child died'}")
            await self._retire_setup(proc)
            retired = True
            proc.log = CriLogFile(proc.spec.log_path) if proc.spec.log_path else None
            proc.io_done = asyncio.Event()
            proc.splitters.clear()
            self._attach_stdio(proc, io)
            proc.started_at_ns = time.time_ns()
            os.write(go_w, b"1")
            async with asyncio.timeout(plan.timeout):
                status = await asyncio.shield(criu)
            async with asyncio.timeout(5):
                output = (await reader.read(65536)).decode(errors="replace")
            if status != 0:
                # small files, read in place: the shim is single-threaded (it forks), no thread pool
                detail = restoreproc.failure_detail(plan.work_dir, output)
                raise errors.FailedPrecondition(
                    f"restoring container {proc.key}: criu restore failed ({_describe_status(status)}): {detail}")
            restored = restoreproc.restored_pid(plan.work_dir)
        except BaseException as exc:
            if not criu.done():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not retired:
                io.close_ours()
            self._start_failed(proc, str(exc))
            if isinstance(exc, (TimeoutError, OSError, ValueError)):
                raise errors.FailedPrecondition(f"restoring container {proc.key}: {exc or 'timed out'}") from None
            raise
        finally:
            transport.close()
            with contextlib.suppress(OSError):
                os.close(go_w)
        proc.state = "running"
        self._track(proc, restored)
        log.info("shim: container %s restored by criu, pid %d", proc.key, restored)

    async def _retire_setup(self, proc: Proc) -> None:
        """Kill a created container's waiting set-up process without recording its end as
        the container's: its stdio and pipes are closed, its exit collected quietly."""
        setup = proc.pid
        self.reaper.unclaim(setup)
        ended = self.wait_child(setup)
        if proc.pidfd >= 0:
            os.close(proc.pidfd)
            proc.pidfd = -1
        if not ended.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(setup, signal.SIGKILL)
            async with asyncio.timeout(10):
                await ended  # gone for good: its mounts (the overlay) with it
        self._close_io(proc)
        proc.open_outputs = 0

    def _start_failed(self, proc: Proc, why: str) -> None:
        """A start that failed before the container's process ran (a restore, or a set-up
        that failed after create answered): the container ended, with no process (the daemon
        records the StartError; nothing is reported here)."""
        now = time.time_ns()
        self._close_io(proc)
        self.oom.unwatch(proc.key)
        proc.exit = ExitStatus(exit_code=128, started_at_ns=proc.started_at_ns or now, finished_at_ns=now,
                               reason="StartError", message=why[:1024])
        proc.state = "exited"
        proc.exited.set()

    async def _hand_over(self, proc: Proc, report_r: int, grace: float = 5.0) -> str:
        """Start a container set up outside its PID namespace: its set-up child (``proc.pid``)
        forks the container's process into it and stops (runtime.shim.finalfork); that one,
        read from the kernel, becomes ``proc.pid`` (tracked, with a pidfd: reparented to us
        once the set-up child is killed). Returns why it could not run ("" when it was
        forked); when the set-up child fails before the fork its exit is the container's.
        Signals sent meanwhile (:meth:`kill`) go to the container's process afterwards."""
        setup = proc.pid
        proc.handing_over = True
        try:
            message = await self._read_all(report_r, grace)  # EOF: it closed the pipe to fork; or why not
            final = await asyncio.wait_for(self._final_child(setup, lambda: not self.reaper.claimed(setup)), 30)
        except BaseException:
            self._end_setup(setup, None)  # its end is the container's
            raise
        finally:
            proc.handing_over = False
        if final is not None:
            # it had a child, so it was alive and is not reaped: still ours to replace
            self.reaper.unclaim(setup)
            self.wait_child(setup)  # its SIGKILL is collected quietly
            self._track(proc, final)
            os.kill(setup, signal.SIGKILL)
        pending, proc.pending_signals = proc.pending_signals, []
        for sig in pending:
            self.kill(proc, sig)
        return message.strip()

    async def _read_all(self, fd: int, timeout: float) -> str:
        reader = asyncio.StreamReader()
        transport, _ = await self._loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            data = await asyncio.wait_for(reader.read(65536), timeout)
        except TimeoutError:
            data = b""  # still no EOF: exec succeeded but a child inherited nothing... treat as started
        finally:
            transport.close()
        return data.decode(errors="replace")

    async def spawn_exec(
        self, container: Proc, process: ProcessSpec, sink: OutputSink | None, stdin: bool
    ) -> Proc:
        """Start ``process`` inside the running container (ExecSync or a streaming exec).

        Set up out of the container's sight and spawned into it (runtime.shim.execproc). It
        gets the container's oom_score_adj and rlimits whatever ``process`` says, as runc
        exec does (the container's config), never the shim's own: the shim runs at the
        daemon's oom_score_adj (-999 in production). A container made by an OCI runtime
        execs through it (runtime.shim.ociproc)."""
        if container.spec.oci is not None:
            return await self.oci.spawn_exec(container, process, sink, stdin)
        if container.state != "running" or not container.pid or container.pidfd < 0:
            raise errors.FailedPrecondition(f"container {container.key} is not running")
        try:
            # its pid is its own: our child (or reparented to us), not reaped yet
            ns_flags = execproc.namespaces_to_join(container.pid)
        except OSError:
            raise errors.FailedPrecondition(f"container {container.key} is not running") from None
        own = container.spec.process
        process = dataclasses.replace(process, oom_score_adj=own.oom_score_adj, rlimits=own.rlimits)
        self._exec_seq += 1
        spec = LaunchSpec(
            container_id=f"exec:{self._exec_seq}",
            sandbox_id=container.spec.sandbox_id,
            process=process,
            namespaces=container.spec.namespaces,
            cgroup_procs=container.spec.cgroup_procs,
        )
        proc = Proc(key=spec.container_id, spec=spec)
        if sink is not None:
            proc.sinks.add(sink)
        report_r, report_w = os.pipe()
        # a tty from the container's own devpts, so that ttyname() of it names /dev/pts/N there
        root_fd = -1
        if process.tty:
            with contextlib.suppress(OSError):  # its pid is ours, not reaped: still that process
                root_fd = os.open(f"/proc/{container.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            stdio = self._open_stdio(proc, stdin, process.tty, root_fd)
        finally:
            if root_fd >= 0:
                os.close(root_fd)
        try:
            pid = os.fork()  # in our own PID namespace: the container cannot see it
            if pid == 0:
                execproc.run_exec(spec, container.pidfd, ns_flags, report_w, stdio)
        except BaseException:
            for fd in (report_r, report_w, *stdio):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._close_io(proc)
            raise
        for fd in {report_w, *stdio}:
            os.close(fd)
        setup = self.wait_child(pid)
        proc.started_at_ns = time.time_ns()
        try:
            exec_pid = await asyncio.wait_for(self._exec_handover(container, pid, report_r, setup), 30)
        except BaseException:
            self._end_setup(pid, setup)
            self._close_io(proc)
            raise
        proc.state = "running"
        self._track(proc, exec_pid)
        # The set-up child is stopped and ours: it goes, the exec process is reparented to
        # us (child subreaper); its status (SIGKILL) is collected as a helper's.
        os.kill(pid, signal.SIGKILL)
        return proc

    async def _exec_handover(self, container: Proc, pid: int, report_r: int, setup: asyncio.Future[int]) -> int:
        """The pid of the exec process the set-up child ``pid`` forked, read from the kernel
        (its only child), or FailedPrecondition with what went wrong."""
        # "spawning" then EOF (it closed the pipe to fork the exec process), or "error ..."
        lines = await self._read_report(report_r)
        err = next((ln[6:] for ln in lines if ln.startswith("error ")), None)
        if err is None and "spawning" in lines:
            final = await self._final_child(pid, setup.done)
            if final is not None:
                return final
        if not setup.done() and "spawning" not in lines:
            await setup  # it reported an error and exits
        raise errors.FailedPrecondition(f"exec in {container.key}: {err or 'set-up ended without reporting'}")

    async def _final_child(self, pid: int, ended: Callable[[], bool]) -> int | None:
        """The one child of the set-up child ``pid`` (runtime.shim.finalfork: it forks the
        final process and stops), from the kernel; None once ``ended()`` says the set-up
        child is gone without one. ``pid`` must be ours and not reaped."""
        while True:
            event = asyncio.Event()
            self.reaper.child_events.add(event)
            try:
                children = finalfork.children_of(pid)
                if len(children) > 1:
                    raise errors.FailedPrecondition(f"a set-up process made {len(children)} processes")
                if children:
                    return children[0]
                if ended():
                    return None
                await event.wait()  # the next SIGCHLD: it stopped (forked) or exited
            finally:
                self.reaper.child_events.discard(event)

    def _end_setup(self, pid: int, setup: asyncio.Future[int] | None) -> None:
        """Kill a set-up child that failed or timed out, and what it forked (its children are
        its own until it dies, then reparented to us: reaped quietly as helpers')."""
        if setup is not None and setup.done():
            return
        # Stopped first: a fork it is in is then either undone (kernel: copy_process gives
        # up on a pending signal) or already lists its child, so none escapes the kill.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        for child in finalfork.children_of(pid):
            self.wait_child(child)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def kill(self, proc: Proc, sig: int) -> None:
        """Signal the container's (or exec's) process. A container still being set up has no
        process of its own yet: its set-up is aborted instead (delete, pod shutdown)."""
        if proc.setup is not None and not proc.setup.done():
            proc.setup.cancel()
            return
        if proc.state == "exited" or not proc.pid:
            return
        if proc.handing_over:
            proc.pending_signals.append(sig)  # for the container's process, in a moment
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def _silent_end(lines: list[str], setup: asyncio.Future[int]) -> str:
    """Why a set-up process that reported no error failed, as far as the shim can tell: what
    it did report and how it ended (a signal names who to look for: an OOM kill, a kill of
    its cgroup, a crash)."""
    said = f"reported {' '.join(lines)!r}" if lines else "reported nothing"
    what = "ended before the start" if "ready" in lines else "ended without reporting ready"
    if not setup.done() or setup.cancelled():
        return f"setup process {what} ({said})"
    status = setup.result()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        how = f"killed by signal {sig} ({signal.Signals(sig).name if sig in signal.valid_signals() else '?'})"
    else:
        how = f"exit status {os.WEXITSTATUS(status)}"
    return f"setup process {what} ({said}; {how})"
