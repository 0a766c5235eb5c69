"""TLS trust per registry: the system CA store plus containers-certs.d(5) directories.

A registry ``host[:port]`` (as written in the image reference or the registries.conf
location, e.g. ``my-registry.com:5000``) may have a directory ``<dir>/<host[:port]>/``
under the first of ``image.certs_dirs`` that has one (containers/image's
``dockerCertDir``: ``/etc/containers/certs.d`` then ``/etc/docker/certs.d``). Its files,
read as containers/image's ``tlsclientconfig.SetupCertificates`` reads them:

- ``*.crt``: CA certificates (PEM), trusted for this registry in addition to the system
  store (OpenSSL's default paths, ``SSL_CERT_FILE``/``SSL_CERT_DIR``; Debian's
  ``/etc/ssl/certs``), as Go's system pool is extended there;
- ``*.cert`` + ``*.key`` with the same base name: a client certificate and its key, offered
  when the registry asks for one (mutual TLS). A ``.cert`` without its ``.key`` or the
  reverse is an error (FailedPrecondition naming both files). With several pairs the first
  by name is used (an OpenSSL context holds one per key type).

containerd's ``hosts.toml`` directories (``/etc/containerd/certs.d/<host>/hosts.toml``) are
not read; the same ``*.crt``/``*.cert``/``*.key`` files placed in a containers-certs.d
directory work.

A registry that has a directory here is verified, even on loopback (where the registry
client otherwise skips verification and falls back to plain HTTP): whoever put a CA there
asked for this registry to be verified. ``insecure = true`` in registries.conf still skips
verification (the client certificate is still offered), as in containers/image.

Key files are read by the daemon (root) and never logged.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import FailedPrecondition

log = logging.getLogger(__name__)

#: (name, mtime_ns, size) of every file considered; a change makes a new TLS context.
Stamp = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class HostTLS:
    """What :func:`find` found for one registry host. ``directory`` is None when no
    certs.d directory exists for it (only the system store is trusted then)."""

    host: str
    directory: Path | None = None
    ca_files: tuple[Path, ...] = ()
    client_cert: Path | None = None
    client_key: Path | None = None
    stamp: Stamp = ()

    def describe_trust(self, dirs: Sequence[Path]) -> str:
        """Where the trusted CAs come from, for error messages."""
        if self.directory is None:
            looked = ", ".join(str(d / self.host) for d in dirs) or "no certs_dirs configured"
            return f"only the system CA store is trusted (no certs.d directory: {looked})"
        cas = ", ".join(p.name for p in self.ca_files) or "no *.crt files"
        return f"trusted: the system CA store and {self.directory} ({cas})"


def _host_dir_name(host: str) -> str | None:
    """``host`` as a directory name, or None if it cannot be one (never a path)."""
    if not host or "/" in host or "\0" in host or host in (".", ".."):
        return None
    return host


def find(dirs: Sequence[Path], host: str) -> HostTLS:
    """The certs.d configuration for ``host`` (blocking: directory reads).

    Raises FailedPrecondition for a client certificate without its key or the reverse.
    """
    name = _host_dir_name(host)
    if name is None:
        return HostTLS(host)
    for base in dirs:
        directory = base / name
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise FailedPrecondition(f"registry {host}: cannot read {directory}: {exc.strerror}") from None
        return _read_dir(host, directory, entries)
    return HostTLS(host)


def _read_dir(host: str, directory: Path, entries: list[os.DirEntry[str]]) -> HostTLS:
    names = {e.name for e in entries}
    cas: list[Path] = []
    pairs: list[tuple[Path, Path]] = []
    stamp: list[tuple[str, int, int]] = []
    for e in entries:
        if not e.name.endswith((".crt", ".cert", ".key")):
            continue
        try:
            st = e.stat()  # follows symlinks, as os.ReadFile does
        except OSError as exc:
            raise FailedPrecondition(f"registry {host}: cannot read {e.path}: {exc.strerror}") from None
        stamp.append((e.name, st.st_mtime_ns, st.st_size))
        if e.name.endswith(".crt"):
            cas.append(Path(e.path))
        elif e.name.endswith(".cert"):
            key_name = e.name[: -len(".cert")] + ".key"
            if key_name not in names:
                raise FailedPrecondition(
                    f"registry {host}: missing key {key_name} for client certificate {e.name} in {directory} "
                    "(CA certificates use the extension .crt)"
                )
            pairs.append((Path(e.path), directory / key_name))
        else:
            cert_name = e.name[: -len(".key")] + ".cert"
            if cert_name not in names:
                raise FailedPrecondition(f"registry {host}: missing client certificate {cert_name} for key {e.name} "
                                         f"in {directory}")
    if len(pairs) > 1:
        log.warning("registry %s: %d client certificates in %s; using %s", host, len(pairs), directory,
                    pairs[0][0].name)
    cert, key = pairs[0] if pairs else (None, None)
    return HostTLS(host, directory, tuple(cas), cert, key, tuple(stamp))


def ssl_context(tls: HostTLS, verify: bool) -> ssl.SSLContext:
    """A client TLS context for ``tls`` (blocking: reads the files). ``verify=False``
    skips server verification (insecure and loopback registries) but still offers the
    client certificate. Raises FailedPrecondition naming a file that cannot be used."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for ca in tls.ca_files:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise FailedPrecondition(f"registry {tls.host}: CA file {ca} is not usable: {_reason(exc)}") from None
    if tls.client_cert is not None and tls.client_key is not None:
        try:
            ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        except (ssl.SSLError, OSError) as exc:
            raise FailedPrecondition(
                f"registry {tls.host}: client certificate {tls.client_cert} with key {tls.client_key.name} "
                f"is not usable: {_reason(exc)}"
            ) from None
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def tls_failure(exc: BaseException, tls: HostTLS | None, dirs: Sequence[Path]) -> str | None:
    """A sentence about the TLS failure behind ``exc`` (an httpx error), or None when it
    was not one: an untrusted server certificate says what is trusted and where a CA goes;
    a handshake the server refused says whether a client certificate was offered."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            detail = cur.verify_message or cur.reason or "verification failed"
            trust = tls.describe_trust(dirs) if tls is not None else ""
            return f"TLS certificate of the registry not trusted ({detail}); {trust}"
        if isinstance(cur, ssl.SSLError):
            reason = (cur.reason or str(cur)).lower()
            if "alert" in reason or "certificate" in reason:
                offered = (
                    f"client certificate {tls.client_cert} was offered" if tls is not None and tls.client_cert
                    else "no client certificate was offered (put NAME.cert and NAME.key into its certs.d directory)"
                )
                return f"the registry refused the TLS handshake ({cur.reason or cur}); {offered}"
            return f"TLS error ({cur.reason or cur})"
        cur = cur.__cause__ or cur.__context__
    return None
