"""Distribution v2 client (async, httpx): manifests and blobs with auth and verification.

- Scheme: HTTPS, verified against the system CA store plus the registry's containers-certs.d
  directory, which may also hold a client certificate (:mod:`runtime.image.certs`). For
  registries marked insecure, and loopback hosts without a certs.d directory, HTTPS is tried
  first without verification and plain HTTP is used when the TLS handshake fails (Docker's
  rule for insecure registries); the choice is remembered per host.
- Proxies: ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` as Go reads them
  (:mod:`runtime.image.proxy`), chosen per request (redirect targets and token realms too).
- Auth: anonymous first; on 401 the ``WWW-Authenticate`` challenge decides: Basic with the
  credentials, or Bearer via the realm (GET with Basic credentials, or the OAuth2
  refresh-token POST for an identity token; a registry token is used as is). Tokens are
  cached per host, scope and credentials until they expire.
- Every manifest and blob is checked against its digest (and size when known) before use.
- No-progress timeout: a read that receives nothing for ``progress_timeout`` seconds fails
  the pull with DeadlineExceeded (kubelet gives PullImage no deadline).
- Redirects follow :mod:`runtime.image.redirects`: no https→http downgrade, no loopback or
  link-local target unless the registry is at one, the Authorization header only for the
  host and port it was meant for.
- Token realms: Basic credentials (or the identity token) go to the realm the registry's
  challenge announces, whatever its host, as docker, containerd and CRI-O do (the
  distribution token spec makes the realm the registry's delegate: auth.docker.io for
  Docker Hub). The realm must be HTTPS unless the registry is relaxed, and must not be a
  loopback or link-local address unless the registry is; a redirect away from the realm's
  host drops the credentials. The bearer token is sent to the registry's host only.
- What a registry sends us (error bodies, header values, URLs) reaches errors, and so
  kubelet's pod events, only as a short printable summary (:mod:`runtime.image.regtext`).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from runtime.errors import DeadlineExceeded, InvalidArgument, NotFound, PermissionDenied, Unavailable
from runtime.image import certs
from runtime.image.auth import Challenge, RegistryAuth, parse_challenges
from runtime.image.content import DigestMismatch
from runtime.image.httppool import USER_AGENT, HttpClients
from runtime.image.manifest import ACCEPT, MAX_MANIFEST_BYTES
from runtime.image.proxy import ProxyConfig
from runtime.image.redirects import RedirectPolicy, Resolver, endpoint, send_following, system_resolve
from runtime.image.regtext import MAX_BODY, error_summary, printable

log = logging.getLogger(__name__)

DOCKER_HUB_API = "registry-1.docker.io"
_BATCH = 1 << 20
#: A token response is a small JSON object (a JWT of a few KiB); more is not read.
MAX_TOKEN_RESPONSE = 1 << 20
#: What a request can fail with on the wire. httpcore lets an ssl.SSLError raised while
#: reading (a TLS alert after the handshake: the registry refusing our client certificate
#: under TLS 1.3) through unwrapped.
TRANSPORT_ERRORS = (httpx.HTTPError, ssl.SSLError)


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1, with or without a port."""
    h = host
    if h.startswith("["):
        h = h[1 : h.index("]")]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str


class RegistryClient:
    """Shared HTTP state (connection pools, scheme choices, tokens). One per ImageService.
    ``certs_dirs`` are the containers-certs.d directories, ``proxies`` the proxy settings.
    ``transport`` and ``resolve`` replace the network and the name lookups (tests; a
    ``transport`` also replaces TLS and proxies)."""

    def __init__(
        self,
        progress_timeout: float,
        max_connections: int = 16,
        *,
        certs_dirs: tuple[Path, ...] = (),
        proxies: ProxyConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.resolve = resolve
        read = progress_timeout if progress_timeout > 0 else None
        connect = min(30.0, read) if read is not None else 30.0
        timeout = httpx.Timeout(connect=connect, read=read, write=60.0, pool=None)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = HttpClients(timeout, limits, certs_dirs, proxies or ProxyConfig(), transport)
        self._progress_timeout = progress_timeout
        self._schemes: dict[str, str] = {}
        self._tokens: dict[tuple[str, str, str], tuple[str, float]] = {}

    @property
    def certs_dirs(self) -> tuple[Path, ...]:
        return self.http.certs_dirs

    @property
    def proxies(self) -> ProxyConfig:
        return self.http.proxies

    async def close(self) -> None:
        await self.http.close()

    def session(self, host: str, repository: str, insecure: bool, auth: RegistryAuth | None) -> RegistrySession:
        """A view on one repository of one registry, with the credentials to use there."""
        usable = auth if auth is not None and not auth.is_empty() and auth.applies_to(host) else None
        return RegistrySession(self, host, repository, insecure, usable)


class RegistrySession:
    def __init__(
        self, client: RegistryClient, host: str, repository: str, insecure: bool, auth: RegistryAuth | None
    ) -> None:
        self._c = client
        self.host = host
        # Docker Hub's API lives on registry-1.docker.io (docker.io itself serves no /v2/).
        self.api_host = DOCKER_HUB_API if host in ("docker.io", "index.docker.io") else host
        self.repository = repository
        self.insecure = insecure
        # Final once the certs.d directory is known (_ready): a loopback host with one is verified.
        self.relaxed = insecure or is_loopback(host)
        self.tls: certs.HostTLS | None = None
        self._http: httpx.AsyncClient | None = None
        self._auth = auth
        self._authorization: str | None = None
        self._scope = f"repository:{repository}:pull"

    def describe(self) -> str:
        return f"{self.host}/{self.repository}"

    # -- transport -----------------------------------------------------------------------------

    def _cred_key(self) -> str:
        if self._auth is None:
            return ""
        parts = (self._auth.username, self._auth.password, self._auth.auth, self._auth.identity_token,
                 self._auth.registry_token)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    async def _ready(self) -> httpx.AsyncClient:
        """The HTTP client for this registry's TLS configuration (read on first use)."""
        if self._http is None:
            self.tls = await self._c.http.tls_for(self.host)
            self.relaxed = self.insecure or (is_loopback(self.host) and self.tls.directory is None)
            self._http = await self._c.http.client(self.tls, verify=not self.relaxed)
        return self._http

    def _unreachable(self, exc: BaseException) -> str:
        """The reason a request failed, with TLS advice (:func:`certs.tls_failure`)."""
        tls = certs.tls_failure(exc, self.tls, self._c.certs_dirs)
        return tls or printable(exc) or type(exc).__name__

    def _policy(self, url: httpx.URL) -> RedirectPolicy:
        """Redirect rules for a request chain whose credentials belong to ``url``'s host."""
        registry_at = endpoint(httpx.URL(f"{url.scheme}://{self.api_host}/"))
        proxies = self._c.proxies
        return RedirectPolicy(self.host, registry_at, endpoint(url), self._c.resolve,
                              proxied=lambda target: bool(proxies.proxy_for(target)))

    async def _send(self, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
        """Send with the chosen scheme; for relaxed hosts fall back from HTTPS to HTTP."""
        client = await self._ready()
        scheme = self._c._schemes.get(self.api_host, "https")
        try:
            req = client.build_request(method, f"{scheme}://{self.api_host}{path}", headers=headers)
            return await send_following(client, req, self._policy(req.url))
        except httpx.ConnectError as exc:
            if scheme == "https" and self.relaxed:
                log.info("registry %s: HTTPS failed (%s); using plain HTTP", self.host, printable(exc))
                self._c._schemes[self.api_host] = "http"
                req = client.build_request(method, f"http://{self.api_host}{path}", headers=headers)
                return await send_following(client, req, self._policy(req.url))
            raise

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        """A streamed response (caller closes it), authorised; maps transport failures."""
        hdrs = dict(headers or {})
        try:
            if self._authorization is None and self._auth is not None and self._auth.registry_token:
                self._authorization = f"Bearer {self._auth.registry_token}"
            if self._authorization is None:
                cached = self._c._tokens.get((self.host, self._scope, self._cred_key()))
                if cached and cached[1] > time.time():
                    self._authorization = f"Bearer {cached[0]}"
            if self._authorization:
                hdrs["Authorization"] = self._authorization
            resp = await self._send(method, path, hdrs)
            if resp.status_code != 401:
                return resp
            challenges = [c for v in resp.headers.get_list("www-authenticate") for c in parse_challenges(v)]
            await resp.aclose()
            self._authorization = await self._authorize(challenges)
            hdrs["Authorization"] = self._authorization
            resp = await self._send(method, path, hdrs)
            if resp.status_code == 401:
                await resp.aclose()
                raise PermissionDenied(
                    f"registry {self.host} refused the credentials for {self.repository}"
                    + ("" if self._auth else " (no credentials were given)")
                )
            return resp
        except httpx.TimeoutException as exc:
            raise DeadlineExceeded(
                f"registry {self.host}: no progress for {self._c._progress_timeout:g}s ({type(exc).__name__})"
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise Unavailable(f"registry {self.host} unreachable: {self._unreachable(exc)}") from None

    async def _authorize(self, challenges: list[Challenge]) -> str:
        for ch in challenges:
            if ch.scheme == "bearer" and "realm" in ch.params:
                return "Bearer " + await self._token(ch.params)
        for ch in challenges:
            if ch.scheme == "basic":
                basic = self._auth.basic() if self._auth else None
                if basic is None:
                    raise PermissionDenied(f"registry {self.host} requires credentials for {self.repository}")
                token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
                return f"Basic {token}"
        schemes = ", ".join(sorted({printable(c.scheme, 20) for c in challenges})) or "none"
        raise PermissionDenied(f"registry {self.host}: unsupported authentication challenge ({schemes})")

    async def _token(self, params: dict[str, str]) -> str:
        key = (self.host, self._scope, self._cred_key())
        cached = self._c._tokens.get(key)
        if cached and cached[1] > time.time():
            return cached[0]
        realm = params["realm"]
        if not realm.startswith(("https://", "http://")):
            raise PermissionDenied(f"registry {self.host}: token realm {printable(realm, 100)!r} is not an http(s) URL")
        try:
            realm_url = httpx.URL(realm)
        except httpx.InvalidURL:
            raise PermissionDenied(f"registry {self.host}: token realm {printable(realm, 100)!r} is invalid") from None
        if realm.startswith("http://") and not self.relaxed and not is_loopback(realm_url.host):
            raise PermissionDenied(f"registry {self.host}: refusing a plain-HTTP token realm {printable(realm, 100)!r}")
        query = {"scope": self._scope}
        if params.get("service"):
            query["service"] = params["service"]
        client = await self._ready()
        policy = self._policy(realm_url)
        # The realm is the registry's delegate: credentials go there (module docstring), but
        # never to an address inside the node the registry itself is not at.
        await policy.check_target(realm_url, "the token realm")
        try:
            if self._auth is not None and self._auth.identity_token:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": self._auth.identity_token,
                    "client_id": USER_AGENT,
                    **query,
                }
                req = client.build_request("POST", realm_url, data=form)
            else:
                basic = self._auth.basic() if self._auth else None
                headers = {}
                if basic:
                    headers["Authorization"] = "Basic " + base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
                req = client.build_request("GET", realm_url, params=query, headers=headers)
            resp = await send_following(client, req, policy)
            try:
                raw = await _read_bounded(resp, MAX_TOKEN_RESPONSE)
            finally:
                await resp.aclose()
        except TRANSPORT_ERRORS as exc:
            raise Unavailable(f"token server of registry {self.host} unreachable: {self._unreachable(exc)}") from None
        if resp.status_code in (401, 403):
            raise PermissionDenied(f"token server of registry {self.host} refused the credentials ({resp.status_code})")
        if resp.status_code != 200:
            raise Unavailable(f"token server of registry {self.host} answered {resp.status_code}")
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise Unavailable(f"token server of registry {self.host} sent no JSON object of at most "
                              f"{MAX_TOKEN_RESPONSE} bytes")
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token server of registry {self.host} sent no token")
        expires = body.get("expires_in")
        ttl = float(expires) if isinstance(expires, (int, float)) and expires > 0 else 60.0
        self._c._tokens[key] = (token, time.time() + max(ttl - 10.0, 5.0))
        return token

    # -- API -----------------------------------------------------------------------------------

    async def _check(self, resp: httpx.Response, what: str) -> None:
        if resp.status_code == 200:
            return
        body = b""
        try:
            body = await _read_bounded(resp, MAX_BODY)
        except TRANSPORT_ERRORS:
            pass  # the summary is best effort; the status code is the error
        finally:
            await resp.aclose()
        detail = error_summary(body)
        if resp.status_code == 404:
            raise NotFound(f"{what} not found in registry {self.host}")
        if resp.status_code == 403:
            raise PermissionDenied(f"registry {self.host} denied access to {what}: {detail}")
        if resp.status_code == 429 or resp.status_code >= 500:
            raise Unavailable(f"registry {self.host} answered {resp.status_code} for {what}: {detail}")
        raise Unavailable(f"registry {self.host} answered {resp.status_code} for {what}: {detail}")

    async def manifest(self, reference: str, expected_digest: str = "") -> FetchedManifest:
        """GET a manifest or index by tag or digest, bounded in size and digest-checked."""
        sep = "@" if ":" in reference else ":"
        what = f"manifest {self.repository}{sep}{reference}"
        resp = await self.request("GET", f"/v2/{self.repository}/manifests/{reference}", {"Accept": ACCEPT})
        try:
            await self._check(resp, what)
            length = resp.headers.get("content-length")
            if length is not None and int(length) > MAX_MANIFEST_BYTES:
                raise InvalidArgument(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
            data = bytearray()
            async for chunk in resp.aiter_bytes():
                data += chunk
                if len(data) > MAX_MANIFEST_BYTES:
                    raise InvalidArgument(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes")
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"registry {self.host}: no progress while reading {what}") from None
        except TRANSPORT_ERRORS as exc:
            raise Unavailable(f"registry {self.host}: reading {what} failed: {self._unreachable(exc)}") from None
        finally:
            await resp.aclose()
        body = bytes(data)
        algo = (expected_digest or "sha256:").split(":", 1)[0]
        digest = f"{algo}:{hashlib.new(algo, body).hexdigest()}"
        if expected_digest and digest != expected_digest:
            raise DigestMismatch(f"{what}: registry sent content with digest {digest}")
        header_digest = resp.headers.get("docker-content-digest", "")
        if not expected_digest and header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatch(f"{what}: Docker-Content-Digest {header_digest} does not match the body ({digest})")
        return FetchedManifest(body, resp.headers.get("content-type", ""), digest)

    async def blob(
        self,
        digest: str,
        sink: Callable[[bytes], Awaitable[None]],
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Stream blob ``digest`` into ``sink`` (in batches of about 1 MiB); returns bytes read.
        The caller verifies size and digest (the content store's Ingest does)."""
        what = f"blob {digest} of {self.repository}"
        resp = await self.request("GET", f"/v2/{self.repository}/blobs/{digest}")
        total = 0
        try:
            await self._check(resp, what)
            batch = bytearray()
            async for chunk in resp.aiter_bytes():
                batch += chunk
                total += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
                if len(batch) >= _BATCH:
                    await sink(bytes(batch))
                    batch.clear()
            if batch:
                await sink(bytes(batch))
        except httpx.TimeoutException:
            raise DeadlineExceeded(
                f"registry {self.host}: no progress for {self._c._progress_timeout:g}s while downloading {what}"
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise Unavailable(f"registry {self.host}: download of {what} failed: {self._unreachable(exc)}") from None
        finally:
            await resp.aclose()
        return total


async def _read_bounded(resp: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body (a longer one is cut there, not read)."""
    data = bytearray()
    async for chunk in resp.aiter_bytes():
        data += chunk
        if len(data) >= limit:
            break
    return bytes(data[:limit])


def retryable(exc: BaseException) -> bool:
    """Errors after which the next pull source (mirror → primary) is worth trying: the
    source lacks the image, refused us, is down or slow, or sent content that is not what
    it claimed."""
    return isinstance(exc, (NotFound, Unavailable, PermissionDenied, DeadlineExceeded, DigestMismatch))
