"""The daemon's streaming registration point (Daemon.streaming_parts)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cri_shim.api.dispatch import Dispatcher
from cri_shim.api.streaming import StreamingHandlers, StreamingTargets
from cri_shim.config import Config, StreamingConfig
from cri_shim.daemon import Daemon, streaming_settings
from runtime.streaming.backend import StreamingBackend
from tests.support.fake_cri import FakeTargets
from tests.support.streaming_fakes import LocalBackend

pytestmark = pytest.mark.timeout(30)


class _Ready:
    ready = True


def config(tmp_path: Path) -> Config:
    return Config(
        address=tmp_path / "cri.sock",
        root=tmp_path / "root",
        state=tmp_path / "state",
        streaming=StreamingConfig(address="127.0.0.1:0", token_ttl=5.0, idle_timeout=30.0),
    )


def test_settings_follow_the_streaming_table(tmp_path: Path) -> None:
    s = streaming_settings(config(tmp_path))
    assert (s.address, s.token_ttl, s.idle_timeout, s.tls_cert) == ("127.0.0.1:0", 5.0, 30.0, "")


def test_the_daemon_serves_streams_from_the_engine(tmp_path: Path) -> None:
    from runtime.streaming.service import StreamingService

    cfg = config(tmp_path)
    cfg = replace(cfg, streaming=replace(cfg.streaming, max_port_connects=7, port_connect_timeout=3.0))
    daemon = Daemon(cfg)
    backend, targets = daemon.streaming_parts()
    assert isinstance(backend, StreamingService) and targets is backend
    assert (backend.limits.max_port_connects, backend.limits.port_connect_timeout) == (7, 3.0)
    implemented = Dispatcher(daemon.handlers(), gate=_Ready()).implemented()
    assert {"Exec", "Attach", "PortForward"} <= set(implemented)


async def test_with_a_backend_the_rpcs_are_registered_and_served(tmp_path: Path) -> None:
    backend, targets = LocalBackend(), FakeTargets()

    class WithStreaming(Daemon):
        def streaming_parts(self) -> tuple[StreamingBackend, StreamingTargets]:
            return backend, targets

    daemon = WithStreaming(config(tmp_path))
    assert daemon.streaming is not None
    handlers = daemon.handlers()
    assert any(isinstance(h, StreamingHandlers) for h in handlers)
    assert {"Exec", "Attach", "PortForward"} <= set(Dispatcher(handlers, gate=_Ready()).implemented())
    await daemon.streaming.start()
    try:
        assert daemon.streaming.base_url.startswith("http://127.0.0.1:")
        assert daemon.streaming.tokens._ttl == 5.0
    finally:
        await daemon.streaming.close()
