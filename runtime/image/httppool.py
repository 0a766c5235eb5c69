"""The registry client's HTTP clients: one pooled ``httpx.AsyncClient`` per TLS
configuration (a registry's containers-certs.d directory as its files are now, server
verification on or off), each sending requests through the proxy
:class:`~runtime.image.proxy.ProxyConfig` picks per URL.

A directory whose files changed gets a new client on the next pull; the old one is kept
for the requests still using it and closed by :meth:`HttpClients.close`.

Direct connections (no proxy) go through :class:`CheckedBackend`, which resolves the host
once, checks every address by the rules of the request chain
(:func:`runtime.image.redirects.connect_addresses`) and connects to exactly those
addresses, so a name that resolves differently for the check and for the connection (DNS
rebinding) cannot lead into the node. httpx does not let a transport's httpcore network
backend be chosen, so :class:`DirectTransport` rebuilds httpx's own connection pool with the
same settings and this backend. Proxied connections keep httpx's transport as it is: the
proxy resolves the names it connects to.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import typing
from collections.abc import Sequence
from pathlib import Path

import httpcore
import httpx

from runtime.image import certs
from runtime.image.proxy import ProxyConfig, ProxyRouter
from runtime.image.redirects import connect_addresses

USER_AGENT = "cri-shim"
#: How long a connection attempt to one address of a name gets before the next address is
#: tried alongside it (RFC 8305 "Happy Eyeballs", as anyio.connect_tcp does for a name).
HAPPY_EYEBALLS_DELAY = 0.25


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend (anyio) for direct connections, connecting only to
    addresses the current request chain's rules let through (module docstring). TLS is
    started by httpcore on the returned stream with the host *name* as server_hostname, so
    the certificate is still verified against the name. Errors: PermissionDenied for a
    refused address; httpcore's ConnectError/ConnectTimeout otherwise, as the stock backend."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                addresses = await connect_addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host}: timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        if addresses is None:  # the registry's own endpoint, by name
            addresses = [host]
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        options = list(socket_options or ())
        return await self._first_connected(addresses, port, deadline, local_address, options)

    async def _first_connected(
        self, addresses: list[str], port: int, deadline: float | None, local_address: str | None,
        socket_options: list[httpcore.SOCKET_OPTION],
    ) -> httpcore.AsyncNetworkStream:
        """The first of the connections to ``addresses`` (started one after another, the next
        when the last failed or after HAPPY_EYEBALLS_DELAY) that succeeds; the others are
        cancelled or closed."""
        loop = asyncio.get_running_loop()

        def connect(address: str) -> typing.Coroutine[typing.Any, typing.Any, httpcore.AsyncNetworkStream]:
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            return self._inner.connect_tcp(address, port, timeout=left, local_address=local_address,
                                           socket_options=socket_options)

        if len(addresses) == 1:
            return await connect(addresses[0])
        waiting = list(addresses)
        tasks: list[asyncio.Task[httpcore.AsyncNetworkStream]] = []
        winner: asyncio.Task[httpcore.AsyncNetworkStream] | None = None
        try:
            while winner is None:
                wait: float | None = None
                if waiting:
                    tasks.append(asyncio.create_task(connect(waiting.pop(0))))
                    wait = HAPPY_EYEBALLS_DELAY
                running = [t for t in tasks if not t.done()]
                if not running:
                    break  # every address failed
                # Returns when an attempt ends (a failure starts the next address at once) or
                # when the delay has passed (the next address is tried alongside).
                await asyncio.wait(running, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                winner = next((t for t in tasks if t.done() and t.exception() is None), None)
            if winner is not None:
                return winner.result()
            errors = [t.exception() for t in tasks]
            if all(isinstance(e, httpcore.ConnectTimeout) for e in errors):
                raise httpcore.ConnectTimeout(f"connecting to {', '.join(addresses)}: timed out")
            details = "; ".join(f"{a}: {e}" for a, e in zip(addresses, errors, strict=True))
            raise httpcore.ConnectError(f"all connection attempts failed ({details})")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for t in tasks:
                if t is not winner and not t.cancelled() and t.exception() is None:
                    with contextlib.suppress(Exception):
                        await t.result().aclose()

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("registry connections are TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class DirectTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits)`` (no proxy), its
    connection pool connecting through :class:`CheckedBackend`. httpx builds the pool in
    its constructor without a way to pass a network backend; this replaces it with one
    built with the same arguments httpx uses (HTTP/1.1 only, no retries), keeping httpx's
    request and response handling and its mapping of httpcore's errors."""

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits,
                 backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        super().__init__(verify=ssl_context, limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("httpx.AsyncHTTPTransport no longer keeps its pool in _pool: "
                               "runtime/image/httppool.py needs updating")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend or CheckedBackend(),
        )


class HttpClients:
    """``transport`` (tests) replaces the network, TLS and proxies of every client."""

    def __init__(
        self,
        timeout: httpx.Timeout,
        limits: httpx.Limits,
        certs_dirs: Sequence[Path],
        proxies: ProxyConfig,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.certs_dirs = tuple(certs_dirs)
        self.proxies = proxies
        self._timeout = timeout
        self._limits = limits
        self._transport = transport
        self._clients: dict[tuple[Path | None, certs.Stamp, bool], httpx.AsyncClient] = {}
        self._retired: list[httpx.AsyncClient] = []

    async def tls_for(self, host: str) -> certs.HostTLS:
        """The certs.d configuration of ``host``, read now (a changed directory is seen by
        the next pull). Raises FailedPrecondition for an unusable directory."""
        if not self.certs_dirs:
            return certs.HostTLS(host)
        return await asyncio.to_thread(certs.find, self.certs_dirs, host)

    async def client(self, tls: certs.HostTLS, verify: bool) -> httpx.AsyncClient:
        """The pooled client for ``tls`` with server verification on or off. Raises
        FailedPrecondition for a CA or client certificate file that cannot be used."""
        key = (tls.directory, tls.stamp, verify)
        c = self._clients.get(key)
        if c is not None:
            return c
        transport = self._transport
        if transport is None:
            ctx = await asyncio.to_thread(certs.ssl_context, tls, verify)
            c = self._clients.get(key)  # made by a concurrent pull meanwhile
            if c is not None:
                return c
            transport = ProxyRouter(self.proxies, lambda proxy: self._http_transport(ctx, proxy))
        for old in [k for k in self._clients if k[0] == tls.directory and k[2] == verify]:
            self._retired.append(self._clients.pop(old))
        c = httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=False,  # followed by runtime.image.redirects' rules
            headers={"User-Agent": USER_AGENT},
            trust_env=False,  # proxies come from self.proxies, not httpx's reading of the environment
            transport=transport,
        )
        self._clients[key] = c
        return c

    def _http_transport(self, ctx: ssl.SSLContext, proxy: str) -> httpx.AsyncHTTPTransport:
        if not proxy:
            return DirectTransport(ctx, self._limits)
        if proxy.startswith("https://"):
            # An https:// proxy is verified against the system store, not the registry's CAs.
            via = httpx.Proxy(proxy, ssl_context=ssl.create_default_context())
        else:
            via = httpx.Proxy(proxy)
        return httpx.AsyncHTTPTransport(verify=ctx, limits=self._limits, proxy=via)

    async def close(self) -> None:
        for c in [*self._clients.values(), *self._retired]:
            await c.aclose()
        self._clients.clear()
        self._retired.clear()
