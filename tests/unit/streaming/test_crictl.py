"""Real crictl (SPDY and ``-r websocket``) against the streaming server, through the test CRI
server of ``tests/support/fake_cri.py`` (fake targets, local-process backend)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.fake_cri import CRICTL, FakeCri, crictl_process, run_crictl
from tests.support.streaming_fakes import FakeContainer, TcpTarget, set_winsize

pytestmark = [
    pytest.mark.peers,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not CRICTL.exists(), reason=f"crictl not installed at {CRICTL}"),
]

TRANSPORTS = ["spdy", "websocket"]


@pytest.fixture
async def cri(tmp_path: Path) -> AsyncIterator[FakeCri]:
    async with FakeCri(tmp_path) as server:
        server.targets.running.add("c1")
        yield server
    assert server.backend.running == set(), "exec processes left behind"
    assert server.streaming.active_connections == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_piped_stdin_and_exit_code(cri: FakeCri, transport: str) -> None:
    rc, out, err = await run_crictl(
        cri, "exec", "-r", transport, "-i", "c1", "sh", "-c", "tr a-z A-Z; echo to-stderr >&2; exit 5",
        input=b"hello stdin\n" * 1000,
    )
    assert out == b"HELLO STDIN\n" * 1000
    assert b"to-stderr" in err
    assert b"command terminated with exit code 5" in err
    assert rc != 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_success_large_output(cri: FakeCri, transport: str) -> None:
    rc, out, _ = await run_crictl(cri, "exec", "-r", transport, "c1", "head", "-c", "3000000", "/dev/zero")
    assert rc == 0
    assert out == b"\0" * 3000000


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_unknown_container_is_refused(cri: FakeCri, transport: str) -> None:
    rc, _, err = await run_crictl(cri, "exec", "-r", transport, "nope", "true")
    assert rc != 0
    assert b"not found" in err.lower()
    assert cri.backend.calls == []


class Terminal:
    """crictl in a pty (as a person runs it), with its own session so resizes reach it."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        set_winsize(self.slave, 80, 24)
        self.output = bytearray()
        self._event = asyncio.Event()
        os.set_blocking(self.master, False)
        asyncio.get_running_loop().add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        self.output += data
        self._event.set()

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    async def expect(self, pattern: bytes, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not re.search(pattern, self.output):
                self._event.clear()
                await self._event.wait()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_tty_typing_resize_and_exit(cri: FakeCri, transport: str) -> None:
    term = Terminal()
    try:
        async with crictl_process(
            cri, "exec", "-r", transport, "-it", "c1", "sh",
            stdin=term.slave, stdout=term.slave, stderr=term.slave, prefix=("setsid", "-c"),
        ) as proc:
            term.type(b"echo hi-$((40+2))\n")
            await term.expect(rb"hi-42")
            term.type(b"stty size\n")
            await term.expect(rb"24 80")
            set_winsize(term.master, 132, 43)  # the kernel sends crictl SIGWINCH
            async with asyncio.timeout(10):
                while (132, 43) not in cri.backend.resizes:
                    await asyncio.sleep(0.05)
            term.type(b"stty size\n")
            await term.expect(rb"43 132")
            term.type(b"exit 7\n")
            rc = await asyncio.wait_for(proc.wait(), 10)
            await term.expect(rb"exit code 7")
            assert rc != 0
    finally:
        term.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_attach_sees_output_and_sends_input(cri: FakeCri, transport: str) -> None:
    container = FakeContainer(
        ("sh", "-c", 'echo started; while read l; do echo "got:$l"; [ "$l" = quit ] && exit 0; done')
    )
    await container.start()
    cri.backend.containers["c1"] = container
    async with crictl_process(cri, "attach", "-r", transport, "-i", "c1") as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"hello\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"got:hello\n"
        proc.stdin.write(b"quit\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"got:quit\n"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    # the output also went to the log (the attach saw only what came after it attached)
    assert b"got:hello\ngot:quit\n" in container.log


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_port_forward_http(cri: FakeCri, transport: str) -> None:
    target = await TcpTarget().start("http")
    try:
        async with crictl_process(cri, "port-forward", "-r", transport, "sandbox", f"0:{target.port}") as proc:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            match = re.search(rb"127\.0\.0\.1:(\d+)", line)
            assert match, line
            local = int(match.group(1))
            for _ in range(3):  # several connections over the one streaming connection
                reader, writer = await asyncio.open_connection("127.0.0.1", local)
                writer.write(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n")
                reply = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"hello from the pod\n")
            assert target.served == 3
        async with asyncio.timeout(5):
            while target.open or cri.streaming.active_connections:
                await asyncio.sleep(0.05)
    finally:
        await target.close()
