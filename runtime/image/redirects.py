"""Where a registry may send us: the redirect rules of the registry client.

Registries redirect blob downloads to storage (S3, a CDN), so redirects are followed, but
by these rules rather than the HTTP library's:

- **No downgrade.** A redirect from ``https`` to ``http`` is refused: it would expose the
  download (and any credential) to the network. ``http`` to ``https`` is fine.
- **No way into the node.** A target whose address is loopback (127.0.0.0/8, ::1, and the
  unspecified 0.0.0.0/:: that Linux connects to locally) or link-local (169.254.0.0/16,
  fe80::/10: cloud metadata services live there) is refused, unless the registry itself is
  at such an address (a registry on 127.0.0.1 may redirect to 127.0.0.1). A name is
  resolved and every address it has must pass. This is checked twice: before the request
  is sent (:meth:`RedirectPolicy.check_target`: a refused redirect or token realm never
  gets a byte, credentials included), and again when a connection is opened
  (:meth:`RedirectPolicy.connect_addresses`, called by the network backend of
  :mod:`runtime.image.httppool` for every direct connection): the name is resolved once
  more, every address is checked by the same rules, and the connection goes to exactly
  those addresses (TLS still verifies the certificate against the host *name*). So a DNS
  server that answers a public address for the check and 127.0.0.1 for the connection
  (rebinding) is refused at the connection. The rules reach the connection through a
  context variable that :func:`send_following` sets for each request of a chain; a
  connection opened outside a chain gets the rules with no registry address allowed. The
  registry's own endpoint (host and port) is connected to by name, unchecked: the registry
  is what the node was told to pull from, wherever it is. A pooled connection is reused
  for later requests to its host (it was checked when it was opened).
  Through a proxy (:mod:`runtime.image.proxy`) the proxy resolves names and connects, so
  only the first check applies, on this node's view of the name: a target name this node
  cannot resolve is then left to the proxy (one it resolves must still pass; literals
  always do); a rebinding name is the proxy's to refuse.
- **Credentials stay with their host.** The Authorization header (Basic credentials or a
  bearer token) is sent only to the host and port it was meant for; every redirect to
  another host or port goes without it (httpx strips it across origins too; we do not rely
  on that). Go's net/http, which containerd and CRI-O use, strips it the same way.
- At most :data:`MAX_REDIRECTS` hops.

Errors: PermissionDenied for a refused redirect or connection, Unavailable when a target
cannot be resolved before the request (at the connection a failed resolution is the
transport's ConnectError, as any other failed connect).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from runtime.errors import PermissionDenied, Unavailable
from runtime.image.regtext import printable

MAX_REDIRECTS = 10
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Resolves a host name to its addresses (text); raises OSError when it cannot.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host`` (off the event loop's thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def address_kind(address: str) -> str | None:
    """"loopback", "link-local" or None for an ordinary address (IPv4-mapped IPv6 unwrapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    return None


def endpoint(url: httpx.URL) -> tuple[str, int]:
    """(host, port) a URL connects to, the port defaulted by scheme."""
    return url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme, 0)


async def internal_kinds(host: str, port: int, resolve: Resolver) -> frozenset[str]:
    """The kinds of internal address ``host`` (a literal or a name) is at."""
    try:
        addresses = [host] if _is_literal(host) else await resolve(host, port)
    except OSError as exc:
        raise Unavailable(f"cannot resolve {printable(host, 100)}: {printable(exc, 100)}") from None
    return frozenset(k for k in map(address_kind, addresses) if k is not None)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class RedirectPolicy:
    """The rules for one request chain: ``registry`` names it in errors, ``registry_at`` is
    the registry's own (host, port), ``credentials_for`` the (host, port) the chain's
    Authorization header belongs to."""

    registry: str
    registry_at: tuple[str, int]
    credentials_for: tuple[str, int]
    resolve: Resolver
    #: True for a URL the request goes to through a proxy (None: never).
    proxied: Callable[[httpx.URL], bool] | None = None

    async def check_target(self, url: httpx.URL, what: str) -> None:
        """Refuse ``url`` when its address is internal and the registry is not there itself.
        (The registry's own addresses are looked up only when the target is internal.)"""
        try:
            kinds = await internal_kinds(url.host, endpoint(url)[1], self.resolve)
        except Unavailable:
            # A node behind a proxy often cannot resolve outside names: the proxy does.
            if self.proxied is not None and self.proxied(url):
                return
            raise
        if kinds:
            kinds -= await internal_kinds(*self.registry_at, self.resolve)
        if kinds:
            raise PermissionDenied(
                f"registry {self.registry}: refusing {what} to {printable(url.host, 100)}, "
                f"a {'/'.join(sorted(kinds))} address"
            )

    async def connect_addresses(self, host: str, port: int) -> list[str] | None:
        """The addresses a connection to ``host``:``port`` may go to: ``host`` resolved
        once, every address checked as :meth:`check_target` does (PermissionDenied naming
        the address and its kind). None for the registry's own endpoint: connect by name.
        Raises OSError when ``host`` cannot be resolved."""
        if (host.lower(), port) == self.registry_at:
            return None
        addresses = [host] if _is_literal(host) else await self.resolve(host, port)
        bad = [(a, k) for a in addresses if (k := address_kind(a)) is not None]
        if bad:
            allowed = await internal_kinds(*self.registry_at, self.resolve) if self.registry_at[0] else frozenset()
            bad = [(a, k) for a, k in bad if k not in allowed]
        if bad:
            address, kind = bad[0]
            raise PermissionDenied(
                f"registry {self.registry}: refusing a connection to {printable(host, 100)} at "
                f"{printable(address, 60)}, a {kind} address"
            )
        return addresses

    async def check_redirect(self, source: httpx.URL, target: httpx.URL) -> None:
        if source.scheme == "https" and target.scheme != "https":
            raise PermissionDenied(
                f"registry {self.registry}: refusing a redirect from https to {printable(target.scheme, 10)} "
                f"({printable(target.host, 100)})"
            )
        await self.check_target(target, "a redirect")


#: The rules of the request chain being sent (None outside one): what the network backend
#: of runtime.image.httppool checks a new connection against. Set around each send, in
#: the sending task, which is where httpcore opens the connection.
_CHAIN: contextvars.ContextVar[RedirectPolicy | None] = contextvars.ContextVar("registry_chain", default=None)

#: The rules for a connection opened outside a request chain: no internal address at all.
_NO_CHAIN = RedirectPolicy("(none)", ("", 0), ("", 0), system_resolve)


async def connect_addresses(host: str, port: int) -> list[str] | None:
    """:meth:`RedirectPolicy.connect_addresses` by the rules of the current request chain."""
    return await (_CHAIN.get() or _NO_CHAIN).connect_addresses(host, port)


async def _send(client: httpx.AsyncClient, request: httpx.Request, policy: RedirectPolicy) -> httpx.Response:
    token = _CHAIN.set(policy)
    try:
        return await client.send(request, stream=True)
    finally:
        _CHAIN.reset(token)


async def send_following(client: httpx.AsyncClient, request: httpx.Request, policy: RedirectPolicy) -> httpx.Response:
    """Send ``request`` (streamed; the caller closes the response), following redirects by
    ``policy``. ``client`` must not follow redirects itself."""
    response = await _send(client, request, policy)
    hops = 0
    while response.next_request is not None:
        target = response.next_request
        source = response.request.url
        await response.aclose()
        hops += 1
        if hops > MAX_REDIRECTS:
            raise PermissionDenied(f"registry {policy.registry}: more than {MAX_REDIRECTS} redirects")
        await policy.check_redirect(source, target.url)
        if endpoint(target.url) != policy.credentials_for:
            target.headers.pop("Authorization", None)
        response = await _send(client, target, policy)
    return response
