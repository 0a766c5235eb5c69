"""The streaming server over loopback with the Python clients of tests/support: every protocol
version, both transports, bad tokens and frames, limits, clean-up, concurrency."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cri_shim.streaming import protocol as p
from cri_shim.streaming.server import StreamingServer, StreamingSettings
from cri_shim.streaming.spdy.frames import FrameParser, GoAway
from runtime.streaming.backend import AttachRequest, ExecRequest, PortForwardRequest
from tests.support import stream_clients as c
from tests.support.streaming_fakes import FakeContainer, LocalBackend, TcpTarget

pytestmark = pytest.mark.timeout(60)

ECHO_EXIT = ("sh", "-c", "cat; echo err-line >&2; exit 3")


@pytest.fixture
async def backend() -> LocalBackend:
    return LocalBackend()


@pytest.fixture
async def server(backend: LocalBackend) -> AsyncIterator[StreamingServer]:
    srv = StreamingServer(backend, StreamingSettings(stream_creation_timeout=2.0))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()
        for container in backend.containers.values():
            await container.stop()
    assert backend.running == set(), "exec processes left behind"


async def until(predicate: object, seconds: float = 5.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


def exec_req(cmd: tuple[str, ...] = ECHO_EXIT, **kw: bool) -> ExecRequest:
    return ExecRequest("c1", cmd, **{"stdin": True, **kw})


# -- exec over SPDY, every protocol version -----------------------------------------------------


@pytest.mark.parametrize("version", [p.V4, p.V3, p.V2, p.V1])
@pytest.mark.parametrize("flow_control", [True, False])
async def test_spdy_exec_versions(server: StreamingServer, version: str, flow_control: bool) -> None:
    stdin = os.urandom(300_000)  # well past the 64 KiB window
    url = server.exec_url(exec_req())
    r = await c.spdy_exec(url, stdin=stdin, protocols=[version], flow_control=flow_control)
    assert r.protocol == version
    assert r.stdout == stdin and r.stderr == b"err-line\n"
    if version == p.V4:
        assert r.exit_code == 3
    else:
        assert b"exit status 3" in r.error


async def test_spdy_exec_success_status_and_large_output(server: StreamingServer) -> None:
    url = server.exec_url(exec_req(("head", "-c", "5000000", "/dev/zero"), stdin=False))
    r = await c.spdy_exec(url)
    assert r.stdout == b"\0" * 5_000_000
    assert r.status == {"metadata": {}, "status": "Success"}


async def test_spdy_exec_tty_with_resize(server: StreamingServer, backend: LocalBackend) -> None:
    url = server.exec_url(exec_req(("sh", "-c", "sleep 0.3; stty size; exit 4"), stdin=True, tty=True, stderr=False))
    r = await c.spdy_exec(url, stdin=b"", tty=True, stderr=False, resizes=[(100, 30)], close_stdin=False)
    assert b"30 100" in r.stdout
    assert r.exit_code == 4
    assert backend.resizes == [(100, 30)]


async def test_spdy_stdin_close_reaches_the_process(server: StreamingServer) -> None:
    url = server.exec_url(exec_req(("wc", "-c")))
    r = await c.spdy_exec(url, stdin=b"12345")
    assert r.stdout.strip() == b"5" and r.exit_code == 0


async def test_spdy_unsupported_protocol_is_403(server: StreamingServer, backend: LocalBackend) -> None:
    with pytest.raises(c.UpgradeRefused) as info:
        await c.spdy_exec(server.exec_url(exec_req()), protocols=["v9.channel.k8s.io"])
    assert info.value.status == 403
    assert backend.calls == []


# -- exec over WebSocket -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [p.V5, p.V4, p.V4_BASE64, p.V1, p.BASE64, ""])
async def test_websocket_exec_versions(server: StreamingServer, version: str) -> None:
    close = version == p.V5  # only v5 can close stdin; the others use a command that ends anyway
    cmd = ECHO_EXIT if close else ("sh", "-c", "head -c 5; echo err-line >&2; exit 3")
    r = await c.ws_exec(server.exec_url(exec_req(cmd)), protocol=version, stdin=b"hello")
    assert r.protocol == version
    assert r.stdout == b"hello" and r.stderr == b"err-line\n"
    if version in (p.V5, p.V4, p.V4_BASE64):
        assert r.exit_code == 3
    else:
        assert b"exit status 3" in r.error


async def test_websocket_exec_large_stdin_v5(server: StreamingServer) -> None:
    data = os.urandom(1_000_000)
    r = await c.ws_exec(server.exec_url(exec_req(("sha256sum",))), stdin=data)
    import hashlib

    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_websocket_tty_resize(server: StreamingServer, backend: LocalBackend) -> None:
    url = server.exec_url(exec_req(("sh", "-c", "sleep 0.3; stty size"), tty=True, stderr=False))
    r = await c.ws_exec(url, stdin=b"", tty=True, resizes=[(90, 20)])
    assert b"20 90" in r.stdout
    assert backend.resizes == [(90, 20)]


async def test_websocket_unknown_subprotocol_refused(server: StreamingServer, backend: LocalBackend) -> None:
    with pytest.raises(c.UpgradeRefused) as info:
        await c.WsClient.connect(server.exec_url(exec_req()), ["v9.channel.k8s.io"])
    assert info.value.status == 403
    assert backend.calls == []


# -- attach -------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_attach(server: StreamingServer, backend: LocalBackend, transport: str) -> None:
    container = FakeContainer(("sh", "-c", "read l; echo got:$l"))
    await container.start()
    backend.containers["c1"] = container
    url = server.attach_url(AttachRequest("c1", stdin=True, stdout=True, stderr=True))
    if transport == "spdy":
        r = await c.spdy_exec(url, stdin=b"hi\n", close_stdin=False)
    else:
        r = await c.ws_exec(url, stdin=b"hi\n", close_stdin=False)
    assert r.stdout == b"got:hi\n"
    assert r.status["status"] == "Success"
    assert container.log == b"got:hi\n"


async def test_attach_to_missing_container_reports_error(server: StreamingServer) -> None:
    r = await c.spdy_exec(server.attach_url(AttachRequest("ghost", stdout=True, stderr=False)), stderr=False)
    assert r.status["status"] == "Failure" and "not found" in r.status["message"]


# -- tokens and HTTP ----------------------------------------------------------------------------


async def raw_request(server: StreamingServer, text: bytes) -> bytes:
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(text)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_unknown_reused_expired_and_wrong_kind_tokens_are_refused(
    server: StreamingServer, backend: LocalBackend
) -> None:
    with pytest.raises(c.UpgradeRefused) as info:
        await c.spdy_exec(server.base_url + "/exec/notatoken")
    assert info.value.status == 404
    url = server.exec_url(exec_req(("true",), stdin=False))
    await c.spdy_exec(url)
    calls = len(backend.calls)
    with pytest.raises(c.UpgradeRefused):
        await c.spdy_exec(url)  # reused
    wrong = server.attach_url(AttachRequest("c1"))
    with pytest.raises(c.UpgradeRefused):
        await c.spdy_exec(wrong.replace("/attach/", "/exec/"))  # token of another kind
    expiring = StreamingServer(backend, StreamingSettings(token_ttl=0.05))
    await expiring.start()
    try:
        late = expiring.exec_url(exec_req(("true",), stdin=False))
        await asyncio.sleep(0.1)
        with pytest.raises(c.UpgradeRefused):
            await c.spdy_exec(late)
    finally:
        await expiring.close()
    assert len(backend.calls) == calls  # no container touched


@pytest.mark.parametrize(
    "request_text, status",
    [
        (b"GET /exec/x HTTP/1.1\r\nHost: a\r\n\r\n", b"404"),
        (b"DELETE /exec/x HTTP/1.1\r\nHost: a\r\n\r\n", b"405"),
        (b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n", b"404"),
        (b"this is not http\r\n\r\n", b"400"),
        (b"POST /exec/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", b"400"),
        (b"GET /exec/x HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20000 + b"\r\n\r\n", b"431"),
    ],
)
async def test_bad_http_requests(server: StreamingServer, request_text: bytes, status: bytes) -> None:
    reply = await raw_request(server, request_text)
    assert reply.split(b" ")[1] == status


async def test_plain_get_without_upgrade_is_400(server: StreamingServer, backend: LocalBackend) -> None:
    path = server.exec_url(exec_req()).split("://", 1)[1].split("/", 1)[1]
    reply = await raw_request(server, f"GET /{path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 400")
    assert backend.calls == []


async def test_malformed_frames_close_only_that_connection(server: StreamingServer, backend: LocalBackend) -> None:
    good_url = server.exec_url(exec_req(("sh", "-c", "cat"), stdin=True))
    good, _ = await c.spdy_connect(good_url, [p.V4])
    stdin = await good.open_stream({p.STREAM_TYPE: [p.STREAM_STDIN]})
    # a second session sends garbage after the upgrade
    bad_url = server.exec_url(exec_req())
    host, port = bad_url.split("//")[1].split("/")[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    path = "/" + bad_url.split("//")[1].split("/", 1)[1]
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        f"X-Stream-Protocol-Version: {p.V4}\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"\x80\x03\x00\x01\x00\x00\x00\x0c" + b"\x00\x00\x00\x01" + b"\x00" * 4 + b"\xde\xad\xbe\xef")
    rest = await asyncio.wait_for(reader.read(), 5)
    assert GoAway(0, 1) in FrameParser().feed(rest)  # GOAWAY PROTOCOL_ERROR, then closed
    writer.close()
    # the good session still works
    error = await good.open_stream({p.STREAM_TYPE: [p.STREAM_ERROR]})
    stdout = await good.open_stream({p.STREAM_TYPE: [p.STREAM_STDOUT]})
    stderr = await good.open_stream({p.STREAM_TYPE: [p.STREAM_STDERR]})
    await stdin.write(b"still alive")
    await stdin.end()
    assert await stdout.read_all() == b"still alive"
    assert await stderr.read_all() == b""
    assert json.loads(await error.read_all())["status"] == "Success"
    await good.close()
    assert [k for k, _ in backend.calls] == ["exec"]


async def test_client_that_never_opens_streams_times_out(server: StreamingServer, backend: LocalBackend) -> None:
    conn, _ = await c.spdy_connect(server.exec_url(exec_req()), [p.V4])
    await asyncio.wait_for(conn.closed.wait(), 5)  # creation timeout is 2 s in this fixture
    assert backend.calls == []


# -- clean-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_vanished_client_leaves_no_process(
    server: StreamingServer, backend: LocalBackend, transport: str
) -> None:
    url = server.exec_url(exec_req(("sleep", "300"), stdin=False))
    if transport == "spdy":
        conn, _ = await c.spdy_connect(url, [p.V4])
        for kind in (p.STREAM_ERROR, p.STREAM_STDOUT, p.STREAM_STDERR):
            await conn.open_stream({p.STREAM_TYPE: [kind]})
        await until(lambda: len(backend.running) == 1)
        pid = next(iter(backend.running))
        conn.abort()  # the client disappears without a word
    else:
        client = await c.WsClient.connect(url, [p.V5])
        await until(lambda: len(backend.running) == 1)
        pid = next(iter(backend.running))
        client.writer.transport.abort()
    await until(lambda: not backend.running and server.active_connections == 0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_idle_timeout_closes_the_session(backend: LocalBackend) -> None:
    srv = StreamingServer(backend, StreamingSettings(idle_timeout=0.5))
    await srv.start()
    try:
        url = srv.exec_url(exec_req(("sleep", "300"), stdin=False))
        conn, _ = await c.spdy_connect(url, [p.V4])
        for kind in (p.STREAM_ERROR, p.STREAM_STDOUT, p.STREAM_STDERR):
            await conn.open_stream({p.STREAM_TYPE: [kind]})
        await until(lambda: len(backend.running) == 1)
        await until(lambda: not backend.running and srv.active_connections == 0, 5)
    finally:
        await srv.close()


async def test_server_close_ends_sessions(backend: LocalBackend) -> None:
    srv = StreamingServer(backend, StreamingSettings())
    await srv.start()
    url = srv.exec_url(exec_req(("sleep", "300"), stdin=False))
    client = await c.WsClient.connect(url, [p.V5])
    await until(lambda: len(backend.running) == 1)
    await srv.close()
    assert not backend.running and srv.active_connections == 0
    await client.close()


async def test_connection_limit(backend: LocalBackend) -> None:
    srv = StreamingServer(backend, StreamingSettings(max_connections=2))
    await srv.start()
    try:
        idle = []
        for _ in range(2):
            idle.append(await asyncio.open_connection(*srv.base_url.removeprefix("http://").rsplit(":", 1)))
        await until(lambda: srv.active_connections == 2)
        reply = await raw_request(srv, b"GET /exec/x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503")
        for _, w in idle:
            w.close()
    finally:
        await srv.close()


# -- port-forward -------------------------------------------------------------------------------


@pytest.fixture
async def echo() -> AsyncIterator[TcpTarget]:
    target = await TcpTarget().start("echo")
    yield target
    await target.close()


@pytest.mark.parametrize("tunnel", [False, True])
async def test_port_forward_many_connections_on_one_session(
    server: StreamingServer, echo: TcpTarget, tunnel: bool
) -> None:
    url = server.port_forward_url(PortForwardRequest("sandbox"))
    conn = await c.ws_tunnel_connect(url) if tunnel else (await c.spdy_connect(url, [p.PORTFORWARD_V1]))[0]
    payloads = [os.urandom(100_000 + i) for i in range(20)]
    results = await asyncio.gather(*(c.spdy_forward_once(conn, echo.port, i, data) for i, data in enumerate(payloads)))
    assert [r[0] for r in results] == payloads
    assert all(r[1] == b"" for r in results)
    await conn.close()
    await until(lambda: echo.open == 0 and server.active_connections == 0)
    assert echo.served == 20


async def test_port_forward_error_goes_to_error_stream(server: StreamingServer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    conn, _ = await c.spdy_connect(server.port_forward_url(PortForwardRequest("sandbox")), [p.PORTFORWARD_V1])
    data, message = await c.spdy_forward_once(conn, closed_port, 1, b"x")
    assert data == b"" and b"error forwarding port" in message
    await conn.close()


async def test_port_forward_only_requested_ports(server: StreamingServer, echo: TcpTarget) -> None:
    url = server.port_forward_url(PortForwardRequest("sandbox", ports=(echo.port + 1,)))
    conn, _ = await c.spdy_connect(url, [p.PORTFORWARD_V1])
    with pytest.raises(ConnectionError):
        await c.spdy_forward_once(conn, echo.port, 1, b"x")
    await conn.close()
    assert echo.served == 0


@pytest.mark.parametrize("protocol", [p.V4, p.V4_BASE64])
async def test_websocket_channel_port_forward(server: StreamingServer, echo: TcpTarget, protocol: str) -> None:
    url = server.port_forward_url(PortForwardRequest("sandbox", ports=(echo.port,)))
    client = await c.WsClient.connect(url, [protocol])
    b64 = protocol == p.V4_BASE64
    import base64

    def decode(m: bytes | str) -> tuple[int, bytes]:
        if isinstance(m, str):
            return ord(m[0]) - 48, base64.b64decode(m[1:])
        return m[0], m[1:]

    firsts = [decode(await client.receive()) for _ in range(2)]  # type: ignore[arg-type]
    assert sorted(firsts) == [(0, echo.port.to_bytes(2, "little")), (1, echo.port.to_bytes(2, "little"))]
    if b64:
        await client.send_text("0" + base64.b64encode(b"ping over ws").decode())
    else:
        await client.send_bytes(b"\x00ping over ws")
    got = b""
    while len(got) < 12:
        ch, data = decode(await client.receive())  # type: ignore[arg-type]
        assert ch == 0
        got += data
    assert got == b"ping over ws"
    await client.close()
    await until(lambda: echo.open == 0 and server.active_connections == 0)


# -- concurrency --------------------------------------------------------------------------------


async def test_50_concurrent_exec_sessions(server: StreamingServer, backend: LocalBackend) -> None:
    async def one(i: int) -> None:
        payload = os.urandom(20_000) + str(i).encode()
        transport = i % 2
        url = server.exec_url(exec_req(("sh", "-c", f"cat; exit {i % 7}")))
        if transport:
            r = await c.ws_exec(url, stdin=payload)
        else:
            r = await c.spdy_exec(url, stdin=payload, flow_control=bool(i % 3))
        assert r.stdout == payload
        assert r.exit_code == i % 7

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 50)
    await until(lambda: not backend.running and server.active_connections == 0)


async def test_20_concurrent_port_forward_connections(server: StreamingServer, echo: TcpTarget) -> None:
    async def one(i: int) -> None:
        url = server.port_forward_url(PortForwardRequest("sandbox"))
        conn = await c.ws_tunnel_connect(url) if i % 2 else (await c.spdy_connect(url, [p.PORTFORWARD_V1]))[0]
        payload = os.urandom(200_000)
        got, err = await c.spdy_forward_once(conn, echo.port, 0, payload)
        assert got == payload and err == b""
        await conn.close()

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 50)
    await until(lambda: echo.open == 0 and server.active_connections == 0)


# -- TLS ----------------------------------------------------------------------------------------


async def test_tls(tmp_path: Path, backend: LocalBackend) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )
    srv = StreamingServer(backend, StreamingSettings(tls_cert=str(cert), tls_key=str(key)))
    await srv.start()
    try:
        assert srv.base_url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        r = await c.spdy_exec(srv.exec_url(exec_req(("sh", "-c", "cat")), ), stdin=b"secure", tls=ctx)
        assert r.stdout == b"secure"
        r = await c.ws_exec(srv.exec_url(exec_req(("sh", "-c", "cat"))), stdin=b"secure-ws", tls=ctx)
        assert r.stdout == b"secure-ws"
    finally:
        await srv.close()
