"""The streaming HTTP server: URLs for Exec/Attach/PortForward, and the upgraded sessions.

One asyncio server (``asyncio.start_server``, optional TLS) takes ``GET``/``POST`` on
``/exec/<token>``, ``/attach/<token>`` and ``/portforward/<token>``. The token (single use,
expiring, bound to the CRI request and its kind) is taken before anything else; an unknown,
used or expired token gets 404 and no backend is called. Then the request is upgraded to
SPDY/3.1 or to WebSocket, and the session runs until it ends or the client goes away.

Every connection runs in a task the server tracks: :meth:`StreamingServer.close` cancels them
all, and cancellation reaches the backend call, which releases its process or socket.

Until its token is taken, a connection is *pending* (:mod:`cri_shim.admission`): bounded per
client address and in total (the oldest pending one is dropped to make room), and it must
finish the TLS handshake and its request head within ``header_timeout``. After the upgrade,
the per-connection and daemon-wide limits of :mod:`cri_shim.streaming.limits` apply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from cri_shim.admission import Pending, PendingSlots
from cri_shim.streaming import portforward, remotecommand
from cri_shim.streaming import protocol as p
from cri_shim.streaming.httphead import HeadError, RequestHead, parse_head, query_ports, read_head, response, route
from cri_shim.streaming.limits import ConnectionLimits, DaemonBudgets
from cri_shim.streaming.metrics import NoStreamingMetrics, StreamingMetrics
from cri_shim.streaming.spdy.connection import SpdyConnection
from cri_shim.streaming.tokens import TokenCache
from cri_shim.streaming.transport import StreamTransport, TransportClosed
from cri_shim.streaming.websocket import (
    ChannelConnection,
    HandshakeError,
    TunnelTransport,
    WsConnection,
    idle_watchdog,
    start_server_handshake,
)
from runtime.streaming.backend import AttachRequest, ExecRequest, PortForwardRequest, StreamingBackend

log = logging.getLogger(__name__)

StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


class _Limits(TypedDict):
    limits: ConnectionLimits
    budgets: DaemonBudgets
    on_cut: Callable[[str], None]


@dataclass(frozen=True, slots=True)
class StreamingSettings:
    """How the server listens and its limits (the daemon fills it from ``[streaming]``)."""

    address: str = "127.0.0.1:0"
    tls_cert: str = ""
    tls_key: str = ""
    #: seconds an unused URL stays valid
    token_ttl: float = 60.0
    #: seconds without traffic before a session is closed (cri-streaming: 4 h)
    idle_timeout: float = 4 * 3600.0
    #: seconds the client has to open its streams after the upgrade (cri-streaming: 30 s)
    stream_creation_timeout: float = 30.0
    #: seconds to finish the TLS handshake and send the request head
    header_timeout: float = 5.0
    #: concurrent connections; more get 503
    max_connections: int = 512
    #: connections that have not presented a valid token yet, in total and per client address
    max_pending: int = 256
    max_pending_per_client: int = 128
    #: streams (SPDY) or channels (WebSocket) held by one connection, in any state
    max_streams_per_connection: int = 512
    #: received bytes one connection may hold unread before it is not read any more
    connection_buffer: int = 1 << 20
    #: streams and unread bytes held by all connections; over, the biggest holder is cut off
    max_streams: int = 4096
    max_buffered: int = 64 << 20
    max_tokens: int = 1000

    @property
    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(max_streams=self.max_streams_per_connection, buffer_bytes=self.connection_buffer)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class StreamingServer:
    """Construction does no I/O; :meth:`start` listens, :meth:`close` ends every session."""

    def __init__(
        self,
        backend: StreamingBackend,
        settings: StreamingSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: StreamingMetrics | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.metrics: StreamingMetrics = metrics or NoStreamingMetrics()
        self.tokens: TokenCache[StreamRequest] = TokenCache(
            settings.token_ttl, clock=clock, max_in_flight=settings.max_tokens
        )
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        #: connections refused or cut off by a limit, by reason (connection_limit,
        #: pending_limit, pending_per_client_limit, head_timeout, stream_limit,
        #: daemon_streams_limit, daemon_bytes_limit)
        self.refused: collections.Counter[str] = collections.Counter()
        self.pending = PendingSlots(settings.max_pending, settings.max_pending_per_client,
                                    on_drop=self._refused)
        self.budgets = DaemonBudgets.of(settings.max_streams, settings.max_buffered,
                                        on_cut=self._refused)
        self._base_url = ""
        self.served = 0

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        host, port = split_address(self.settings.address)
        tls: ssl.SSLContext | None = None
        if self.settings.tls_cert:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.minimum_version = ssl.TLSVersion.TLSv1_2
            tls.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        # TLS is started per connection, inside the request-head timeout and the pending slots
        self._tls = tls
        self._server = await asyncio.start_server(self._on_connection, host or None, port)
        bound = self._server.sockets[0].getsockname()
        url_host = bound[0]
        if url_host in ("0.0.0.0", ""):
            url_host = "127.0.0.1"  # kubelet runs on this node; any local address reaches us
        elif url_host == "::":
            url_host = "::1"
        if ":" in url_host:
            url_host = f"[{url_host}]"
        self._base_url = f"{'https' if tls else 'http'}://{url_host}:{bound[1]}"
        log.info("streaming server listening on %s", self._base_url)

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("streaming server not started")
        return self._base_url

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening and end every session (their backend calls are cancelled)."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task, writer in list(self._connections.items()):
            writer.transport.abort()  # no lingering: the server is going away
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    def _refused(self, reason: str) -> None:
        self.refused[reason] += 1
        self.metrics.connection_refused(reason)
        log.debug("streaming: connection refused or cut off: %s", reason)

    # -- URLs ---------------------------------------------------------------------------------

    def exec_url(self, request: ExecRequest) -> str:
        return f"{self.base_url}/exec/{self.tokens.insert('exec', request)}"

    def attach_url(self, request: AttachRequest) -> str:
        return f"{self.base_url}/attach/{self.tokens.insert('attach', request)}"

    def port_forward_url(self, request: PortForwardRequest) -> str:
        return f"{self.base_url}/portforward/{self.tokens.insert('portforward', request)}"

    # -- connections --------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        peer = writer.get_extra_info("peername")
        pending: Pending | None = None
        try:
            if len(self._connections) > self.settings.max_connections:
                log.warning("streaming: refusing %s: %d connections open", peer, len(self._connections) - 1)
                self._refused("connection_limit")
                await _answer(writer, 503, "too many streaming connections")
                return
            client = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            pending = self.pending.admit(client, writer.transport.abort)
            await self._serve(reader, writer, peer, pending)
        except asyncio.CancelledError:
            # Only close() cancels these tasks, and it waits for them. Ending normally keeps
            # asyncio's stream callback from logging the cancellation as an error.
            writer.transport.abort()
        except Exception:
            log.exception("streaming: connection from %s failed", peer)
        finally:
            if pending is not None:
                self.pending.release(pending)
            self._connections.pop(task, None)
            if not writer.is_closing():
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object, pending: Pending
    ) -> None:
        try:
            async with asyncio.timeout(self.settings.header_timeout):
                if self._tls is not None:
                    try:
                        await writer.start_tls(self._tls)
                    except (ssl.SSLError, ConnectionError, OSError) as exc:
                        log.info("streaming: TLS handshake with %s failed: %s", peer, exc)
                        return
                raw, rest = await read_head(reader)
            head = parse_head(raw)
            kind, token = route(head)
        except TimeoutError:
            log.info("streaming: %s sent no request head in %.0fs", peer, self.settings.header_timeout)
            self._refused("head_timeout")
            await _answer(writer, 408, "request head not received in time")
            return
        except HeadError as exc:
            await _answer(writer, exc.status, str(exc))
            return
        entry = self.tokens.consume(token)
        if entry is None or entry.kind != kind:
            log.info("streaming: %s %s from %s: unknown, used or expired token", head.method, kind, peer)
            await _answer(writer, 404, "404 page not found")
            return
        self.pending.release(pending)  # a valid token: no longer a pending connection
        started = time.monotonic()
        request = entry.request
        if not (head.is_websocket or head.is_spdy):
            await _answer(writer, 400, "unable to upgrade: missing upgrade headers in request")
            outcome = "not an upgrade request"
        else:
            protocol = "websocket" if head.is_websocket else "spdy"
            self.metrics.session_opened(kind, protocol)
            try:
                if head.is_websocket:
                    outcome = await self._serve_websocket(reader, writer, head, rest, kind, request)
                else:
                    outcome = await self._serve_spdy(reader, writer, head, rest, kind, request)
            finally:
                self.metrics.session_closed(kind, protocol, time.monotonic() - started)
        self.served += 1
        target = request.sandbox_id if isinstance(request, PortForwardRequest) else request.container_id
        log.info(
            "streaming: %s %s from %s ended after %.1fs: %s",
            kind, target[:12], peer, time.monotonic() - started, outcome,
        )

    # -- SPDY ---------------------------------------------------------------------------------

    async def _serve_spdy(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: RequestHead,
        rest: bytes,
        kind: str,
        request: StreamRequest,
    ) -> str:
        offered = p.split_protocols(head.values(p.HEADER_PROTOCOL_VERSION))
        supported = (p.PORTFORWARD_V1,) if kind == "portforward" else p.SPDY_REMOTECOMMAND_PROTOCOLS
        if not offered:
            await _answer(writer, 400, f"unable to upgrade: header {p.HEADER_PROTOCOL_VERSION} is missing or empty")
            return "no protocol offered"
        version = p.negotiate(offered, supported)
        if version is None:
            await _answer(
                writer,
                403,
                f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                f"server accepts {list(supported)}",
                tuple((p.HEADER_ACCEPTED_PROTOCOL_VERSIONS, v) for v in supported),
            )
            return "no common protocol"
        writer.write(
            response(
                101, headers=(("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), (p.HEADER_PROTOCOL_VERSION, version))
            )
        )
        transport = StreamTransport(reader, writer, prefix=rest)
        limits = self._limits()
        if isinstance(request, PortForwardRequest):
            conn = SpdyConnection(
                transport, idle_timeout=self.settings.idle_timeout, stream_filter=portforward.stream_refusal(request),
                **limits,
            )
            conn.start()
            try:
                return await portforward.serve_spdy(
                    conn, backend=self.backend, request=request,
                    creation_timeout=self.settings.stream_creation_timeout,
                )
            finally:
                await conn.close()
        conn = SpdyConnection(transport, idle_timeout=self.settings.idle_timeout, **limits)
        conn.start()
        try:
            return await remotecommand.serve_spdy(
                conn, backend=self.backend, request=request, version=version,
                creation_timeout=self.settings.stream_creation_timeout,
            )
        finally:
            await conn.close()

    # -- WebSocket ----------------------------------------------------------------------------

    async def _serve_websocket(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: RequestHead,
        rest: bytes,
        kind: str,
        request: StreamRequest,
    ) -> str:
        try:
            ws, ws_request = start_server_handshake(head.raw)
        except HandshakeError as exc:
            await _answer(writer, 400, f"unable to upgrade: {exc}")
            return "bad websocket handshake"
        offered = list(ws_request.subprotocols) or [""]
        supported = p.WEBSOCKET_PORTFORWARD_PROTOCOLS if kind == "portforward" else p.WEBSOCKET_REMOTECOMMAND_PROTOCOLS
        chosen = p.negotiate(offered, supported)
        if chosen is None:
            await _answer(
                writer, 403, f"requested protocol(s) are not supported: {offered}; supports {list(supported)}"
            )
            return "no common protocol"
        ports: tuple[int, ...] = ()
        if isinstance(request, PortForwardRequest) and chosen != p.PORTFORWARD_TUNNEL:
            try:
                ports = request.ports or query_ports(head)
            except HeadError as exc:
                await _answer(writer, exc.status, str(exc))
                return "bad ports"
            if not ports:
                await _answer(writer, 400, 'query parameter "port" is required')
                return "no ports"
            if 2 * len(ports) > self.settings.max_streams_per_connection:
                self._refused("stream_limit")
                await _answer(writer, 400, f"too many ports: {len(ports)} (at most "
                                           f"{self.settings.max_streams_per_connection // 2} per connection)")
                return "too many ports"
        transport = StreamTransport(reader, writer, prefix=rest)
        limits = self._limits()
        try:
            conn = await WsConnection.accept(transport, ws, chosen, **limits)
        except TransportClosed:
            return "disconnected during handshake"
        watchdog = asyncio.create_task(idle_watchdog(conn, self.settings.idle_timeout))
        try:
            if isinstance(request, PortForwardRequest):
                if chosen == p.PORTFORWARD_TUNNEL:
                    spdy = SpdyConnection(
                        TunnelTransport(conn), stream_filter=portforward.stream_refusal(request), **limits
                    )
                    spdy.start()
                    try:
                        return await portforward.serve_spdy(
                            spdy, backend=self.backend, request=request,
                            creation_timeout=self.settings.stream_creation_timeout,
                        )
                    finally:
                        await spdy.close()
                return await self._ws_port_forward(conn, request, ports)
            return await self._ws_remotecommand(conn, request, chosen)
        finally:
            watchdog.cancel()
            await conn.close()

    def _limits(self) -> _Limits:
        """Keyword arguments that put a connection under the server's limits."""
        return {
            "limits": self.settings.connection_limits,
            "budgets": self.budgets,
            "on_cut": self._refused,
        }

    async def _ws_remotecommand(self, conn: WsConnection, request: ExecRequest | AttachRequest, version: str) -> str:
        channels = ChannelConnection(conn, 5, readable={p.CHANNEL_STDIN, p.CHANNEL_RESIZE})
        reading = asyncio.create_task(channels.run())
        try:
            streams = remotecommand.SessionStreams(
                tty=request.tty,
                stdin=channels.channel(p.CHANNEL_STDIN) if request.stdin else None,
                stdout=channels.channel(p.CHANNEL_STDOUT) if request.stdout else None,
                stderr=channels.channel(p.CHANNEL_STDERR) if request.stderr else None,
                error=channels.channel(p.CHANNEL_ERROR),
                resize=channels.channel(p.CHANNEL_RESIZE) if request.tty else None,
            )
            # cri-streaming writes an empty message first: old clients wait for it
            first = p.CHANNEL_STDOUT if request.stdout else p.CHANNEL_STDERR if request.stderr else p.CHANNEL_ERROR
            await channels.send(first, b"")
            return await remotecommand.run_session(
                backend=self.backend, request=request, streams=streams, version=version, disconnected=conn.closed
            )
        except TransportClosed:
            return "disconnected"
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def _ws_port_forward(self, conn: WsConnection, request: PortForwardRequest, ports: tuple[int, ...]) -> str:
        channels = ChannelConnection(conn, 2 * len(ports), readable={2 * i for i in range(len(ports))})
        reading = asyncio.create_task(channels.run())

        async def one(i: int, port: int) -> None:
            data, error = channels.channel(2 * i), channels.channel(2 * i + 1)
            prefix = port.to_bytes(2, "little")
            await data.write(prefix)
            await error.write(prefix)
            try:
                await portforward.forward(data, self.backend, request.sandbox_id, port)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                message = f"error forwarding port {port} to pod {request.sandbox_id}: {exc}"
                log.info("portforward: %s", message)
                with contextlib.suppress(ConnectionError):
                    await error.write(message.encode())

        forwards = [asyncio.create_task(one(i, port)) for i, port in enumerate(ports)]
        gone = asyncio.create_task(conn.closed.wait())
        try:
            # ends when every forwarding has ended, or the client is gone
            pending: set[asyncio.Task[None] | asyncio.Task[bool]] = {gone, *forwards}
            while gone in pending and len(pending) > 1:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            for t in (*forwards, reading):
                t.cancel()
            for t in (*forwards, reading):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        return f"{len(ports)} ports"


async def _answer(
    writer: asyncio.StreamWriter, status: int, body: str, headers: tuple[tuple[str, str], ...] = ()
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(response(status, body, headers))
        await asyncio.wait_for(writer.drain(), 5.0)
