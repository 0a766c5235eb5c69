"""Containers made by an external OCI runtime (runc, crun), run by the pod shim.

For a container whose LaunchSpec carries ``oci`` (its pod's runtime handler names an OCI
runtime) the shim runs the runtime instead of forking the container's process itself, so
that the container is still the shim's child (exit status, CRI log, attach, OOM watch):

    create: shim ── fork ──▶ child: setsid, unshare(NEWNS), mounts slave (or shared for a
              bidirectional mount, the rootfs's parent then private), the overlay mounted at
              rootfs.path in that private namespace (never on the host), the container's stdio
              on 0-2 ──execve──▶ ``runc create --bundle B --pid-file P ID``
              runc passes its stdio through to the container's init ("pass-through" mode)
              and exits; the init, its orphan, is reparented to the shim (a child subreaper)
              and tracked as a native container's process (verified with runc 1.1.5 and
              crun 1.8.1; on a hybrid cgroup host that mount namespace shows the runtime an
              empty unified controller list, :func:`runtime.shim.ocichild.hide_hybrid_controllers`, or crun refuses).
              In a pod with its own user namespace the rootfs (over idmapped layers) and the
              binds are prepared as detached mounts and attached at mount points in
              /run/cri-shim-oci/<id> instead (runtime.shim.ocichild).
    start:  ``runc start ID``
    exec:   ``runc exec --detach --pid-file P --process J ID`` with the exec's stdio: the
              exec'd process, orphaned when runc exits, is reparented to the shim likewise;
              its exit status is the exec's.
    tty:    (a container's or an exec's, ``terminal: true`` in its process) runc makes the
              terminal inside the container (a pty of its own devpts, its controlling
              terminal) and sends the master, SCM_RIGHTS, to ``--console-socket``: a
              :class:`~runtime.shim.ociconsole.ConsoleSocket` the shim listens on (a fresh 0700 directory in the
              bundle, named through /proc/self/fd of that directory, removed afterwards).
              The shim accepts one connection without blocking its loop, takes one fd,
              checks that it is a pty master, and holds it as a native container's
              (ProcessTable.attach_tty: output to the CRI log and attach, stdin, resize).
              runc's own stdio is then /dev/null; its errors are in its log.
    delete: ``runc delete --force ID`` (its state under ``--root`` and its cgroups).
    cgroups: under the systemd cgroup driver each of these commands gets ``--systemd-cgroup``
              (OciLaunch.systemd_cgroup): create starts the container's scope around the
              init (runtime.oci.cgroups), delete stops it; the OOM watch of its memory.events
              begins once create has made it.
    hooks:  the container's CDI hooks are in config.json; the runtime runs them inside these
              commands (create: prestart, createRuntime, createContainer, and with runc 1.1
              poststart; start: crun's poststart; delete: poststop), whose deadlines grow by
              OciLaunch.hook_seconds. startContainer hooks run in the container's init after
              start released it, just before it execs the process (runc 1.1, crun 1.8): start
              does not wait for them, and one that fails ends the container instead of failing
              StartContainer.
    kill:   signals go to the init's pid, as for any container (runc kill would do the same).

The runtime's own diagnostics go to ``<bundle>/runtime.log`` (JSON lines, --log); a failure
names its last error lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import errors
from runtime.linux import caps as kcaps
from runtime.model.launch import LaunchSpec, OciLaunch, ProcessSpec
from runtime.oci.bundle import oci_process
from runtime.shim import ocipidns
from runtime.shim.logwriter import CriLogFile
from runtime.shim.ocichild import run_runtime_child
from runtime.shim.ociconsole import ConsoleSocket

if TYPE_CHECKING:
    from runtime.shim.procs import OutputSink, Proc, ProcessTable

log = logging.getLogger("cri_shim.shim")

LOG_FILE = "runtime.log"
INIT_PID_FILE = "init.pid"
#: how long one runtime command may take (create mounts and joins cgroups: seconds at most)
RUNTIME_TIMEOUT = 60.0
#: how long a runtime that exited successfully may leave its terminal's master unsent
CONSOLE_TIMEOUT = 10.0


def runtime_argv(oci: OciLaunch, *args: str) -> list[str]:
    """The runtime's command line: global options (state root, JSON log in the bundle,
    the cgroup driver), then ``args``."""
    argv = [oci.runtime, "--root", oci.root, "--log", os.path.join(oci.bundle, LOG_FILE), "--log-format", "json"]
    if oci.systemd_cgroup:
        argv.append("--systemd-cgroup")
    return argv + list(args)


def runtime_errors(bundle: str, since: int = 0, lines: int = 4) -> str:
    """The last ``lines`` error messages of the runtime's log written after byte ``since``,
    joined by "; " ("" when there are none)."""
    try:
        with open(os.path.join(bundle, LOG_FILE), "rb") as f:
            f.seek(since)
            data = f.read(1 << 20)
    except OSError:
        return ""
    found: list[str] = []
    for raw in data.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            msg = _unwrap(str(entry.get("msg", "")).strip())
            if msg and (not found or found[-1] != msg):
                found.append(msg)
    return "; ".join(found[-lines:])


def _unwrap(msg: str) -> str:
    """The message of a log entry whose message is itself a JSON log entry: crun 1.8 logs a
    failure of the container's init (a hook's, say) as ``{"msg": "{\\"msg\\": ...}"}``, then
    the inner entry again on its own."""
    for _ in range(4):
        if not msg.startswith("{"):
            break
        try:
            inner = json.loads(msg)
        except ValueError:
            break
        if not isinstance(inner, dict) or "msg" not in inner:
            break
        msg = str(inner["msg"]).strip()
    return msg


def _log_size(bundle: str) -> int:
    try:
        return os.stat(os.path.join(bundle, LOG_FILE)).st_size
    except OSError:
        return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _read_report(fd: int) -> str:
    """What a child wrote on its report pipe before it exec'd or died (its write end is
    closed: at exec, CLOEXEC, or at exit); closes ``fd``."""
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        text = b"".join(chunks).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return text[6:] if text.startswith("error ") else text


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise errors.FailedPrecondition(f"the OCI runtime wrote no pid file {path} ({exc})") from None


class OciRunner:
    """Runs one pod's OCI runtime commands on behalf of its :class:`ProcessTable`."""

    def __init__(self, table: ProcessTable) -> None:
        self.table = table

    async def _spawn(self, argv: list[str], stdio: tuple[int, int, int], spec: LaunchSpec | None = None,
                     timeout: float = RUNTIME_TIMEOUT, keep: tuple[int, ...] = ()) -> tuple[int, str]:
        """Run the runtime with ``stdio`` (the child's ends, closed here) and ``keep``
        (inherited, not closed); returns its wait status and what its child reported before
        exec. Killed after ``timeout`` (TimeoutError)."""
        report_r, report_w = os.pipe()
        try:
            pid = os.fork()
            if pid == 0:
                run_runtime_child(argv, stdio, report_w, spec, keep)
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
            for fd in set(stdio):
                with contextlib.suppress(OSError):
                    os.close(fd)
        ended = self.table.wait_child(pid)
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it may swallow a cancel (gh-86296)
                status = await asyncio.shield(ended)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.close(report_r)
            raise
        return status, _read_report(report_r)

    async def _spawn_for_tty(self, oci: OciLaunch, args: list[str], spec: LaunchSpec | None = None,
                             timeout: float = RUNTIME_TIMEOUT) -> tuple[int, str, int]:
        """Run the runtime command ``args`` (the container id last) for a process with a new
        terminal: ``--console-socket`` of a :class:`ConsoleSocket` before the id, the runtime's
        stdio /dev/null (its errors are in its log). Returns its status, the reason of a
        failure and the pty master it sent (ours; -1 when it failed). TimeoutError from
        :meth:`_spawn`; FailedPrecondition when it succeeded but sent no pty master."""
        console = ConsoleSocket(oci.bundle)
        handed = False
        receiving: asyncio.Future[int] | None = None
        try:
            since = _log_size(oci.bundle)
            argv = runtime_argv(oci, *args[:-1], "--console-socket", console.address, args[-1])
            receiving = asyncio.ensure_future(console.receive())  # runc's init sends it before create exits
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            status, report = await self._spawn(argv, (null, null, null), spec, timeout, console.fds)
            if status != 0:
                return status, report or runtime_errors(oci.bundle, since) or "no reason in its log", -1
            try:
                async with asyncio.timeout(CONSOLE_TIMEOUT):
                    master = await asyncio.shield(receiving)
            except TimeoutError:
                raise errors.FailedPrecondition(f"{os.path.basename(oci.runtime)} {args[0]} sent no terminal "
                                                f"within {CONSOLE_TIMEOUT:g}s") from None
            except OSError as exc:
                raise errors.FailedPrecondition(f"{os.path.basename(oci.runtime)} {args[0]}: its terminal "
                                                f"is refused: {exc}") from None
            handed = True
            return 0, "", master
        finally:
            if receiving is not None:
                if not receiving.done():
                    receiving.cancel()
                elif not receiving.cancelled() and receiving.exception() is None and not handed:
                    os.close(receiving.result())
            console.close()

    async def run(self, oci: OciLaunch, *args: str, timeout: float = RUNTIME_TIMEOUT) -> tuple[int, str]:
        """Run a runtime command without stdio of interest (start, delete): its status and
        its output (stdout and stderr, up to 64 KiB), or the error of its log."""
        out_r, out_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        since = _log_size(oci.bundle)
        try:
            reading = asyncio.ensure_future(_read_pipe(out_r))
            try:
                status, report = await self._spawn(runtime_argv(oci, *args), (null, out_w, out_w), timeout=timeout)
            except TimeoutError:
                raise errors.FailedPrecondition(f"{os.path.basename(oci.runtime)} {args[0]} timed out") from None
            async with asyncio.timeout(5):
                output = await reading
        finally:
            if not reading.done():
                reading.cancel()
        detail = report or runtime_errors(oci.bundle, since) or output.strip()
        return status, detail

    async def create(self, spec: LaunchSpec) -> Proc:
        """``runtime create`` the container of ``spec`` with its stdio held by the table;
        its init (reparented to us) becomes the Proc's pid. FailedPrecondition with the
        runtime's reason (everything it made deleted again)."""
        from runtime.shim.procs import Proc, make_stdio, oom_kill_count

        oci = spec.oci
        assert oci is not None
        table = self.table
        if spec.container_id in table.procs:
            raise errors.AlreadyExists(f"container {spec.container_id} already exists in this pod")
        proc = Proc(key=spec.container_id, spec=spec)
        proc.log = CriLogFile(spec.log_path) if spec.log_path else None
        pid_file = Path(oci.bundle) / INIT_PID_FILE
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        table.procs[proc.key] = proc
        since = _log_size(oci.bundle)
        args = ["create", "--bundle", oci.bundle, "--pid-file", str(pid_file), spec.container_id]
        held = contextlib.ExitStack()
        try:
            try:
                # the runtime runs the config's prestart, createRuntime and createContainer
                # hooks (runc 1.1 its poststart ones too) before create returns
                timeout = RUNTIME_TIMEOUT + oci.hook_seconds
                if spec.namespaces.pid_of:  # joins a PID namespace: named by our fd of it
                    held.enter_context(ocipidns.joined_by_fd(oci.bundle, *table._pid_target(spec.namespaces)))
                if spec.process.tty:  # a terminal of the container's devpts, its master sent to us
                    status, detail, master = await self._spawn_for_tty(oci, args, spec, timeout)
                    if master >= 0:
                        table.attach_tty(proc, master, spec.process.stdin)
                else:
                    io = make_stdio(spec.process.stdin, False)
                    table._attach_stdio(proc, io)  # read its output from the start: runc's errors land there too
                    status, report = await self._spawn(runtime_argv(oci, *args), io.child, spec, timeout)
                    detail = report or runtime_errors(oci.bundle, since) or "no reason in its log"
            except TimeoutError:
                raise errors.FailedPrecondition(
                    f"creating container {spec.container_id}: {oci.runtime} create timed out") from None
            except errors.FailedPrecondition as exc:
                raise errors.FailedPrecondition(f"creating container {spec.container_id}: {exc}") from None
            finally:
                held.close()  # the runtime has joined the namespace (or failed)
            if status != 0:
                raise errors.FailedPrecondition(
                    f"creating container {spec.container_id}: {oci.runtime} create failed ({_describe(status)}): "
                    f"{detail}")
            pid = _read_pid(pid_file)
            # Only now: with --systemd-cgroup the runtime's create made the container's
            # scope, whose memory.events did not exist before (runtime.oci.cgroups). The
            # container's process has not run yet (its init waits for start), so nothing
            # of its own is missed; the count so far is its baseline (0 in a new scope).
            proc.oom_base = oom_kill_count(spec.memory_cgroup)
            table.oom.watch(proc.key, spec.memory_cgroup)
        except BaseException:
            table._close_io(proc)
            table.oom.unwatch(proc.key)
            table.procs.pop(proc.key, None)
            with contextlib.suppress(Exception):
                await self.delete(oci, spec.container_id)
            raise
        table._track(proc, pid)
        log.info("shim: container %s created by %s, init pid %d", proc.key, oci.runtime, pid)
        return proc

    async def start(self, proc: Proc) -> None:
        """``runtime start``: the init execs the container's process. FailedPrecondition
        with the runtime's reason (the init is then killed: the container ends)."""
        oci = proc.spec.oci
        assert oci is not None
        if proc.state != "created":
            raise errors.FailedPrecondition(f"container {proc.key} is {proc.state}, not created")
        proc.started_at_ns = time.time_ns()
        proc.state = "running"  # before: an immediate exit must not be overwritten
        # its startContainer (and crun's poststart) hooks run inside it
        status, detail = await self.run(oci, "start", proc.key, timeout=RUNTIME_TIMEOUT + oci.hook_seconds)
        if status != 0:
            self.table.kill(proc, signal.SIGKILL)
            raise errors.FailedPrecondition(
                f"starting container {proc.key}: {oci.runtime} start failed ({_describe(status)}): {detail}")

    async def delete(self, oci: OciLaunch, container_id: str) -> None:
        """``runtime delete --force``: its state and cgroups; a container it does not know
        is fine (idempotent). Failures are logged, not raised: the daemon's removal goes on."""
        status, detail = await self.run(oci, "delete", "--force", container_id,
                                        timeout=RUNTIME_TIMEOUT + oci.hook_seconds)
        if status != 0 and "does not exist" not in detail and "not exist" not in detail:
            log.error("shim: %s delete --force %s failed (%s): %s", oci.runtime, container_id, _describe(status),
                      detail)

    async def spawn_exec(self, container: Proc, process: ProcessSpec, sink: OutputSink | None,
                         stdin: bool) -> Proc:
        """``runtime exec --detach`` of ``process`` in the running ``container``: the exec'd
        process, reparented to us, is tracked as an exec Proc (its exit is the exec's)."""
        from runtime.shim.procs import Proc, make_stdio

        oci = container.spec.oci
        assert oci is not None
        table = self.table
        if container.state != "running" or not container.pid:
            raise errors.FailedPrecondition(f"container {container.key} is not running")
        own = container.spec.process
        process = dataclasses.replace(process, oom_score_adj=own.oom_score_adj, rlimits=own.rlimits)
        table._exec_seq += 1
        key = f"exec:{table._exec_seq}"
        spec = LaunchSpec(container_id=key, sandbox_id=container.spec.sandbox_id, process=process,
                          namespaces=container.spec.namespaces, cgroup_procs=container.spec.cgroup_procs)
        proc = Proc(key=key, spec=spec)
        if sink is not None:
            proc.sinks.add(sink)
        base = Path(oci.bundle) / f"exec-{table._exec_seq}"
        process_file, pid_file = base.with_suffix(".json"), base.with_suffix(".pid")
        fd = os.open(process_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(oci_process(process, kcaps.last_cap()), f)
        since = _log_size(oci.bundle)
        args = ["exec", "--detach", "--pid-file", str(pid_file), "--process", str(process_file), container.key]
        try:
            proc.started_at_ns = time.time_ns()
            try:
                if process.tty:  # a terminal of the container's devpts, its master sent to us
                    status, detail, master = await self._spawn_for_tty(oci, args, timeout=30)
                    if master >= 0:
                        table.attach_tty(proc, master, stdin)
                else:
                    io = make_stdio(stdin, False)
                    table._attach_stdio(proc, io)
                    status, report = await self._spawn(runtime_argv(oci, *args), io.child, timeout=30)
                    detail = report or runtime_errors(oci.bundle, since) or "no reason in its log"
            except TimeoutError:
                raise errors.FailedPrecondition(f"exec in {container.key}: {oci.runtime} exec timed out") from None
            except errors.FailedPrecondition as exc:
                raise errors.FailedPrecondition(f"exec in {container.key}: {exc}") from None
            if status != 0:
                raise errors.FailedPrecondition(
                    f"exec in {container.key}: {oci.runtime} exec failed ({_describe(status)}): {detail}")
            pid = _read_pid(pid_file)
        except BaseException:
            table._close_io(proc)
            raise
        finally:
            for path in (process_file, pid_file):
                with contextlib.suppress(OSError):
                    path.unlink()
        proc.state = "running"
        table._track(proc, pid)
        return proc


async def _read_pipe(fd: int, limit: int = 65536) -> str:
    """Everything written to the pipe ``fd`` until EOF (at most ``limit`` bytes kept);
    closes ``fd``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(fd, "rb", buffering=0))
    data = bytearray()
    try:
        while chunk := await reader.read(65536):
            if len(data) < limit:
                data += chunk[: limit - len(data)]
    finally:
        transport.close()
    return data.decode(errors="replace")
