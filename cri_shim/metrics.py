"""Prometheus metrics: the registry, the observers that feed it, and the /metrics endpoint.

One registry per daemon (no global state). Every family is named ``cri_shim_*`` by
Prometheus conventions (base units in the name, ``_total`` counters, ``_seconds``
histograms), except the standard ``process_*`` and ``python_*`` families of
prometheus-client's process and platform collectors, which keep the names every exporter
uses.

Two ways values arrive:
- pushed, as they happen, by the engine through small observer ports that this module
  implements without the engine importing prometheus-client: CRI calls
  (``RpcObserver``), image pulls (``runtime.image.pull.PullObserver``), network operations
  (``runtime.network.observe.NetworkObserver``) and streaming sessions
  (``cri_shim.streaming.metrics.StreamingMetrics``);
- computed at scrape time from the engine's state (pods and containers by state, shims,
  recovery, events): :class:`cri_shim.metrics_engine.EngineCollector`.

The HTTP endpoint is a small asyncio server in the daemon's own event loop: it refreshes the
scrape-time snapshot on the loop, then renders the text with prometheus-client in a thread
(one rendering at a time, so scrapes never take more than one thread of the default
executor). Anyone who can reach its port can connect, so connections are capped (the oldest
one still sending its request head is dropped to make room) and the head and the response
each have a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from cri_shim.admission import PendingSlots
from runtime.image.pull import PullReport
from runtime.model.network import NetworkEvent

log = logging.getLogger(__name__)

PREFIX = "cri_shim"

#: Latency buckets for CRI calls: sub-millisecond reads up to kubelet's 2 min deadline.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Image pulls: a cached manifest check to a multi-gigabyte image on a slow link.
PULL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Network set-up/tear-down: a netlink change (~1 ms) to a slow CNI plugin chain.
NETWORK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Streaming sessions: an exec probe to an interactive shell of hours.
STREAM_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)


class ScrapeSource(Protocol):
    """A collector whose values are computed on the event loop just before a scrape."""

    def refresh(self) -> None: ...


class Metrics:
    """Every pushed metric family of the daemon. Construction registers them; no I/O."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._scrape_sources: list[ScrapeSource] = []
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        # CRI calls
        self.rpc_requests = Counter(
            f"{PREFIX}_grpc_requests", "CRI gRPC calls handled, by service, method and gRPC status code.",
            ["service", "method", "code"], registry=r,
        )
        self.rpc_errors = Counter(
            f"{PREFIX}_grpc_errors", "CRI gRPC calls that ended with a status other than OK, by method and code.",
            ["service", "method", "code"], registry=r,
        )
        self.rpc_latency = Histogram(
            f"{PREFIX}_grpc_request_duration_seconds",
            "Latency of CRI gRPC calls, by service and method (server streams: the stream's lifetime).",
            ["service", "method"], buckets=RPC_BUCKETS, registry=r,
        )
        # (method, code) -> (requests, errors or None, latency) children; method names are
        # unique across both CRI services, and methods x codes is a bounded set
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "cri-shim version information.", ["version", "cri_api"], registry=r
        )
        # image pulls
        self.image_pulls = Counter(
            f"{PREFIX}_image_pulls", "Image pulls finished, by result (success, or the error's class).",
            ["result"], registry=r,
        )
        self.image_pulls_in_progress = Gauge(
            f"{PREFIX}_image_pulls_in_progress", "Image pulls under way.", registry=r
        )
        self.image_pull_bytes = Counter(
            f"{PREFIX}_image_pull_bytes",
            "Bytes downloaded from registries by image pulls (counted when a pull ends, also a failed one).",
            registry=r,
        )
        self.image_pull_duration = Histogram(
            f"{PREFIX}_image_pull_duration_seconds", "Duration of image pulls, by result.",
            ["result"], buckets=PULL_BUCKETS, registry=r,
        )
        self.image_pull_layers = Counter(
            f"{PREFIX}_image_pull_layers", "Layers of the images pulled successfully.", registry=r
        )
        self.image_pull_layers_reused = Counter(
            f"{PREFIX}_image_pull_layers_reused",
            "Layers of the images pulled successfully that were already unpacked locally (not downloaded).",
            registry=r,
        )
        # pod networking
        self.network_duration = Histogram(
            f"{PREFIX}_network_operation_duration_seconds",
            "Latency of pod network operations, by operation (set-up: prepare, pod_netns (inside the pod), attach; "
            "tear-down: teardown; also check, recover, nft_apply, status) and plugin (builtin, cni, none).",
            ["operation", "plugin"], buckets=NETWORK_BUCKETS, registry=r,
        )
        self.network_errors = Counter(
            f"{PREFIX}_network_operation_errors",
            "Pod network operations that failed, by operation, plugin and the error's class.",
            ["operation", "plugin", "error"], registry=r,
        )
        # streaming
        self.streaming_active = Gauge(
            f"{PREFIX}_streaming_sessions_active",
            "Streaming sessions (exec, attach, portforward) open now, by kind.", ["kind"], registry=r,
        )
        self.streaming_sessions = Counter(
            f"{PREFIX}_streaming_sessions", "Streaming sessions ended, by kind and protocol (spdy, websocket).",
            ["kind", "protocol"], registry=r,
        )
        self.streaming_duration = Histogram(
            f"{PREFIX}_streaming_session_duration_seconds", "Duration of streaming sessions, by kind.",
            ["kind"], buckets=STREAM_BUCKETS, registry=r,
        )
        self.connections_refused = Counter(
            f"{PREFIX}_connections_refused",
            "Connections to the streaming server or /metrics refused or cut off by a limit, by server and reason "
            "(connection_limit, pending_limit, pending_per_client_limit, head_timeout, stream_limit, "
            "daemon_streams_limit, daemon_bytes_limit).",
            ["server", "reason"], registry=r,
        )
        # series that exist (at 0) from the start, so rates and alerts need no special case
        for kind in ("exec", "attach", "portforward"):
            self.streaming_active.labels(kind).set(0)
        self.image_pulls.labels("success")
        self.image_pull_duration.labels("success")

    # -- scrape-time collectors ---------------------------------------------------------------

    def add_scrape_source(self, source: ScrapeSource) -> None:
        """Register a collector (already in :attr:`registry`) to refresh before each scrape."""
        self._scrape_sources.append(source)

    def refresh(self) -> None:
        """Recompute scrape-time values; call on the event loop (engine state lives there)."""
        for source in self._scrape_sources:
            try:
                source.refresh()
            except Exception:
                log.exception("metrics source %r failed to refresh", source)

    def exposition(self) -> bytes:
        """The text exposition (thread-safe; does not refresh).

        Without prometheus-client's ``*_created`` samples: in the text format they would be
        ingested as extra gauge series of every counter and histogram (the creation time
        is the daemon's start, which ``process_start_time_seconds`` already gives).
        """
        return generate_latest(_WithoutCreated(self.registry))

    # -- RpcObserver ------------------------------------------------------------------------------

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        # the labelled children, looked up once per (method, code): labels() costs ~8 µs a call
        children = self._rpc_children.get((method, code))
        if children is None:
            children = (self.rpc_requests.labels(service, method, code),
                        self.rpc_errors.labels(service, method, code) if code != "OK" else None,
                        self.rpc_latency.labels(service, method))
            self._rpc_children[(method, code)] = children
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    # -- PullObserver -----------------------------------------------------------------------------

    def pull_started(self, reference: str) -> None:
        self.image_pulls_in_progress.inc()

    def pull_progress(self, reference: str, bytes_downloaded: int, bytes_total: int) -> None:
        return None  # bytes are counted once, at the end: see pull_finished

    def pull_finished(self, report: PullReport) -> None:
        self.image_pulls_in_progress.dec()
        self.image_pulls.labels(report.result).inc()
        self.image_pull_duration.labels(report.result).observe(report.duration)
        self.image_pull_bytes.inc(max(0, report.bytes_downloaded))
        if report.result == "success":
            self.image_pull_layers.inc(report.layers_total)
            self.image_pull_layers_reused.inc(report.layers_reused)

    # -- NetworkObserver --------------------------------------------------------------------------

    def network_event(self, event: NetworkEvent) -> None:
        plugin = event.mode.value if event.mode is not None else "none"
        self.network_duration.labels(event.operation, plugin).observe(event.seconds)
        if event.error:
            self.network_errors.labels(event.operation, plugin, event.error).inc()

    # -- StreamingMetrics -------------------------------------------------------------------------

    def session_opened(self, kind: str, protocol: str) -> None:
        self.streaming_active.labels(kind).inc()

    def session_closed(self, kind: str, protocol: str, seconds: float) -> None:
        self.streaming_active.labels(kind).dec()
        self.streaming_sessions.labels(kind, protocol).inc()
        self.streaming_duration.labels(kind).observe(seconds)

    def connection_refused(self, reason: str) -> None:
        self.connections_refused.labels("streaming", reason).inc()


class _WithoutCreated:
    """A read-only view of a registry that leaves out ``*_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if family.type in ("counter", "histogram", "summary", "gaugehistogram"):
                samples = [s for s in family.samples if not s.name.endswith("_created")]
                copy = Metric(family.name, family.documentation, family.type, family.unit)
                copy.samples = samples
                yield copy
            else:
                yield family


#: Seconds a /metrics client has to read the response.
WRITE_TIMEOUT = 10.0


class MetricsServer:
    """Serves ``GET /metrics`` on host:port from the event loop.

    At most ``max_connections`` connections are open at once; a new one beyond that drops
    the oldest connection still sending its request head, or is closed at once if every
    connection is already being answered. A request head must arrive within
    ``header_timeout`` seconds, and the response be read within :data:`WRITE_TIMEOUT`.
    """

    def __init__(
        self, metrics: Metrics, address: str, *, max_connections: int = 16, header_timeout: float = 5.0
    ) -> None:
        self._metrics = metrics
        self._address = address
        self._server: asyncio.Server | None = None
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._open = 0
        self._pending = PendingSlots(max_connections, max_connections, on_drop=self._refused)
        self._render_lock = asyncio.Lock()
        #: connections refused or dropped, by reason
        self.refused: collections.Counter[str] = collections.Counter()

    def _refused(self, reason: str) -> None:
        self.refused[reason] += 1
        self._metrics.connections_refused.labels("metrics", reason).inc()
        log.debug("metrics: connection refused or dropped: %s", reason)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        host, _, port = self._address.rpartition(":")
        host = host.strip("[]")
        self._server = await asyncio.start_server(self._serve, host, int(port), reuse_address=True)
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # a dropped connection leaves on its next loop iteration: one drop makes room for one
        if self._open >= self._max_connections and not self._pending.drop_oldest("connection_limit"):
            self._refused("connection_limit")
            writer.transport.abort()
            return
        self._open += 1
        peer = writer.get_extra_info("peername")
        pending = self._pending.admit(str(peer[0]) if isinstance(peer, tuple) else str(peer), writer.transport.abort)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._header_timeout)
            except TimeoutError:
                self._refused("head_timeout")
                return
            self._pending.release(pending)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                await self._respond(writer, 405, b"method not allowed\n", "text/plain")
            elif parts[1].split("?", 1)[0] != "/metrics":
                await self._respond(writer, 404, b"not found; try /metrics\n", "text/plain")
            else:
                self._metrics.refresh()
                async with self._render_lock:
                    body = await asyncio.to_thread(self._metrics.exposition)
                await self._respond(writer, 200, body if parts[0] == "GET" else b"", CONTENT_TYPE_LATEST)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            self._pending.release(pending)
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
