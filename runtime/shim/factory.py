"""The shim factory: forks pod shims from a pre-imported, frozen interpreter.

Measured here (docs/ARCHITECTURE.md §2): a fresh Python process costs ~18 MB PSS, a fork of a
pre-imported template ~3.3 MB, because the interpreter's pages stay shared. So the daemon
starts this factory once per state directory; it imports everything a shim runs, calls
``gc.freeze()`` (the collector then never touches, and so never copies, those pages), and
forks one shim per pod on request.

The factory is single-threaded (it forks) and outlives a daemon restart, so it stays the
parent that reaps the shims; shims never depend on it (they keep running if it dies).

Protocol on its unix socket, one JSON line each way:
  {"op": "ping"}                      -> {"pid": ..., "code": <code hash>}
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
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from runtime.linux import libc
from runtime.shim.version import code_hash

SPAWN_TIMEOUT = 20.0


def _preload() -> None:
    """Import what a shim runs, so forked shims share these pages."""
    import asyncio
    import asyncio.unix_events  # noqa: F401
    import base64  # noqa: F401
    import fcntl  # noqa: F401
    import pty  # noqa: F401
    import resource  # noqa: F401
    import termios  # noqa: F401

    import runtime.shim.nsinit
    import runtime.shim.pidholder
    import runtime.shim.server

    with contextlib.suppress(ImportError):
        import runtime.network.podside  # noqa: F401


LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def _warm_up(workdir: str) -> None:
    """Run a shim in this process once (server, client requests, shutdown) before freezing.

    Measured (bench/lifecycle.py): what a forked shim costs is the pages it dirties. Code run
    for the first time writes into shared pages (CPython 3.11 specialises bytecode in place,
    builds caches and lazily creates objects); doing that once here, before ``gc.freeze()``
    and fork, leaves those pages shared by every shim. Logging is configured here too
    (stderr, which the spawned shim points at its own log file).
    """
    import asyncio
    import logging

    from runtime.shim import protocol, server, wire

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT)
    sock = os.path.join(workdir, "warm.sock")

    async def exchange() -> None:
        shim = server.ShimServer("0" * 64, Path(sock))
        task = asyncio.get_running_loop().create_task(shim.run())

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            for _ in range(400):
                try:
                    return await asyncio.open_unix_connection(sock, limit=wire.MAX_LINE)
                except (FileNotFoundError, ConnectionRefusedError):
                    await asyncio.sleep(0.005)
            raise TimeoutError("warm-up shim did not listen")

        for _ in range(3):
            reader, writer = await connect()
            ops: tuple[protocol.ShimRequest[Any], ...] = (
                protocol.Ping(), protocol.ListProcs(), protocol.State("x"),
                # the fork-a-helper paths, without making any namespace
                protocol.CreateNamespaces(protocol.NamespacesRequest(pin_dir=workdir, types=())),
            )
            for op in ops:
                writer.write(wire.encode(protocol.request_line(op, 1)))
                await writer.drain()
                reply = await wire.read_message(reader)
                if reply is not None and "result" in reply:
                    protocol.decode_reply(op, reply["result"])
            writer.close()
        await warm_pod_namespaces(connect)
        reader, writer = await connect()
        writer.write(wire.encode(protocol.request_line(protocol.Shutdown(), 2)))
        await writer.drain()
        await wire.read_message(reader)
        writer.close()
        await asyncio.wait_for(task, 10)

    async def warm_pod_namespaces(
        connect: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
    ) -> None:
        """One real ``create_namespaces`` with the built-in network's in-namespace step, made
        while this process stands in a throwaway network namespace (where the veth's "host"
        end goes) and with its pins in a scratch dir: nothing of it reaches the host."""
        from runtime.model.network import NetworkMode, PodInterfacePlan, PodNetnsPlan

        sid = "0" * 64
        plan = PodNetnsPlan(sid, NetworkMode.BUILTIN, True, PodInterfacePlan(
            sid, "eth0", "warmveth0", "169.254.123.2", 30, "169.254.123.1", "02:00:00:00:00:01"))
        pins = os.path.join(workdir, "warm-pins")
        os.makedirs(pins, exist_ok=True)
        host_net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.unshare(libc.CLONE_NEWNET)
            reader, writer = await connect()
            request = protocol.NamespacesRequest(pin_dir=pins, types=("net", "ipc", "uts"), hostname="warm-up",
                                                 network=plan)
            writer.write(wire.encode(protocol.request_line(protocol.CreateNamespaces(request), 3)))
            await writer.drain()
            await wire.read_message(reader)
            writer.close()
        finally:
            libc.setns(host_net, libc.CLONE_NEWNET)
            os.close(host_net)
            for name in os.listdir(pins):
                with contextlib.suppress(OSError):
                    libc.umount2(os.path.join(pins, name), libc.MNT_DETACH)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(pins, name))
            with contextlib.suppress(OSError):
                os.rmdir(pins)

    try:
        asyncio.run(exchange())
    except Exception as exc:  # a failed warm-up costs memory, never correctness
        sys.stderr.write(f"shim factory warm-up failed: {type(exc).__name__}: {exc}\n")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)


def _reap(*_: object) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _spawn(req: dict[str, Any], listener: socket.socket, conn: socket.socket) -> dict[str, Any]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _shim_child(req, listener, conn, r, w)
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


def _shim_child(req: dict[str, Any], listener: socket.socket, conn: socket.socket, r: int, w: int) -> NoReturn:
    try:
        os.close(r)
        listener.close()
        conn.close()
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


def serve(path: str, merge_memory: bool = False) -> None:
    _preload()
    _warm_up(os.path.dirname(path))
    signal.signal(signal.SIGCHLD, _reap)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    code = code_hash()
    # ping answers the setting asked for, not its effect: on a kernel without memory merging
    # (prctl PR_SET_MEMORY_MERGE, Linux < 6.4) a factory asked to merge cannot, and reporting
    # that made every daemon start replace it as one "with other settings"
    requested = merge_memory
    if merge_memory:
        # Shims dirty mostly the same pages in the same way; offered to KSM (inherited by
        # every shim we fork), identical pages are merged back (see runtime.linux.ksm).
        try:
            libc.set_memory_merge()
        except OSError as exc:
            sys.stderr.write(f"shim factory: memory merging not available: {exc}\n")
            merge_memory = False
    gc.collect()
    gc.freeze()
    sys.stdout.write(f"ready {os.getpid()}\n")
    sys.stdout.flush()
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        with conn:
            conn.settimeout(SPAWN_TIMEOUT + 5)
            try:
                f = conn.makefile("rb")
                line = f.readline(65536)
                f.close()
                if not line:
                    continue
                req = json.loads(line)
                op = req.get("op")
                if op == "ping":
                    reply: dict[str, Any] = {"result": {"pid": os.getpid(), "code": code, "merge": requested,
                                                         "merging": merge_memory}}
                elif op == "spawn":
                    reply = _spawn(req, listener, conn)
                elif op == "exit":
                    conn.sendall(json.dumps({"result": {}}).encode() + b"\n")
                    listener.close()
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    return
                else:
                    reply = {"error": {"kind": "InvalidArgument", "message": f"unknown factory op {op!r}"}}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError) as exc:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"error": {"kind": "Internal", "message": str(exc)}}).encode() + b"\n")
            _reap()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cri-shim-factory")
    p.add_argument("--socket", required=True)
    p.add_argument("--merge-memory", action="store_true", help="offer shim memory to KSM")
    args = p.parse_args(argv)
    serve(args.socket, args.merge_memory)


if __name__ == "__main__":
    main()
