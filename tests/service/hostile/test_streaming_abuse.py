"""Hostile streaming and metrics clients against the real daemon: stream and data floods on
SPDY, a port-forward flood to a port that never accepts, pre-authentication connection
floods and a /metrics connection flood. The daemon must keep its memory, threads and file
descriptors bounded, cut the abusers off, and keep serving everyone else.

Figures (RSS, threads, RPC latency under a flood) are printed (``pytest -s``), never asserted
as timings: the machine is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from cri_shim.streaming import protocol as p
from cri_shim.streaming.spdy.frames import FrameError, Headers, RstStatus, encode_data
from cri_shim.streaming.spdy.session import GoAwayReceived, SessionError, SpdySession, StreamReset
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.netns import REPO
from tests.support.pods import container_config, create_container, netns_path, pod_config, pull, run_pod, start
from tests.support.stream_clients import (
    DEFAULT_SPDY_PROTOCOLS,
    spdy_connect,
    spdy_exec,
    spdy_forward_once,
    spdy_upgrade,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(300)]

MIB = 1024 * 1024
#: How much more resident memory a flood may leave the daemon with (generous: the point is
#: "bounded", against hundreds of MiB without limits).
RSS_BOUND = 64 * MIB
#: Syscalls a thread blocks in while it waits for a socket (x86-64 and arm64 numbers): poll
#: and ppoll (a Python socket with a timeout waits there), connect, recvmsg, recvfrom. An idle
#: daemon's threads wait in futex (gRPC, executor, Python) and epoll_wait (event loops) only.
BLOCKING_SOCKET_CALLS = {
    "x86_64": {"7", "271", "42", "47", "45"}, "aarch64": {"73", "203", "212", "207"},
}[os.uname().machine]


# -- the daemon process, from /proc --------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_bytes(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0]) * 1024


def threads(pid: int) -> int:
    return int(proc_status(pid)["Threads"])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads_blocked_in_sockets(pid: int) -> int:
    """Threads of ``pid`` sleeping in connect/recvmsg/recvfrom (an executor thread waiting for
    a pod shim's answer is one)."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            call = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
            if call and call[0] in BLOCKING_SOCKET_CALLS:
                n += 1
    return n


def daemon_pid(d: DaemonProcess) -> int:
    assert d.proc is not None and d.proc.poll() is None, "the daemon is not running"
    return d.proc.pid


# -- pods and URLs -------------------------------------------------------------------------------


@contextlib.contextmanager
def sleeping_pod(d: DaemonProcess, busybox: str, tmp_path: Path) -> Iterator[tuple[str, pb.PodSandboxConfig, str]]:
    """A pod with one ``sleep`` container; the ``d`` fixture removes it."""
    pod_cfg = pod_config(unique("hs"), log_directory=str(tmp_path / "logs"))
    pod = run_pod(d, pod_cfg)
    pull(d, busybox)
    cid = create_container(d, pod, pod_cfg, container_config("c", busybox, command=["sleep", "3600"],
                                                             log_path="c.log"))
    start(d, cid)
    yield pod, pod_cfg, cid


def exec_url(d: DaemonProcess, cid: str, cmd: list[str]) -> str:
    req = pb.ExecRequest(container_id=cid, cmd=cmd, stdout=True, stderr=True)
    return str(d.runtime.Exec(req, timeout=10).url)


def port_forward_url(d: DaemonProcess, pod: str) -> str:
    return str(d.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod), timeout=10).url)


def assert_exec_works(d: DaemonProcess, cid: str) -> None:
    res = asyncio.run(spdy_exec(exec_url(d, cid, ["echo", "still-serving"])))
    assert (res.stdout, res.exit_code) == (b"still-serving\n", 0), res


def refused_counter(d: DaemonProcess, server: str) -> float:
    """Sum of cri_shim_connections_refused_total{server=...} over its reasons."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=20).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("cri_shim_connections_refused_total{") and f'server="{server}"' in line)


def refusals_logged(d: DaemonProcess, server: str) -> list[str]:
    """The reasons of the connections the daemon logged as refused or cut off (debug level)."""
    log = d.log_path.read_text(errors="replace")  # all of it: d.log() is its tail
    return re.findall(rf"{server}: connection refused or (?:cut off|dropped): (\w+)", log)


# -- a SPDY flooder ------------------------------------------------------------------------------


@dataclass
class Flood:
    opened: int = 0
    sent: int = 0
    refused: int = 0
    goaway: bool = False
    cut_off: bool = False
    stalled: bool = False
    rss_growth: int = 0


async def spdy_flood(
    url: str,
    protocols: list[str],
    *,
    pid: int,
    first: list[Headers],
    headers_of: Callable[[int], Headers],
    streams: int,
    payload: int,
) -> Flood:
    """Open ``first`` streams, then up to ``streams`` more, each sent ``payload`` bytes and
    half-closed at once, without waiting for any answer (a peer that never reads what it asked
    for). Reads what the server sends only to notice refusals, GOAWAY and the end of the
    connection. The daemon's RSS growth is measured before the connection is let go."""
    reader, writer, _ = await spdy_upgrade(url, protocols)
    rss_before = rss_bytes(pid)
    sess = SpdySession(client=True)
    flood = Flood()
    closed = asyncio.Event()

    async def read_server() -> None:
        with contextlib.suppress(ConnectionError, FrameError):
            while data := await reader.read(65536):
                for event in sess.receive_data(data):
                    if isinstance(event, GoAwayReceived):
                        flood.goaway = True
                    elif isinstance(event, StreamReset) and event.status == RstStatus.REFUSED_STREAM:
                        flood.refused += 1
        closed.set()

    reading = asyncio.create_task(read_server())
    chunk = b"x" * (32 * 1024)
    try:
        for headers in first:
            sess.open_stream(headers)
        for i in range(streams):
            if closed.is_set():
                break
            try:
                sid = sess.open_stream(headers_of(i))
            except SessionError:  # GOAWAY received
                break
            out = bytearray(sess.data_to_send())
            left = payload
            while left:
                n = min(left, len(chunk))
                left -= n
                out += encode_data(sid, chunk[:n], fin=left == 0)
            try:
                writer.write(out)
                await asyncio.wait_for(writer.drain(), 20)
            except TimeoutError:
                flood.stalled = True
                break
            except ConnectionError:
                break
            flood.opened += 1
            flood.sent += payload
        # the server answers what it has read: give it time to refuse and send GOAWAY
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closed.wait(), 15)
        flood.cut_off = closed.is_set()
        flood.rss_growth = rss_bytes(pid) - rss_before
        return flood
    finally:
        writer.transport.abort()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


def report(name: str, flood: Flood) -> None:
    print(f"\n{name}: opened {flood.opened} streams, sent {flood.sent / MIB:.0f} MiB, refused {flood.refused}, "
          f"goaway {flood.goaway}, cut off {flood.cut_off}, stalled {flood.stalled}, "
          f"daemon RSS growth {flood.rss_growth / MIB:+.1f} MiB")


def test_spdy_stream_and_data_flood_on_exec_url_is_cut_off(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    """Thousands of streams on an exec session, each half-closed with 128 KiB nobody reads."""
    with sleeping_pod(d, busybox, tmp_path) as (_, _, cid):
        assert_exec_works(d, cid)  # warm the daemon up before measuring
        pid = daemon_pid(d)
        url = exec_url(d, cid, ["sleep", "300"])
        first: list[Headers] = [{p.STREAM_TYPE: [t]} for t in (p.STREAM_ERROR, p.STREAM_STDOUT, p.STREAM_STDERR)]
        flood = asyncio.run(spdy_flood(
            url, list(DEFAULT_SPDY_PROTOCOLS), pid=pid, first=first,
            headers_of=lambda i: {p.STREAM_TYPE: [p.STREAM_STDIN]}, streams=3000, payload=128 * 1024,
        ))
        report("exec stream flood", flood)
        assert flood.rss_growth < RSS_BOUND
        assert flood.cut_off and flood.goaway, flood
        assert_exec_works(d, cid)
        assert "stream_limit" in refusals_logged(d, "streaming")
        assert refused_counter(d, "streaming") > 0


def test_spdy_stream_flood_on_port_forward_url_is_cut_off(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    """Thousands of half-closed port-forward data streams that never get their error stream."""
    with sleeping_pod(d, busybox, tmp_path) as (pod, _, cid):
        assert_exec_works(d, cid)
        pid = daemon_pid(d)
        flood = asyncio.run(spdy_flood(
            port_forward_url(d, pod), [p.PORTFORWARD_V1], pid=pid, first=[],
            headers_of=lambda i: {p.STREAM_TYPE: [p.STREAM_DATA], p.PORT: ["7000"], p.REQUEST_ID: [str(i)]},
            streams=3000, payload=1024,
        ))
        report("port-forward stream flood", flood)
        assert flood.rss_growth < RSS_BOUND
        assert flood.cut_off and flood.goaway, flood
        assert_exec_works(d, cid)


# -- port-forward to a port that never accepts ----------------------------------------------------

NEVER_ACCEPT = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(0)
print("ready", flush=True)
time.sleep(3600)
"""


@contextlib.contextmanager
def in_pod_netns(netns: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A host process in the pod's network namespace (nsenter, a fresh process), killed by pid."""
    proc = subprocess.Popen(["nsenter", f"--net={netns}", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == b"ready", (line, proc.stderr.read() if proc.stderr else b"")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def spdy_socket(url: str, protocol: str) -> socket.socket:
    """A blocking socket upgraded to SPDY/3.1 (the 101 read), for frames written by hand."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    s = socket.create_connection((parts.hostname, parts.port), timeout=20)
    s.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\n"
              f"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, f"closed during the upgrade: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def test_port_forward_flood_to_a_port_that_never_accepts(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    """Hundreds of forwarded connections to a listener whose backlog is full: no executor
    thread waits for them, the daemon's threads stay bounded, other RPCs complete."""
    port = 7100
    with sleeping_pod(d, busybox, tmp_path) as (pod, pod_cfg, cid), \
            in_pod_netns(netns_path(d, pod), sys.executable, "-c", NEVER_ACCEPT, str(port)):
        pid = daemon_pid(d)
        threads_before = threads(pid)
        socks: list[socket.socket] = []
        try:
            for _ in range(10):
                s = spdy_socket(port_forward_url(d, pod), p.PORTFORWARD_V1)
                socks.append(s)
                sess = SpdySession(client=True)
                for rid in range(40):
                    headers: Headers = {p.STREAM_TYPE: [p.STREAM_ERROR], p.PORT: [str(port)],
                                        p.REQUEST_ID: [str(rid)]}
                    sess.open_stream(headers)
                    sess.open_stream({**headers, p.STREAM_TYPE: [p.STREAM_DATA]})
                s.sendall(sess.data_to_send())
            # while 400 connections are being opened in the pod: other RPCs, and the threads
            latencies: list[tuple[float, float]] = []
            errors: list[str] = []
            blocked = max_threads = 0
            for i in range(5):
                blocked = max(blocked, threads_blocked_in_sockets(pid))
                max_threads = max(max_threads, threads(pid))
                t0 = time.monotonic()
                try:
                    new = create_container(d, pod, pod_cfg, container_config(f"lat{i}", busybox,
                                                                             command=["sleep", "1"]), timeout=120)
                    t1 = time.monotonic()
                    d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=new), timeout=120)
                    latencies.append((t1 - t0, time.monotonic() - t1))
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code()}: {exc.details()}")
                blocked = max(blocked, threads_blocked_in_sockets(pid))
                max_threads = max(max_threads, threads(pid))
                time.sleep(0.5)
        finally:
            for s in socks:
                s.close()
        print(f"\nport-forward flood: threads before {threads_before}, max during {max_threads}, "
              f"max blocked in socket calls {blocked}; CreateContainer/ContainerStatus seconds: "
              + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in latencies))
        assert not errors, errors
        assert blocked == 0, f"{blocked} daemon threads wait for port-forward connects"
        assert max_threads <= threads_before + 8
        # the pod's port-forward still works once the flood is gone
        agent = [sys.executable, "-m", "tests.support.netns", "-", "tcp-serve", "7101"]
        with in_pod_netns(netns_path(d, pod), *agent):
            async def forward_once() -> bytes:
                conn, _ = await spdy_connect(port_forward_url(d, pod), [p.PORTFORWARD_V1])
                try:
                    data, error = await asyncio.wait_for(spdy_forward_once(conn, 7101, 1, b""), 30)
                    assert error == b"", error
                    return data
                finally:
                    await conn.close()

            assert asyncio.run(forward_once()).strip()
        assert_exec_works(d, cid)


# -- connections that never authenticate -------------------------------------------------------------


def flood_connections(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` connections: half send nothing, half a partial request head."""
    socks = []
    for i in range(count):
        try:
            s = socket.create_connection((host, port), timeout=10)
        except OSError:
            continue
        if i % 2:
            with contextlib.suppress(OSError):
                s.sendall(b"GET /exec/0123456789 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    return socks


def wait_all_closed(socks: list[socket.socket], seconds: float) -> tuple[int, float]:
    """(connections the server has not closed after ``seconds``, seconds until the last one closed)."""
    started = time.monotonic()
    deadline = started + seconds
    last = 0.0
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    try:
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, min(1.0, deadline - time.monotonic()))):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    while s.recv(65536):
                        pass
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                sel.unregister(s)
                last = time.monotonic() - started
        return len(sel.get_map()), last
    finally:
        sel.close()


def test_pre_auth_flood_is_cut_off_and_exec_still_works(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    """600 connections that never present a token: a legitimate exec still gets through, and
    each flood connection is closed within the request-head timeout (5 s by default)."""
    with sleeping_pod(d, busybox, tmp_path) as (_, _, cid):
        url = exec_url(d, cid, ["echo", "warm"])
        asyncio.run(spdy_exec(url))
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        pid = daemon_pid(d)
        fds_before = open_fds(pid)
        socks = flood_connections(parts.hostname, parts.port, 600)
        try:
            time.sleep(1)  # the event loop accepts a backlog at once before dropping: let it settle
            fds_during = open_fds(pid)
            assert_exec_works(d, cid)
            left, last = wait_all_closed(socks, 5 + 15)
        finally:
            for s in socks:
                s.close()
        print(f"\npre-auth flood: {len(socks)} connections, daemon fds {fds_before} -> {fds_during}, "
              f"last one closed after {last:.1f}s")
        assert left == 0, f"{left} pre-auth connections still open"
        assert fds_during - fds_before <= 128 + 16  # [streaming] max_pending_per_client
        assert {"pending_per_client_limit", "head_timeout"} <= set(refusals_logged(d, "streaming"))


def test_metrics_endpoint_connection_cap(d: DaemonProcess) -> None:
    """300 idle or half-sent connections to /metrics: the daemon holds at most its cap, a
    scrape still works, and every connection is closed within the head timeout."""
    pid = daemon_pid(d)
    fds_before = open_fds(pid)
    socks = flood_connections("127.0.0.1", d.metrics_port, 300)
    try:
        time.sleep(1)  # the event loop accepts a backlog at once before dropping: let it settle
        fds_during = open_fds(pid)
        body = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=20).read()
        assert re.search(rb"^cri_shim_build_info", body, re.M)
        left, last = wait_all_closed(socks, 5 + 15)
    finally:
        for s in socks:
            s.close()
    print(f"\nmetrics flood: {len(socks)} connections, daemon fds {fds_before} -> {fds_during}, "
          f"last one closed after {last:.1f}s")
    assert fds_during - fds_before <= 16 + 8  # [metrics] max_connections
    assert left == 0
    assert "connection_limit" in refusals_logged(d, "metrics")
    assert refused_counter(d, "metrics") > 0
