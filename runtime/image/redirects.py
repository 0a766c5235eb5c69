"""Where a registry may send us: the redirect rules of the registry client.

Registries redirect blob downloads to storage (S3, a CDN), so redirects are followed, but
by these rules rather than the HTTP library's:

- **No downgrade.** A redirect from ``https`` to ``http`` is refused: it would expose the
  download (and any credential) to the network. ``http`` to ``https`` is fine.
- **No way into the node.** A target whose address is loopback (127.0.0.0/8, ::1, and the
  unspecified 0.0.0.0/:: that Linux connects to locally) or link-local (169.254.0.0/16,
  fe80::/10: cloud metadata services live there) is refused, unless the registry itself is
  at such an address (a registry on 127.0.0.1 may redirect to 127.0.0.1). A name is
  resolved and every address it has must pass. The connection resolves the name again, so
  a DNS server that answers differently the second time (rebinding) is not excluded; the
  check stops the plain SSRF of a ``Location: http://169.254.169.254/...``. Through a proxy
  (:mod:`runtime.image.proxy`) the proxy resolves names: a target name this node cannot
  resolve is then left to the proxy (one it resolves must still pass; literals always do).
- **Credentials stay with their host.** The Authorization header (Basic credentials or a
  bearer token) is sent only to the host and port it was meant for; every redirect to
  another host or port goes without it (httpx strips it across origins too; we do not rely
  on that). Go's net/http, which containerd and CRI-O use, strips it the same way.
- At most :data:`MAX_REDIRECTS` hops.

Errors: PermissionDenied for a refused redirect, Unavailable when a target cannot be resolved.
"""

from __future__ import annotations

import asyncio
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

    async def check_redirect(self, source: httpx.URL, target: httpx.URL) -> None:
        if source.scheme == "https" and target.scheme != "https":
            raise PermissionDenied(
                f"registry {self.registry}: refusing a redirect from https to {printable(target.scheme, 10)} "
                f"({printable(target.host, 100)})"
            )
        await self.check_target(target, "a redirect")


async def send_following(client: httpx.AsyncClient, request: httpx.Request, policy: RedirectPolicy) -> httpx.Response:
    """Send ``request`` (streamed; the caller closes the response), following redirects by
    ``policy``. ``client`` must not follow redirects itself."""
    response = await client.send(request, stream=True)
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
        response = await client.send(target, stream=True)
    return response
