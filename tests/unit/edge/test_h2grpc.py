"""The native gRPC server (cri_shim/h2grpc): gRPC semantics through grpcio's client, and the
HTTP/2 rules a client may break, through raw frames on the socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import hpack
import pytest

from cri_shim import h2grpc
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.h2grpc import frames as f

pytestmark = pytest.mark.timeout(60)

VERSION = "/runtime.v1.RuntimeService/Version"
EVENTS = "/runtime.v1.RuntimeService/GetContainerEvents"


class Calls:
    """Handlers whose behaviour the request picks (``VersionRequest.version``)."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.remaining: float | None = None
        self.metadata: tuple[tuple[str, str], ...] = ()

    async def version(self, request: pb.VersionRequest, context: h2grpc.Context) -> pb.VersionResponse:
        self.remaining = context.time_remaining()
        self.metadata = context.invocation_metadata()
        what = request.version
        if what.startswith("big:"):
            return pb.VersionResponse(runtime_name="x" * int(what[4:]))
        if what == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: é%\n")
        if what == "wait":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if what == "boom":
            raise ZeroDivisionError("boom")
        return pb.VersionResponse(runtime_name="cri-shim", version=what)

    async def events(self, request: pb.GetEventsRequest, context: h2grpc.Context) -> AsyncIterator[Any]:
        for i in range(3):
            yield pb.ContainerEventResponse(container_id=f"c{i}:" + "p" * 200_000)  # over one window
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def routes(calls: Calls) -> list[h2grpc.Route]:
    return [
        h2grpc.Route(VERSION, False, pb.VersionRequest.FromString, pb.VersionResponse.SerializeToString,
                     calls.version),
        h2grpc.Route(EVENTS, True, pb.GetEventsRequest.FromString, pb.ContainerEventResponse.SerializeToString,
                     calls.events),
    ]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[h2grpc.Server, Calls, Path]]:
    calls = Calls()
    srv = h2grpc.Server(routes(calls), h2grpc.Limits(max_message=4 * 1024 * 1024, max_concurrent_streams=8))
    sock = tmp_path / "s.sock"
    await srv.start(sock)
    try:
        yield srv, calls, sock
    finally:
        await srv.stop(0)


@contextlib.asynccontextmanager
async def client(sock: Path) -> AsyncIterator[grpc.aio.Channel]:
    ch = grpc.aio.insecure_channel(f"unix://{sock}", options=[("grpc.max_receive_message_length", 64 << 20),
                                                              ("grpc.max_send_message_length", 64 << 20)])
    try:
        yield ch
    finally:
        await ch.close()


def version_call(ch: grpc.aio.Channel) -> Any:
    return ch.unary_unary(VERSION, request_serializer=pb.VersionRequest.SerializeToString,
                          response_deserializer=pb.VersionResponse.FromString)


async def test_unary_call_and_metadata(server: Any) -> None:
    _, calls, sock = server
    async with client(sock) as ch:
        reply = await version_call(ch)(pb.VersionRequest(version="v1"), metadata=(("x-who", "me"),))
    assert (reply.runtime_name, reply.version) == ("cri-shim", "v1")
    assert ("x-who", "me") in calls.metadata
    assert calls.remaining is None


async def test_many_concurrent_calls_on_one_connection(server: Any) -> None:
    _, _, sock = server
    async with client(sock) as ch:
        call = version_call(ch)
        replies = await asyncio.gather(*(call(pb.VersionRequest(version=str(i))) for i in range(200)))
    assert [r.version for r in replies] == [str(i) for i in range(200)]


async def test_abort_status_and_percent_encoded_message(server: Any) -> None:
    _, _, sock = server
    async with client(sock) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await version_call(ch)(pb.VersionRequest(version="abort"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no such thing: é%\n"


async def test_unexpected_error_is_internal(server: Any) -> None:
    _, _, sock = server
    async with client(sock) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await version_call(ch)(pb.VersionRequest(version="boom"))
    assert err.value.code() == grpc.StatusCode.INTERNAL


async def test_unknown_method_is_unimplemented(server: Any) -> None:
    _, _, sock = server
    async with client(sock) as ch:
        call = ch.unary_unary("/runtime.v1.RuntimeService/Nope", request_serializer=lambda m: b"",
                              response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/runtime.v1.RuntimeService/Nope" in (err.value.details() or "")


async def test_large_answer_follows_the_clients_flow_control(server: Any) -> None:
    """3.5 MiB through windows of 64 KiB: the answer waits for WINDOW_UPDATEs, whole."""
    _, _, sock = server
    ch = grpc.aio.insecure_channel(f"unix://{sock}", options=[
        ("grpc.max_receive_message_length", 64 << 20), ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 65535)])
    try:
        reply = await version_call(ch)(pb.VersionRequest(version=f"big:{3_500_000}"))
    finally:
        await ch.close()
    assert len(reply.runtime_name) == 3_500_000


async def test_answer_over_the_limit_is_resource_exhausted(server: Any) -> None:
    _, _, sock = server
    async with client(sock) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await version_call(ch)(pb.VersionRequest(version=f"big:{5 * 1024 * 1024}"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_large_request_and_request_over_the_limit(server: Any) -> None:
    _, _, sock = server
    async with client(sock) as ch:
        ok = await version_call(ch)(pb.VersionRequest(version="v" * (3 * 1024 * 1024)))
        assert len(ok.version) == 3 * 1024 * 1024
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await version_call(ch)(pb.VersionRequest(version="v" * (5 * 1024 * 1024)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        again = await version_call(ch)(pb.VersionRequest(version="after"))  # the connection survives
    assert again.version == "after"


async def test_deadline_cancels_the_handler(server: Any) -> None:
    _, calls, sock = server
    async with client(sock) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await version_call(ch)(pb.VersionRequest(version="wait"), timeout=1.0)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(calls.cancelled.wait(), 5)
    assert calls.remaining is not None and 0 < calls.remaining <= 1.1  # grpc rounds the timeout up


async def test_the_server_ends_a_call_at_its_deadline(server: Any) -> None:
    """The server's own deadline (the client above may reset the stream first): a raw client
    that never cancels gets DEADLINE_EXCEEDED trailers and the handler is cancelled."""
    _, calls, sock = server

    def go() -> list[Any]:
        r = Raw(sock)
        r.hello()
        r.headers(1, extra=(("grpc-timeout", "200m"),))
        r.send(f.frame(f.DATA, f.END_STREAM, 1, f.message(pb.VersionRequest(version="wait").SerializeToString())))
        return r.frames()
    frames = await _in_thread(go)
    assert grpc_status(frames, 1)["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    await asyncio.wait_for(calls.cancelled.wait(), 5)


async def test_client_cancel_cancels_the_handler(server: Any) -> None:
    _, calls, sock = server
    async with client(sock) as ch:
        call = version_call(ch)(pb.VersionRequest(version="wait"))
        await asyncio.wait_for(calls.started.wait(), 5)
        call.cancel()
        await asyncio.wait_for(calls.cancelled.wait(), 5)


async def test_server_stream_and_its_cancellation(server: Any) -> None:
    _, calls, sock = server
    async with client(sock) as ch:
        stream = ch.unary_stream(EVENTS, request_serializer=pb.GetEventsRequest.SerializeToString,
                                 response_deserializer=pb.ContainerEventResponse.FromString)(pb.GetEventsRequest())
        got = [await stream.read() for _ in range(3)]
        assert [e.container_id.split(":")[0] for e in got] == ["c0", "c1", "c2"]
        await asyncio.wait_for(calls.started.wait(), 5)
        stream.cancel()
        await asyncio.wait_for(calls.cancelled.wait(), 5)


async def test_stop_lets_calls_in_flight_finish_and_refuses_new_ones(server: Any) -> None:
    srv, calls, sock = server
    async with client(sock) as ch:
        call = version_call(ch)(pb.VersionRequest(version="wait"))
        await asyncio.wait_for(calls.started.wait(), 5)
        stopping = asyncio.create_task(srv.stop(10))
        await asyncio.sleep(0.1)
        with pytest.raises((grpc.aio.AioRpcError, OSError)):
            async with client(sock) as late:
                await version_call(late)(pb.VersionRequest(version="late"), timeout=2)
        calls.release.set()
        reply = await call
        await asyncio.wait_for(stopping, 10)
    assert reply.version == "wait"


async def test_stop_cancels_calls_after_the_grace(server: Any) -> None:
    srv, calls, sock = server
    async with client(sock) as ch:
        call = version_call(ch)(pb.VersionRequest(version="wait"))
        await asyncio.wait_for(calls.started.wait(), 5)
        await asyncio.wait_for(srv.stop(0.2), 10)
        await asyncio.wait_for(calls.cancelled.wait(), 5)
        with pytest.raises(grpc.aio.AioRpcError):
            await call


# -- raw HTTP/2 --------------------------------------------------------------------------------


class Raw:
    """A blocking HTTP/2 client speaking frames by hand."""

    def __init__(self, sock: Path) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(5)
        self.s.connect(str(sock))
        self.enc = hpack.Encoder()
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def hello(self) -> None:
        self.send(f.PREFACE + f.frame(f.SETTINGS, 0, 0))

    def headers(self, sid: int, path: str = VERSION, extra: tuple[tuple[str, str], ...] = (),
                flags: int = f.END_HEADERS, method: str = "POST", ctype: str = "application/grpc") -> None:
        block = self.enc.encode([(":method", method), (":scheme", "http"), (":path", path),
                                 (":authority", "x"), ("content-type", ctype), ("te", "trailers"), *extra])
        self.send(f.frame(f.HEADERS, flags, sid, block))

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """Frames until the server closes or goes quiet for a moment."""
        out = []
        self.s.settimeout(1)
        while True:
            try:
                chunk = self.s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            self.buf += chunk
        pos = 0
        while len(self.buf) - pos >= 9:
            length, kind, flags, sid = f.parse_head(self.buf, pos)
            out.append((kind, flags, sid, self.buf[pos + 9:pos + 9 + length]))
            pos += 9 + length
        self.buf = self.buf[pos:]
        return out

    def goaway(self) -> int | None:
        for kind, _, _, payload in self.frames():
            if kind == f.GOAWAY:
                return f.read_u32(payload, 4)
        return None


def grpc_status(frames: list[tuple[int, int, int, bytes]], sid: int) -> dict[str, str]:
    dec = hpack.Decoder()
    fields: dict[str, str] = {}
    for kind, _, s, payload in frames:
        if kind == f.HEADERS and s == sid:
            fields.update(dec.decode(payload))
    return fields


@pytest.fixture
async def raw_sock(server: Any) -> Path:
    path: Path = server[2]
    return path


def _in_thread(fn: Any, *args: Any) -> Any:
    return asyncio.to_thread(fn, *args)


async def test_bad_preface_is_refused(raw_sock: Path) -> None:
    def go() -> int | None:
        r = Raw(raw_sock)
        r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return r.goaway()
    assert await _in_thread(go) == f.PROTOCOL_ERROR


async def test_first_frame_must_be_settings(raw_sock: Path) -> None:
    def go() -> int | None:
        r = Raw(raw_sock)
        r.send(f.PREFACE + f.frame(f.PING, 0, 0, b"12345678"))
        return r.goaway()
    assert await _in_thread(go) == f.PROTOCOL_ERROR


async def test_ping_is_acknowledged(raw_sock: Path) -> None:
    def go() -> list[Any]:
        r = Raw(raw_sock)
        r.hello()
        r.send(f.frame(f.PING, 0, 0, b"abcdefgh"))
        return r.frames()
    frames = await _in_thread(go)
    assert (f.PING, f.ACK, 0, b"abcdefgh") in frames


async def test_oversized_frame_is_a_connection_error(raw_sock: Path) -> None:
    def go() -> int | None:
        r = Raw(raw_sock)
        r.hello()
        r.send(struct.pack(">I", 100_000)[1:] + bytes((f.DATA, 0)) + struct.pack(">I", 1) + b"x" * 100_000)
        return r.goaway()
    assert await _in_thread(go) == f.FRAME_SIZE_ERROR


async def test_endless_continuation_is_cut_off(raw_sock: Path) -> None:
    def go() -> int | None:
        r = Raw(raw_sock)
        r.hello()
        r.send(f.frame(f.HEADERS, 0, 1, b""))
        try:
            for _ in range(20):
                r.send(f.frame(f.CONTINUATION, 0, 1, b"\x00" * 16000))
        except OSError:
            pass
        return r.goaway()
    assert await _in_thread(go) == f.ENHANCE_YOUR_CALM


async def test_garbage_header_block_is_a_compression_error(raw_sock: Path) -> None:
    def go() -> int | None:
        r = Raw(raw_sock)
        r.hello()
        r.send(f.frame(f.HEADERS, f.END_HEADERS, 1, b"\xff\xff\xff\xff\xff"))
        return r.goaway()
    assert await _in_thread(go) == f.COMPRESSION_ERROR


async def test_non_grpc_requests_get_http_errors(raw_sock: Path) -> None:
    def go() -> list[Any]:
        r = Raw(raw_sock)
        r.hello()
        r.headers(1, ctype="text/plain", flags=f.END_HEADERS | f.END_STREAM)
        r.headers(3, method="GET", flags=f.END_HEADERS | f.END_STREAM)
        return r.frames()
    frames = await _in_thread(go)
    assert grpc_status(frames, 1)[":status"] == "415"
    assert grpc_status(frames, 3)[":status"] == "405"


async def test_compressed_or_missing_messages_are_refused(raw_sock: Path) -> None:
    def go() -> list[Any]:
        r = Raw(raw_sock)
        r.hello()
        r.headers(1, extra=(("grpc-encoding", "gzip"),))
        r.send(f.frame(f.DATA, f.END_STREAM, 1, b"\x01\x00\x00\x00\x01x"))
        r.headers(3, flags=f.END_HEADERS | f.END_STREAM)  # no message at all
        r.headers(5)
        r.send(f.frame(f.DATA, f.END_STREAM, 5, f.message(b"") + f.message(b"")))  # two messages
        r.headers(7, extra=(("grpc-timeout", "soon"),))
        r.send(f.frame(f.DATA, f.END_STREAM, 7, f.message(b"")))
        return r.frames()
    frames = await _in_thread(go)
    assert grpc_status(frames, 1)["grpc-status"] == str(grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert grpc_status(frames, 3)["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    assert grpc_status(frames, 5)["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    assert grpc_status(frames, 7)["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])


async def test_streams_beyond_the_limit_are_refused(server: Any) -> None:
    _, calls, sock = server

    def go() -> list[Any]:
        r = Raw(sock)
        r.hello()
        for i in range(10):  # the fixture allows 8 at a time; each waits for its release
            sid = 2 * i + 1
            r.headers(sid)
            r.send(f.frame(f.DATA, f.END_STREAM, sid, f.message(pb.VersionRequest(version="wait").SerializeToString())))
        return r.frames()
    frames = await _in_thread(go)
    refused = [s for kind, _, s, p in frames if kind == f.RST_STREAM and f.read_u32(p) == f.REFUSED_STREAM]
    assert refused == [17, 19]
    calls.release.set()


async def test_stream_reuse_and_data_on_idle_streams_end_the_connection(raw_sock: Path) -> None:
    def go() -> tuple[int | None, int | None]:
        r = Raw(raw_sock)
        r.hello()
        r.headers(3, flags=f.END_HEADERS | f.END_STREAM)
        r.headers(1, flags=f.END_HEADERS | f.END_STREAM)  # lower than a stream already opened
        first = r.goaway()
        r2 = Raw(raw_sock)
        r2.hello()
        r2.send(f.frame(f.DATA, 0, 9, b"x"))
        return first, r2.goaway()
    assert await _in_thread(go) == (f.PROTOCOL_ERROR, f.PROTOCOL_ERROR)


async def test_connection_limit(tmp_path: Path) -> None:
    srv = h2grpc.Server(routes(Calls()), h2grpc.Limits(max_connections=2))
    sock = tmp_path / "s.sock"
    await srv.start(sock)
    try:
        def go() -> int | None:
            keep = [Raw(sock), Raw(sock)]
            for r in keep:
                r.hello()
                r.frames()
            return Raw(sock).goaway()
        assert await _in_thread(go) == f.ENHANCE_YOUR_CALM
    finally:
        await srv.stop(0)


async def test_answer_waits_for_window_updates(raw_sock: Path) -> None:
    """Without WINDOW_UPDATEs the server sends 65,535 octets (the default windows) and no
    more; each update lets exactly that much more through, then the trailers."""
    def go() -> tuple[int, int, bool]:
        r = Raw(raw_sock)
        r.hello()
        r.headers(1)
        r.send(f.frame(f.DATA, f.END_STREAM, 1, f.message(pb.VersionRequest(version="big:100000")
                                                          .SerializeToString())))
        first = sum(len(p) for kind, _, s, p in r.frames() if kind == f.DATA and s == 1)
        r.send(f.window_update(0, 10_000) + f.window_update(1, 10_000))
        second = sum(len(p) for kind, _, s, p in r.frames() if kind == f.DATA and s == 1)
        r.send(f.window_update(0, 1_000_000) + f.window_update(1, 1_000_000))
        rest = r.frames()
        ended = any(kind == f.HEADERS and flags & f.END_STREAM for kind, flags, s, _ in rest if s == 1)
        return first, second, ended
    first, second, ended = await _in_thread(go)
    assert (first, second, ended) == (65_535, 10_000, True)


async def test_a_stream_nobody_reads_holds_its_handler(server: Any) -> None:
    """A client that grants no window gets 65,535 octets; the handler is held at its second
    200 kB event instead of queueing every event in memory; a window lets it go on."""
    _, calls, sock = server
    r = await _in_thread(Raw, sock)

    def ask() -> int:
        r.hello()
        r.headers(1, path=EVENTS)
        r.send(f.frame(f.DATA, f.END_STREAM, 1, f.message(b"")))
        return sum(len(p) for kind, _, s, p in r.frames() if kind == f.DATA and s == 1)
    assert await _in_thread(ask) == 65_535
    assert not calls.started.is_set()

    def grant() -> int:
        r.send(f.window_update(0, 2_000_000) + f.window_update(1, 2_000_000))
        return sum(len(p) for kind, _, s, p in r.frames() if kind == f.DATA and s == 1)
    rest = await _in_thread(grant)
    await asyncio.wait_for(calls.started.wait(), 5)
    one = 5 + len(pb.ContainerEventResponse(container_id="c0:" + "p" * 200_000).SerializeToString())
    assert rest == 3 * one - 65_535
    calls.release.set()


async def test_a_client_that_does_not_read_stops_being_read(server: Any) -> None:
    """50,000 PINGs, no reads: the server answers until its socket buffer is full, then reads
    no more, so what it holds for the client stays bounded (before: every ACK queued, 850 kB)."""
    srv, _, sock = server

    def flood() -> Raw:
        r = Raw(sock)
        r.hello()
        r.s.settimeout(3)
        ping = f.frame(f.PING, 0, 0, b"abcdefgh")
        try:
            r.send(ping * 50_000)
        except (TimeoutError, OSError):
            pass  # the server stopped reading: our own send blocks
        return r
    r = await _in_thread(flood)
    try:
        held = max(c._transport.get_write_buffer_size() for c in srv._connections)
    finally:
        r.s.close()
    assert held < 256 * 1024, held
