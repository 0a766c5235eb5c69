"""The pod shim process: serves the daemon on a unix socket and parents the pod's processes.

Requests are the dataclasses of runtime.shim.protocol (JSON lines, runtime.shim.wire), each
dispatched by its type to an ``op_*`` method that answers with the typed reply: Ping,
CreateNamespaces, PidHolder, Precreate, Create, Start, Kill, Wait, State, ListProcs,
ReopenLog, Delete, ExecSync, Shutdown; PortConnect and NetlinkSocket reply with an fd; Subscribe is followed
by exit events as lines, Attach / ExecSession by binary frames. An error travels as
runtime.errorcodec's payload, so the daemon raises the same class.

The shim is single-threaded (asyncio without executors: the kernel refuses setns in a
multithreaded process), a child subreaper, in its own session, ignoring terminal signals,
and it keeps running when the daemon dies. One process may host several pods
(runtime.shim.group, ``Adopt``), each with its own socket and a ShimServer of its own;
``shutdown`` ends the pod it came for (its processes killed, its socket removed), and the
process ends with its last pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime import errors
from runtime.errorcodec import encode_error
from runtime.linux import libc
from runtime.shim import nsinit, pidholder, wire
from runtime.shim.procs import Proc, ProcessTable
from runtime.shim.protocol import (
    SHIM_PROTOCOL,
    Ack,
    Adopt,
    Attach,
    Connected,
    Create,
    CreateNamespaces,
    Delete,
    ExecSession,
    ExecSync,
    ExecSyncResult,
    ExitEvent,
    Kill,
    ListProcs,
    NamespacesResult,
    NetlinkSocket,
    Pid,
    PidHolder,
    Ping,
    PortConnect,
    Precreate,
    ProcPhase,
    ProcState,
    ReopenLog,
    Restore,
    ShimInfo,
    ShimRequest,
    Shutdown,
    Start,
    State,
    Subscribe,
    Subscribed,
    Wait,
    decode_request,
    event_line,
)
from runtime.shim.reaper import ChildReaper
from runtime.shim.stdio import ExecSyncCollector, serve_session
from runtime.store.codec import to_plain

if TYPE_CHECKING:
    from runtime.shim.group import ShimGroup

log = logging.getLogger("cri_shim.shim")


class ShimServer:
    """One pod of a shim process: its socket, process table, PID holder and subscribers. The
    process around it (subreaper, signals, the one reaper, the other pods it hosts) is its
    :class:`runtime.shim.group.ShimGroup`."""

    def __init__(self, sandbox_id: str, socket_path: Path, proc_pidns: bool | None = None,
                 group: ShimGroup | None = None) -> None:
        """``proc_pidns``: as for ProcessTable (None: the kernel is asked). ``group``: the
        process hosting this pod (None: :meth:`run` makes one around it)."""
        self.sandbox_id = sandbox_id
        self.socket_path = socket_path
        self._proc_pidns = proc_pidns
        self.group = group
        self.table: ProcessTable | None = None
        self._subscribers: set[asyncio.StreamWriter] = set()
        self._holder_pid = 0
        self._server: asyncio.AbstractServer | None = None
        self._port_connects = 0
        self._stop_task: asyncio.Task[None] | None = None
        #: the request/reply operations, by request type (sessions, subscribe and
        #: port_connect hold their connection: see _client)
        self.ops: dict[type[ShimRequest[Any]], Callable[[Any], Awaitable[Any]]] = {
            Ping: self.op_ping, CreateNamespaces: self.op_create_namespaces, PidHolder: self.op_pid_holder,
            Precreate: self.op_precreate, Create: self.op_create, Start: self.op_start, Restore: self.op_restore,
            Kill: self.op_kill,
            Wait: self.op_wait, State: self.op_state, ListProcs: self.op_list, ReopenLog: self.op_reopen_log,
            Delete: self.op_delete, ExecSync: self.op_exec_sync, Shutdown: self.op_shutdown, Adopt: self.op_adopt,
        }

    # -- life cycle ---------------------------------------------------------------------------

    async def run(self, ready_fd: int = -1) -> None:
        """Run this pod's shim as a process of its own (a group of one, which may adopt
        more): returns once every pod it hosts has stopped."""
        from runtime.shim.group import ShimGroup

        self.group = ShimGroup(self._proc_pidns)
        await self.group.run(self, ready_fd)

    async def open(self, reaper: ChildReaper) -> None:
        """Listen on the pod's socket (replacing a stale one), its table routed by ``reaper``."""
        self.table = ProcessTable(self._on_exit, self._proc_pidns, reaper=reaper)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.socket_path), limit=wire.MAX_LINE)
        os.chmod(self.socket_path, 0o600)

    def stop(self) -> asyncio.Task[None]:
        """End the pod (idempotent): its processes are killed, its socket closed, then the
        group is told (the process exits with its last pod)."""
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self._shutdown())
        return self._stop_task

    async def _shutdown(self) -> None:
        try:
            await self._end_pod()
        finally:
            if self.group is not None:
                self.group.pod_stopped(self.sandbox_id)

    async def _end_pod(self) -> None:
        assert self.table is not None
        for container_id in list(self.table.precreated):
            self.table.discard_precreated(container_id)
        for proc in list(self.table.procs.values()):
            self.table.kill(proc, signal.SIGKILL)
        if self._holder_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._holder_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(p.ended for p in self.table.procs.values()):
            await asyncio.sleep(0.02)
        if self._server is not None:
            self._server.close()
        for w in list(self._subscribers):
            w.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # -- events -------------------------------------------------------------------------------

    def _on_exit(self, proc: Proc) -> None:
        if proc.key.startswith("exec:") or proc.exit is None:
            return
        line = wire.encode(event_line(ExitEvent(proc.key, proc.exit)))
        for w in list(self._subscribers):
            if w.is_closing():
                self._subscribers.discard(w)
            else:
                w.write(line)

    # -- connections --------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                msg = await wire.read_message(reader)
                if msg is None:
                    return
                try:
                    req = decode_request(msg)
                except errors.EngineError as exc:
                    writer.write(wire.encode({"id": msg.get("id"), "error": encode_error(exc)}))
                    await writer.drain()
                    continue
                if isinstance(req, (Attach, ExecSession)):
                    await self._session(req, reader, writer)
                    return
                if isinstance(req, Subscribe):
                    await self._subscribe(reader, writer)
                    return
                if isinstance(req, (PortConnect, NetlinkSocket)):
                    await self._port_connect(req, reader, writer)
                    return
                try:
                    result = await self.ops[type(req)](req)
                    writer.write(wire.encode({"id": msg.get("id"), "result": to_plain(result)}))
                except Exception as exc:
                    if not isinstance(exc, errors.EngineError):
                        log.exception("shim op %s failed", msg.get("op"))
                    writer.write(wire.encode({"id": msg.get("id"), "error": encode_error(exc)}))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _proc(self, container_id: str) -> Proc:
        assert self.table is not None
        proc = self.table.procs.get(container_id)
        if proc is None:
            raise errors.NotFound(f"container {container_id} is not known to the pod shim")
        return proc

    # -- operations ---------------------------------------------------------------------------

    async def op_ping(self, req: Ping) -> ShimInfo:
        return ShimInfo(os.getpid(), self.sandbox_id, SHIM_PROTOCOL)

    async def op_create_namespaces(self, req: CreateNamespaces) -> NamespacesResult:
        """Made here, on the event loop's thread, which then returns to the shim's own
        namespaces (nsinit.make_namespaces restores them whatever happens). net, ipc and uts
        are per thread, so no other thread of ours ever stands in them, and the pins are bind
        mounts in the mount namespace we keep, so they outlive the call.

        Measured: forking a child for it (as before shim groups made a shim host several pods)
        cost RunPodSandbox 10-18 ms on a loaded 2-core machine against ~7 ms in the shim
        itself: the fork of a Python shim and the wait for the child. The loop is held a few
        milliseconds (loopback, the veth's netlink, the pins), as a fork held it too.

        Should the return to our own namespaces ever fail, this process must not serve
        another pod from the wrong ones: it ends at once (its pods see their shim die, as
        from any crash)."""
        own = _own_namespaces()
        try:
            return nsinit.make_namespaces(req.request)
        except OSError as exc:
            raise errors.FailedPrecondition(f"creating pod namespaces: {exc.strerror or exc}") from None
        finally:
            if _own_namespaces() != own:
                log.critical("could not return to the shim's own namespaces after making a pod's: exiting")
                os._exit(70)

    async def op_pid_holder(self, req: PidHolder) -> Pid:
        assert self.table is not None
        if not req.pause:
            raise errors.FailedPrecondition("no pause binary named for the pod PID holder (pods.pause_binary)")
        try:
            self._holder_pid = pidholder.start_pid_holder(req.pause, req.user_ns or "")
            self.table.set_holder(self._holder_pid)  # before anything can reap it
        except OSError as exc:
            raise errors.FailedPrecondition(f"creating the pod PID namespace: {exc}") from None
        return Pid(self._holder_pid)

    async def op_precreate(self, req: Precreate) -> Pid:
        """Fork a container's process ahead of ``create`` (it waits for the spec)."""
        assert self.table is not None
        pid = self.table.precreate(req.container_id, req.namespaces, tuple(req.cgroup_procs), req.stdin, req.tty)
        return Pid(pid)

    async def op_create(self, req: Create) -> ProcState:
        """Answered once the set-up child has the spec when the daemon asks ``early`` (its
        set-up's outcome comes with ``start``; protocol 6), else once it is ready."""
        assert self.table is not None
        proc = await self.table.create(req.spec, early=req.early)
        return proc_state(proc)

    async def op_start(self, req: Start) -> ProcState:
        assert self.table is not None
        proc = self._proc(req.container_id)
        await self.table.start(proc)
        return proc_state(proc)

    async def op_restore(self, req: Restore) -> ProcState:
        assert self.table is not None
        proc = self._proc(req.container_id)
        await self.table.restore(proc, req.plan)
        return proc_state(proc)

    async def op_kill(self, req: Kill) -> ProcState:
        assert self.table is not None
        proc = self._proc(req.container_id)
        self.table.kill(proc, req.signal)
        return proc_state(proc)

    async def op_wait(self, req: Wait) -> ProcState:
        proc = self._proc(req.container_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(req.timeout or None):  # wait_for may swallow a cancel (gh-86296)
                await proc.exited.wait()
        return proc_state(proc)

    async def op_state(self, req: State) -> ProcState:
        return proc_state(self._proc(req.container_id))

    async def op_list(self, req: ListProcs) -> tuple[ProcState, ...]:
        assert self.table is not None
        return tuple(proc_state(p) for p in self.table.procs.values())

    async def op_reopen_log(self, req: ReopenLog) -> ProcState:
        proc = self._proc(req.container_id)
        if proc.state != "running":
            raise errors.FailedPrecondition(f"container {proc.key} is not running")
        if proc.log is not None:
            try:
                proc.log.reopen()
            except OSError as exc:
                raise errors.FailedPrecondition(f"reopening log {proc.log.path}: {exc.strerror}") from None
        return proc_state(proc)

    async def op_delete(self, req: Delete) -> Ack:
        """Forget an exited (or never started) container; kills a created one first."""
        assert self.table is not None
        self.table.discard_precreated(req.container_id)
        proc = self.table.procs.get(req.container_id)
        if proc is None:
            return Ack()
        if proc.state == "running":
            raise errors.FailedPrecondition(f"container {proc.key} is still running")
        if proc.setup is not None and not proc.setup.done():
            self.table.kill(proc, signal.SIGKILL)  # aborts the set-up: nothing may outlive the entry
            await asyncio.wait({proc.setup}, timeout=10)
        if not proc.ended:  # created and waiting for its start
            self.table.kill(proc, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await proc.exited.wait()
        self.table.procs.pop(proc.key, None)
        return Ack()

    async def op_exec_sync(self, req: ExecSync) -> ExecSyncResult:
        assert self.table is not None
        container = self._proc(req.container_id)
        process = req.process
        collector = ExecSyncCollector()
        proc = await self.table.spawn_exec(container, process, collector, stdin=False)
        timeout = req.timeout or None
        try:
            await asyncio.wait_for(proc.exited.wait(), timeout)
        except TimeoutError:
            self.table.kill(proc, signal.SIGKILL)
            await proc.exited.wait()
            raise errors.DeadlineExceeded(
                f"command {list(process.args)!r} timed out after {timeout:g}s and was killed"
            ) from None
        status = proc.exit
        assert status is not None
        return ExecSyncResult(status.exit_code, bytes(collector.out[1]), bytes(collector.out[2]))

    async def op_shutdown(self, req: Shutdown) -> Ack:
        """This pod only: its socket goes once its processes are gone (the daemon waits for
        that, or for the process's exit when it was the last pod)."""
        asyncio.get_running_loop().call_soon(self.stop)
        return Ack()

    async def op_adopt(self, req: Adopt) -> ShimInfo:
        """Host another pod in this process (runtime.shim.group)."""
        assert self.group is not None
        await self.group.adopt(req)
        return ShimInfo(os.getpid(), req.sandbox_id, SHIM_PROTOCOL)

    # -- long-lived connections ---------------------------------------------------------------

    async def _subscribe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.table is not None
        # Replay the current exits so a daemon that was down catches up.
        for proc in self.table.procs.values():
            if proc.exit is not None:
                writer.write(wire.encode(event_line(ExitEvent(proc.key, proc.exit))))
        writer.write(wire.encode(event_line(Subscribed())))
        self._subscribers.add(writer)
        try:
            await writer.drain()
            await reader.read()  # until the daemon closes
        finally:
            self._subscribers.discard(writer)

    async def _port_connect(self, req: PortConnect | NetlinkSocket, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        """Connect to a port in the pod (or make a netlink socket there) from a forked child and
        pass the socket back.
        At most wire.MAX_PORT_CONNECTS at once (more are refused at once); the child is killed when
        the connect outlives its timeout or the daemon hangs up first (its client is gone)."""
        assert self.table is not None
        if self._port_connects >= wire.MAX_PORT_CONNECTS:
            message = f"{wire.MAX_PORT_CONNECTS} port-forward connections are already being opened in this pod"
            writer.write(wire.encode({"error": encode_error(errors.ResourceExhausted(message))}))
            await writer.drain()
            return
        try:
            asked = req.timeout if isinstance(req, PortConnect) else wire.PORT_CONNECT_TIMEOUT
            timeout = min(wire.PORT_CONNECT_TIMEOUT, max(0.1, float(asked)))
        except (TypeError, ValueError):
            timeout = wire.PORT_CONNECT_TIMEOUT
        self._port_connects += 1
        try:
            await self._port_connect_child(req, timeout, reader, writer)
        finally:
            self._port_connects -= 1

    async def _port_connect_child(
        self, req: PortConnect | NetlinkSocket, timeout: float, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        assert self.table is not None
        sock: socket.socket = writer.get_extra_info("socket")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        pid = os.fork()
        if pid == 0:
            parent.close()
            if isinstance(req, NetlinkSocket):
                nsinit.netlink_in_netns(req.netns, child.detach())
            nsinit.connect_in_netns(req.netns, req.host, int(req.port), child.detach(), timeout)
        child.close()
        done = self.table.wait_child(pid)
        loop = asyncio.get_running_loop()
        parent.setblocking(False)
        fut: asyncio.Future[None] = loop.create_future()
        hangup = asyncio.ensure_future(reader.read(1))  # the daemon sends nothing more: EOF
        try:
            loop.add_reader(parent.fileno(), lambda: None if fut.done() else fut.set_result(None))
            waiting: set[asyncio.Future[Any]] = {fut, hangup}
            try:
                await asyncio.wait(waiting, timeout=timeout + 2, return_when=asyncio.FIRST_COMPLETED)
            finally:
                loop.remove_reader(parent.fileno())
            if not fut.done():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return
            data, fds, _, _ = socket.recv_fds(parent, 4096, 1)
        finally:
            hangup.cancel()
            parent.close()
            await done
        raw = sock.dup()
        try:
            raw.setblocking(True)
            if fds and data == b"ok":
                socket.send_fds(raw, [wire.encode({"result": to_plain(Connected())})], fds)
            else:
                text = data.decode(errors="replace").removeprefix("error ").strip() or "connect failed"
                raw.sendall(wire.encode({"error": encode_error(errors.Unavailable(text))}))
        finally:
            raw.close()
            for fd in fds:
                os.close(fd)

    async def _session(
        self, req: Attach | ExecSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Attach or exec session: frames both ways until the process ends or the peer leaves
        (runtime.shim.stdio)."""
        assert self.table is not None
        try:
            container = self._proc(req.container_id)
        except errors.NotFound as exc:
            writer.write(wire.encode({"error": encode_error(exc)}))
            await writer.drain()
            return
        await serve_session(self.table, container, req, reader, writer)


def _own_namespaces() -> tuple[int, ...]:
    """The inodes of the calling thread's net, ipc and uts namespaces."""
    return tuple(os.stat(f"/proc/thread-self/ns/{kind}").st_ino for kind in ("net", "ipc", "uts"))


def proc_state(proc: Proc) -> ProcState:
    """The typed reply for one process of the table."""
    return ProcState(proc.key, proc.pid, ProcPhase(proc.state), proc.created_at_ns, proc.started_at_ns, proc.exit)


def main(sandbox_id: str, socket_path: str, ready_fd: int, log_path: str) -> None:
    """Shim entry point after the factory forked us (already in our own session)."""
    libc.set_process_name(f"shim-{sandbox_id[:10]}")
    if not logging.getLogger().handlers:  # the factory configured it already (stderr = our log)
        logging.basicConfig(
            filename=log_path or None,
            level=logging.INFO,
            format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        )
    asyncio.run(ShimServer(sandbox_id, Path(socket_path)).run(ready_fd))
