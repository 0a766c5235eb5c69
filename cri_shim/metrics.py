"""Prometheus metrics: the registry, the RPC observer, and the /metrics HTTP endpoint.

One registry per daemon (no global state). The HTTP endpoint is a small asyncio server in
the daemon's own event loop; the exposition text comes from prometheus-client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

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

log = logging.getLogger(__name__)

PREFIX = "cri_shim"

#: Latency buckets for CRI calls: sub-millisecond reads up to kubelet's 2 min deadline.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Every metric family of the daemon. Construction registers them; no I/O."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.rpc_requests = Counter(
            f"{PREFIX}_grpc_requests",
            "CRI gRPC calls handled, by service, method and gRPC status code.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.rpc_errors = Counter(
            f"{PREFIX}_grpc_errors",
            "CRI gRPC calls that ended with a status other than OK, by method and code.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.rpc_latency = Histogram(
            f"{PREFIX}_grpc_request_duration_seconds",
            "Latency of CRI gRPC calls, by service and method.",
            ["service", "method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "cri-shim version information.", ["version", "cri_api"], registry=self.registry
        )

    # RpcObserver
    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        self.rpc_requests.labels(service, method, code).inc()
        if code != "OK":
            self.rpc_errors.labels(service, method, code).inc()
        self.rpc_latency.labels(service, method).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """Serves ``GET /metrics`` on host:port from the event loop."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        self._metrics = metrics
        self._address = address
        self._server: asyncio.Server | None = None

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
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                await self._respond(writer, 405, b"method not allowed\n", "text/plain")
            elif parts[1].split("?", 1)[0] != "/metrics":
                await self._respond(writer, 404, b"not found; try /metrics\n", "text/plain")
            else:
                body = await asyncio.to_thread(self._metrics.exposition)
                await self._respond(writer, 200, body if parts[0] == "GET" else b"", CONTENT_TYPE_LATEST)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
