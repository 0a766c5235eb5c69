"""The daemon's composition root: engine, handlers, gRPC server, side servers, signals.

Start-up order: refuse a socket that a live daemon answers on; take the root lock; bind
the CRI socket (mode 0660) and serve Version/Status at once; run the engine's recovery
(RuntimeReady turns true when it finishes; other calls answer UNAVAILABLE until then).
SIGTERM/SIGINT: stop accepting, let in-flight calls finish (bounded), close the engine and
exit 0. A daemon stop never touches running containers: their pod shims keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import grpc

from cri_shim import h2grpc
from cri_shim.api.checkpoint import CheckpointHandlers
from cri_shim.api.chunks import MAX_MESSAGE_BYTES
from cri_shim.api.containers import ContainerHandlers
from cri_shim.api.dispatch import Dispatcher
from cri_shim.api.events import ContainerEventFeed, EngineStatusSource, EventHandlers
from cri_shim.api.images import ImageHandlers
from cri_shim.api.pods import PodHandlers
from cri_shim.api.runtime_info import RuntimeInfoHandlers
from cri_shim.api.stats import StatsHandlers
from cri_shim.api.streaming import StreamingHandlers, StreamingTargets
from cri_shim.config import Config
from cri_shim.metrics import Metrics, MetricsServer
from cri_shim.metrics_engine import EngineCollector
from cri_shim.notify import notify
from cri_shim.streaming.server import StreamingServer, StreamingSettings
from runtime.engine import Engine
from runtime.errors import EngineError
from runtime.streaming.backend import StreamingBackend, StreamingLimits

log = logging.getLogger(__name__)

#: How long in-flight calls may run after SIGTERM before the server cancels them.
SHUTDOWN_GRACE_SECONDS = 10.0


class StartupError(Exception):
    """Start-up cannot proceed; the message is for the operator. Exit status 1."""


def socket_is_live(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    if not path.exists():
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        # e.g. not a socket at all; treat as stale and let the unlink below decide
        return False
    else:
        return True
    finally:
        s.close()


class RootLock:
    """An exclusive flock on ``<root>/cri-shim.lock``: one daemon per root directory."""

    def __init__(self, root: Path) -> None:
        self._path = root / "cri-shim.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the root dir: root's alone
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StartupError(
                f"another cri-shim (pid {holder or '?'}) is using root {self._path.parent}; stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Daemon:
    """One cri-shim daemon. Construction does no I/O; :meth:`run` serves until signalled."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = Engine(config.runtime_settings())
        self.metrics = Metrics()
        self.engine.images.add_observer(self.metrics)
        self.engine.network.add_observer(self.metrics)
        self.container_events = ContainerEventFeed(self.engine.events, EngineStatusSource(self.engine))
        collector = EngineCollector(self.engine, self.engine.lifecycle, self.container_events)
        self.metrics.registry.register(collector)
        self.metrics.add_scrape_source(collector)
        self._stop = asyncio.Event()
        self._server: grpc.aio.Server | h2grpc.Server | None = None
        self._metrics_server: MetricsServer | None = None
        backend, self._streaming_targets = self.streaming_parts()
        self.streaming = StreamingServer(backend, streaming_settings(config), metrics=self.metrics)
        self._lock = RootLock(config.root)

    def handlers(self) -> list[Any]:
        """The CRI area handler objects; each area module adds its own here."""
        out: list[Any] = [
            RuntimeInfoHandlers(self.engine, self.config),
            ImageHandlers(self.engine),
            PodHandlers(self.engine),
            ContainerHandlers(self.engine),
            StatsHandlers(self.engine.stats),
            EventHandlers(self.container_events),
            CheckpointHandlers(self.engine.checkpoints),
        ]
        out.append(StreamingHandlers(self._streaming_targets, self.streaming))
        return out

    def streaming_parts(self) -> tuple[StreamingBackend, StreamingTargets]:
        """The engine objects behind exec/attach/port-forward: the backend the streaming server
        calls (``runtime.streaming.backend.StreamingBackend``) and the target checks of the
        Exec/Attach/PortForward RPCs (``cri_shim.api.streaming.StreamingTargets``).

        Both are the engine's streaming service (over the pod shims, runtime.streaming).
        """
        c = self.config.streaming
        service = self.engine.streaming(StreamingLimits(c.max_port_connects, c.port_connect_timeout))
        return service, service

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        sock = self.config.address
        if socket_is_live(sock):
            raise StartupError(f"a live cri-shim (or other server) is already serving on {sock}")
        self._lock.acquire()
        try:
            return await self._serve(sock)
        finally:
            self._lock.release()

    async def _serve(self, sock: Path) -> int:
        sock.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        if sock.exists() or sock.is_symlink():
            log.info("removing stale socket %s left by an earlier run", sock)
            sock.unlink()
        self.metrics.build_info.labels(_version(), _cri_api()).set(1)
        try:
            await self.streaming.start()
        except (OSError, ValueError) as exc:
            address = self.config.streaming.address
            raise StartupError(f"cannot start the streaming server on {address}: {exc}") from None
        dispatcher = Dispatcher(self.handlers(), gate=self.engine, observer=self.metrics)
        self.container_events.start()
        old_umask = os.umask(0o117)
        try:
            self._server = await self._start_server(dispatcher, sock)
        finally:
            os.umask(old_umask)
        os.chmod(sock, 0o660)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        log.info(
            "cri-shim %s serving CRI on unix://%s (%s gRPC server; implemented: %d methods)",
            _version(), sock, self.config.grpc_server, len(dispatcher.implemented()),
        )
        try:
            if self.config.metrics.address:
                m = self.config.metrics
                self._metrics_server = MetricsServer(
                    self.metrics, m.address, max_connections=m.max_connections, header_timeout=m.header_timeout
                )
                await self._metrics_server.start()
            start = asyncio.create_task(self.engine.start(), name="engine-start")
            stop = asyncio.create_task(self._stop.wait(), name="stop-signal")
            done, _ = await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
            if start in done:
                try:
                    start.result()  # a failed start-up (e.g. corrupt store) ends the daemon
                except EngineError as exc:  # a host that cannot run the configuration
                    raise StartupError(f"the engine cannot start: {exc}") from None
                notify("READY=1")  # systemd Type=notify: recovered, RuntimeReady
                await stop
            else:
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await start
        finally:
            await self._shutdown(sock)
        return 0

    async def _start_server(self, dispatcher: Dispatcher, sock: Path) -> grpc.aio.Server | h2grpc.Server:
        """The CRI server of ``grpc_server`` (config), listening on ``sock``."""
        if self.config.grpc_server == "native":
            native = h2grpc.Server(dispatcher.routes(), h2grpc.Limits(max_message=MAX_MESSAGE_BYTES))
            try:
                await native.start(sock)
            except OSError as exc:
                raise StartupError(f"cannot listen on {sock}: {exc}") from None
            return native
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers(tuple(dispatcher.generic_handlers()))
        if server.add_insecure_port(f"unix://{sock}") == 0:
            raise StartupError(f"cannot listen on {sock}")
        await server.start()
        return server

    def _on_signal(self, sig: int) -> None:
        if self._stop.is_set():
            log.warning("second %s: exiting without waiting", signal.Signals(sig).name)
            os._exit(1)
        log.info("%s received: stopping (in-flight calls get %.0fs)", signal.Signals(sig).name, SHUTDOWN_GRACE_SECONDS)
        self._stop.set()

    async def _shutdown(self, sock: Path) -> None:
        notify("STOPPING=1")
        await self.container_events.close()  # ends GetContainerEvents streams: nothing to wait for
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE_SECONDS)
            self._server = None
        if self._metrics_server is not None:
            await self._metrics_server.close()
        # ends every session; the backend kills execs and detaches attaches while the engine lives
        await self.streaming.close()
        await self.engine.close()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        log.info("cri-shim stopped; containers keep running under their pod shims")


def streaming_settings(config: Config) -> StreamingSettings:
    """The streaming server's settings from the ``[streaming]`` table."""
    c = config.streaming
    return StreamingSettings(
        address=c.address,
        tls_cert=c.tls_cert,
        tls_key=c.tls_key,
        token_ttl=c.token_ttl,
        idle_timeout=c.idle_timeout,
        header_timeout=c.header_timeout,
        max_connections=c.max_connections,
        max_pending=c.max_pending,
        max_pending_per_client=c.max_pending_per_client,
        max_streams_per_connection=c.max_streams_per_connection,
        connection_buffer=c.connection_buffer,
        max_streams=c.max_streams,
        max_buffered=c.max_buffered,
    )


def _version() -> str:
    from cri_shim import __version__

    return __version__


def _cri_api() -> str:
    from cri_shim.api.version import CRI_API_VERSION

    return CRI_API_VERSION
