"""What the shim factory does before it forks any shim: import and run the shim's code once.

A forked shim costs the pages it writes after the fork (copy-on-write); every page the
factory has already brought into its final state stays shared by all shims. So the factory
imports everything a shim runs (:func:`preload`) and runs one shim in-process
(:func:`warm_up`) before ``gc.freeze()`` and the first fork.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runtime.linux import libc


def preload() -> None:
    """Import what a shim runs, so forked shims share these pages."""
    import asyncio
    import asyncio.unix_events  # noqa: F401
    import base64  # noqa: F401
    import fcntl  # noqa: F401
    import pty  # noqa: F401
    import resource  # noqa: F401
    import termios  # noqa: F401

    import runtime.shim.group
    import runtime.shim.nsinit
    import runtime.shim.pidholder
    import runtime.shim.server

    with contextlib.suppress(ImportError):
        import runtime.network.podside  # noqa: F401


LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def warm_up(workdir: str) -> None:
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
    from runtime.shim.version import code_hash

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT)
    sock = os.path.join(workdir, "warm.sock")
    sock2 = os.path.join(workdir, "warm2.sock")

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
        # a second pod in the same process (runtime.shim.group), adopted and ended
        reader, writer = await connect()
        adopt = protocol.Adopt("1" * 64, sock2, capacity=2, code=code_hash())
        writer.write(wire.encode(protocol.request_line(adopt, 4)))
        await writer.drain()
        await wire.read_message(reader)
        writer.close()
        for path in (sock2, sock):
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_unix_connection(path, limit=wire.MAX_LINE)
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
        for path in (sock, sock2):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
