"""The unix socket an OCI runtime sends a new terminal's pty master to (``--console-socket``,
runc docs/terminals.md), for runtime.shim.ociproc."""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import tempfile

from runtime.linux import ptys

CONSOLE_NAME = "console"


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def woken() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, woken)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class ConsoleSocket:
    """The unix socket an OCI runtime sends a new terminal's pty master to
    (``--console-socket``, runc docs/terminals.md): it listens in a fresh 0700 directory of
    the bundle and is named through an O_PATH fd of that directory, ``/proc/self/fd/N/console``
    (a bundle's path can be longer than a unix socket address may be), which the runtime
    inherits (:attr:`fds`). One connection is accepted and one fd taken, which must be a pty
    master (runtime.linux.ptys.check_master); :meth:`close` removes the socket and directory."""

    def __init__(self, bundle: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="console-", dir=bundle)  # 0700, a name of its own
        self.dir_fd = -1
        self.sock: socket.socket | None = None
        try:
            self.dir_fd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.address = f"/proc/self/fd/{self.dir_fd}/{CONSOLE_NAME}"
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self.sock.bind(self.address)
            self.sock.listen(1)
            self.sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    @property
    def fds(self) -> tuple[int, ...]:
        """What the runtime must inherit for :attr:`address` to name the socket."""
        return (self.dir_fd,)

    async def receive(self) -> int:
        """The pty master the runtime sends (the caller's to close); OSError for a peer that
        closes without one, sends more than one fd or one that is not a pty master (what it
        sent is closed). Waits for the connection and its message without blocking the loop."""
        assert self.sock is not None
        conn, _ = await asyncio.get_running_loop().sock_accept(self.sock)
        with conn:
            conn.setblocking(False)
            while True:
                try:
                    # not socket.recv_fds: it drops its flags argument (MSG_CMSG_CLOEXEC)
                    _, ancdata, flags, _ = conn.recvmsg(4096, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
                    break
                except BlockingIOError:
                    await _readable(conn.fileno())
        fds = array.array("i")
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        try:
            if flags & socket.MSG_CTRUNC or len(fds) != 1:
                raise OSError(f"the console socket got {len(fds)} fds{' and more' if flags & socket.MSG_CTRUNC else ''}"
                              ", not one pty master")
            ptys.check_master(fds[0])
        except BaseException:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        return fds[0]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(CONSOLE_NAME, dir_fd=self.dir_fd)
            os.close(self.dir_fd)
            self.dir_fd = -1
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)
