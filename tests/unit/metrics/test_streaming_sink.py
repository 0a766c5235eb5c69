"""The streaming server reports each upgraded session to its metrics sink."""

from __future__ import annotations

import asyncio

import pytest

from cri_shim.metrics import Metrics
from cri_shim.streaming.server import StreamingServer, StreamingSettings
from runtime.streaming.backend import ExecRequest
from tests.support.stream_clients import spdy_exec, ws_exec
from tests.support.streaming_fakes import LocalBackend

pytestmark = pytest.mark.timeout(30)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.open_during: list[int] = []

    def session_opened(self, kind: str, protocol: str) -> None:
        self.events.append(("open", kind, protocol))

    def session_closed(self, kind: str, protocol: str, seconds: float) -> None:
        assert seconds >= 0
        self.events.append(("close", kind, protocol))

    def connection_refused(self, reason: str) -> None:
        self.events.append(("refused", reason, ""))


async def test_sessions_are_reported_open_and_closed() -> None:
    rec = Recorder()
    server = StreamingServer(LocalBackend(), StreamingSettings(address="127.0.0.1:0"), metrics=rec)
    await server.start()
    try:
        url = server.exec_url(ExecRequest("c1", ("sh", "-c", "echo hi")))
        res = await spdy_exec(url)
        assert res.stdout == b"hi\n"
        url = server.exec_url(ExecRequest("c1", ("true",), stderr=False))
        await ws_exec(url)
        for _ in range(100):  # the server closes its side after the client has its result
            if len(rec.events) == 4:
                break
            await asyncio.sleep(0.02)
    finally:
        await server.close()
    assert rec.events == [("open", "exec", "spdy"), ("close", "exec", "spdy"),
                          ("open", "exec", "websocket"), ("close", "exec", "websocket")]


async def test_metrics_implements_the_sink() -> None:
    m = Metrics()
    m.session_opened("attach", "spdy")
    assert m.registry.get_sample_value("cri_shim_streaming_sessions_active", {"kind": "attach"}) == 1
    m.session_closed("attach", "spdy", 2.5)
    assert m.registry.get_sample_value("cri_shim_streaming_sessions_active", {"kind": "attach"}) == 0
    assert m.registry.get_sample_value(
        "cri_shim_streaming_sessions_total", {"kind": "attach", "protocol": "spdy"}) == 1
    assert m.registry.get_sample_value("cri_shim_streaming_session_duration_seconds_sum", {"kind": "attach"}) == 2.5


async def test_refused_connections_are_counted_by_server_and_reason() -> None:
    m = Metrics()
    server = StreamingServer(LocalBackend(), StreamingSettings(header_timeout=0.2), metrics=m)
    await server.start()
    try:
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 408")
        writer.close()
        assert m.connections_refused.labels("streaming", "head_timeout")._value.get() == 1
    finally:
        await server.close()
