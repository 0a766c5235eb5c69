"""The limits of the streaming server and of /metrics on connections that have not proven
anything yet: pending slots per client and in total (the oldest dropped), the request-head
timeout (TLS handshake included), and the ports of a WebSocket port-forward."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cri_shim.metrics import Metrics, MetricsServer
from cri_shim.streaming import protocol as p
from cri_shim.streaming.server import StreamingServer, StreamingSettings
from runtime.streaming.backend import ExecRequest, PortForwardRequest
from tests.support import stream_clients as c
from tests.support.streaming_fakes import LocalBackend, TcpTarget

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def backend() -> LocalBackend:
    return LocalBackend()


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def closed_after(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float]:
    """What the server sent before closing, and when it closed (fails if it does not)."""
    started = time.monotonic()
    data = b""
    async with asyncio.timeout(seconds):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionError:
            pass
    return data, time.monotonic() - started


@pytest.fixture
async def server(backend: LocalBackend) -> AsyncIterator[StreamingServer]:
    srv = StreamingServer(backend, StreamingSettings(max_pending=3, max_pending_per_client=2, header_timeout=1.0))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def test_the_oldest_pending_connection_of_a_client_makes_room(server: StreamingServer) -> None:
    first = await connect(server.base_url)
    await asyncio.sleep(0.05)
    second = await connect(server.base_url)
    await asyncio.sleep(0.05)
    assert len(server.pending) == 2
    # a legitimate exec from the same address still gets through: the oldest idle one goes
    result = await c.spdy_exec(server.exec_url(ExecRequest("c1", ("echo", "ok"))))
    assert result.stdout == b"ok\n"
    data, _ = await closed_after(first[0], 1.0)
    assert data == b"" and server.refused["pending_per_client_limit"] == 1
    # the other idle one is answered 408 at the head timeout
    data, _ = await closed_after(second[0], 3.0)
    assert data.startswith(b"HTTP/1.1 408") and server.refused["head_timeout"] == 1
    assert len(server.pending) == 0
    for _, w in (first, second):
        w.close()


async def test_a_partial_head_is_cut_off_at_the_timeout(server: StreamingServer) -> None:
    reader, writer = await connect(server.base_url)
    writer.write(b"GET /exec/abc HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    data, seconds = await closed_after(reader, 5.0)
    assert data.startswith(b"HTTP/1.1 408") and seconds < 5.0
    writer.close()


async def test_an_authenticated_connection_leaves_its_pending_slot(server: StreamingServer) -> None:
    url = server.exec_url(ExecRequest("c1", ("sleep", "5"), stdin=False))
    conn, _ = await c.spdy_connect(url, c.DEFAULT_SPDY_PROTOCOLS)
    try:
        await asyncio.sleep(0.1)
        assert len(server.pending) == 0 and server.active_connections == 1
    finally:
        await conn.close()


async def test_too_many_ports_for_one_websocket_port_forward(backend: LocalBackend) -> None:
    srv = StreamingServer(backend, StreamingSettings(max_streams_per_connection=8))
    await srv.start()
    try:
        url = srv.port_forward_url(PortForwardRequest("sandbox")) + "?port=" + ",".join(str(p_) for p_ in range(1, 6))
        with pytest.raises(c.UpgradeRefused) as refused:
            await c.WsClient.connect(url, [p.V4])
        assert refused.value.status == 400 and b"too many ports" in refused.value.body
        assert srv.refused["stream_limit"] == 1
    finally:
        await srv.close()


async def test_a_tls_handshake_counts_as_pending_and_times_out(tmp_path: Path, backend: LocalBackend) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )
    srv = StreamingServer(backend, StreamingSettings(tls_cert=str(cert), tls_key=str(key), header_timeout=0.5))
    await srv.start()
    try:
        reader, writer = await connect(srv.base_url)  # TCP only: never starts the handshake
        await asyncio.sleep(0.1)
        assert len(srv.pending) == 1
        _, seconds = await closed_after(reader, 5.0)
        assert seconds < 5.0 and srv.refused["head_timeout"] == 1
        writer.close()
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        r = await c.spdy_exec(srv.exec_url(ExecRequest("c1", ("echo", "secure"))), tls=ctx)
        assert r.stdout == b"secure\n"
    finally:
        await srv.close()


# -- /metrics -------------------------------------------------------------------------------------


async def test_metrics_connections_are_capped_and_time_out() -> None:
    server = MetricsServer(Metrics(), "127.0.0.1:0", max_connections=2, header_timeout=0.5)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        idle = [await connect(url) for _ in range(2)]
        await asyncio.sleep(0.05)
        # a scrape gets in: the oldest connection still without a head is dropped for it
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b"cri_shim_build_info" in body
        assert server.refused["connection_limit"] == 1
        data, _ = await closed_after(idle[0][0], 1.0)
        assert data == b""
        await closed_after(idle[1][0], 3.0)
        assert server.refused["head_timeout"] == 1
        for _, w in idle:
            w.close()
    finally:
        await server.close()


# -- port-forward churn under the stream limit ---------------------------------------------------


async def test_finished_port_forward_connections_free_their_streams(backend: LocalBackend) -> None:
    """Many short forwarded connections, one after the other, on one session with room for
    four pairs at once: a finished one must not keep its streams (nor refuse the next)."""
    target = await TcpTarget().start("echo")
    srv = StreamingServer(backend, StreamingSettings(max_streams_per_connection=8))
    await srv.start()
    try:
        conn, _ = await c.spdy_connect(srv.port_forward_url(PortForwardRequest("sandbox")), [p.PORTFORWARD_V1])
        for i in range(20):
            data, error = await c.spdy_forward_once(conn, target.port, i, b"hello %d" % i)
            assert (data, error) == (b"hello %d" % i, b"")
        await conn.close()
    finally:
        await srv.close()
        await target.close()
