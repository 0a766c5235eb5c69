"""The registry client's HTTP clients: one pooled ``httpx.AsyncClient`` per TLS
configuration (a registry's containers-certs.d directory as its files are now, server
verification on or off), each sending requests through the proxy
:class:`~runtime.image.proxy.ProxyConfig` picks per URL.

A directory whose files changed gets a new client on the next pull; the old one is kept
for the requests still using it and closed by :meth:`HttpClients.close`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from pathlib import Path

import httpx

from runtime.image import certs
from runtime.image.proxy import ProxyConfig, ProxyRouter

USER_AGENT = "cri-shim"


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
        via = None
        if proxy.startswith("https://"):
            # An https:// proxy is verified against the system store, not the registry's CAs.
            via = httpx.Proxy(proxy, ssl_context=ssl.create_default_context())
        elif proxy:
            via = httpx.Proxy(proxy)
        return httpx.AsyncHTTPTransport(verify=ctx, limits=self._limits, proxy=via)

    async def close(self) -> None:
        for c in [*self._clients.values(), *self._retired]:
            await c.aclose()
        self._clients.clear()
        self._retired.clear()
