"""HTTP(S) proxies for registry traffic: ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``.

containerd and CRI-O take the proxy from their environment through Go's
``http.ProxyFromEnvironment`` (golang.org/x/net/http/httpproxy); this module follows the
same rules so a node's existing proxy settings (a systemd drop-in with
``Environment=HTTPS_PROXY=...``) mean the same here:

- ``HTTPS_PROXY`` (or ``https_proxy``) for ``https://`` requests, ``HTTP_PROXY`` (or
  ``http_proxy``) for ``http://`` ones; the upper-case name wins. No fallback from one to
  the other: with only ``HTTP_PROXY`` set, HTTPS goes direct.
- A proxy without a scheme means ``http://``; ``http`` and ``https`` proxies are supported
  (an HTTPS registry is reached through an HTTP CONNECT tunnel, TLS end to end). SOCKS is
  refused with InvalidArgument.
- ``NO_PROXY``: a comma-separated list of ``*`` (nothing is proxied), IP addresses and CIDRs
  (``10.0.0.0/8``), host names that match themselves and their sub-domains (``example.com``),
  sub-domains only (``.example.com`` or ``*.example.com``), each optionally with ``:port``.
- ``localhost`` and loopback IP literals are never proxied (a proxy cannot reach this
  node's loopback); a *name* that resolves to loopback is proxied unless NO_PROXY lists it,
  as in Go.

The config keys ``image.https_proxy``, ``image.http_proxy`` and ``image.no_proxy`` replace
the environment's values when set. A proxy URL may carry credentials
(``http://user:pass@proxy:3128``): :func:`redacted` hides them wherever a URL is shown.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from runtime.errors import InvalidArgument

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def normalize_proxy_url(value: str, what: str) -> str:
    """The proxy URL ``value`` with a scheme ("" stays ""); InvalidArgument names ``what``."""
    text = value.strip()
    if not text:
        return ""
    if "://" not in text:
        text = "http://" + text
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        raise InvalidArgument(f"{what}: {redacted(value)!r} is not a URL") from None
    if url.scheme not in ("http", "https"):
        raise InvalidArgument(f"{what}: proxy scheme {url.scheme!r} is not supported (http or https)")
    if not url.host:
        raise InvalidArgument(f"{what}: {redacted(value)!r} names no host")
    return text


def redacted(url: str) -> str:
    """``url`` with the password of its user info replaced by ``xxxxx``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:xxxxx@{hostpart}"


@dataclass(frozen=True, slots=True)
class _Match:
    """One NO_PROXY entry: a network (IPs and CIDRs) or a domain suffix, with an optional port."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    suffix: str = ""
    match_host: bool = False
    port: str = ""

    def matches(self, host: str, port: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        if self.port and self.port != port:
            return False
        if self.network is not None:
            return ip is not None and ip in self.network
        return host.endswith(self.suffix) or (self.match_host and host == self.suffix[1:])


def _parse_no_proxy(text: str) -> tuple[bool, tuple[_Match, ...]]:
    """(everything excluded, matchers) for a NO_PROXY value, as httpproxy's config.init."""
    out: list[_Match] = []
    for raw in text.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True, ()
        try:
            out.append(_Match(network=ipaddress.ip_network(entry, strict=False)) if "/" in entry else _ip_match(entry))
            continue
        except ValueError:
            pass
        host, port = _split_host_port(entry)
        if not host:
            continue  # ":80" has no host: ignored, as Go does
        try:
            out.append(_Match(network=ipaddress.ip_network(host), port=port))
            continue
        except ValueError:
            pass
        if host.startswith("*."):
            host = host[1:]
        match_host = not host.startswith(".")
        out.append(_Match(suffix=host if not match_host else "." + host, match_host=match_host, port=port))
    return False, tuple(out)


def _ip_match(entry: str) -> _Match:
    """An IP literal without a port (raises ValueError otherwise)."""
    return _Match(network=ipaddress.ip_network(entry.strip("[]")))


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The proxies registry traffic goes through ("" = direct)."""

    https_proxy: str = field(default="", repr=False)  # may carry a password
    http_proxy: str = field(default="", repr=False)
    no_proxy: str = ""
    _exclude_all: bool = field(default=False, init=False, repr=False, compare=False)
    _matchers: tuple[_Match, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        everything, matchers = _parse_no_proxy(self.no_proxy)
        object.__setattr__(self, "_exclude_all", everything)
        object.__setattr__(self, "_matchers", matchers)

    @classmethod
    def resolve(cls, https_proxy: str, http_proxy: str, no_proxy: str, environ: Mapping[str, str]) -> ProxyConfig:
        """Config values where set, else the environment's (upper case first). Raises
        InvalidArgument naming the key or variable of an invalid proxy URL."""

        def pick(value: str, key: str, names: tuple[str, str]) -> tuple[str, str]:
            if value:
                return value, f"image.{key}"
            for name in names:
                if environ.get(name):
                    return environ[name], f"environment variable {name}"
            return "", ""

        https, https_src = pick(https_proxy, "https_proxy", ("HTTPS_PROXY", "https_proxy"))
        http, http_src = pick(http_proxy, "http_proxy", ("HTTP_PROXY", "http_proxy"))
        no, _ = pick(no_proxy, "no_proxy", ("NO_PROXY", "no_proxy"))
        return cls(normalize_proxy_url(https, https_src), normalize_proxy_url(http, http_src), no)

    def proxy_for(self, url: httpx.URL) -> str:
        """The proxy URL for a request to ``url``, or "" to connect directly."""
        proxy = self.https_proxy if url.scheme == "https" else self.http_proxy if url.scheme == "http" else ""
        if not proxy or self._exclude_all:
            return ""
        host = url.host.lower()
        if host == "localhost":
            return ""
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            ip = None
        if ip is not None and ip.is_loopback:
            return ""
        port = str(url.port) if url.port else _DEFAULT_PORTS.get(url.scheme, "")
        if any(m.matches(host, port, ip) for m in self._matchers):
            return ""
        return proxy

    def describe(self) -> str:
        """For the start-up log: the proxies with their passwords hidden."""
        if not (self.https_proxy or self.http_proxy):
            return "no proxy"
        parts = [f"https via {redacted(self.https_proxy)}" if self.https_proxy else "https direct",
                 f"http via {redacted(self.http_proxy)}" if self.http_proxy else "http direct"]
        if self.no_proxy:
            parts.append(f"NO_PROXY {self.no_proxy}")
        return ", ".join(parts)


class ProxyRouter(httpx.AsyncBaseTransport):
    """A transport that sends each request through the proxy :class:`ProxyConfig` picks for
    its URL (redirect targets and token realms included), one pooled transport per proxy."""

    def __init__(self, proxies: ProxyConfig, make: Callable[[str], httpx.AsyncBaseTransport]) -> None:
        self._proxies = proxies
        self._make = make
        self._transports: dict[str, httpx.AsyncBaseTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        proxy = self._proxies.proxy_for(request.url)
        transport = self._transports.get(proxy)
        if transport is None:
            transport = self._make(proxy)
            self._transports[proxy] = transport
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        for t in self._transports.values():
            await t.aclose()
        self._transports.clear()
