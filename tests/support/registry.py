"""A real OCI registry for tests: Debian's ``docker-registry`` on 127.0.0.1, random port.

Three flavours:

- ``start_registry(tmp)``: anonymous pull and push.
- ``start_registry(tmp, auth="htpasswd")``: HTTP Basic auth from an htpasswd file (bcrypt).
- ``start_registry(tmp, auth="token")``: Bearer tokens from :class:`TokenServer`, a small
  token service written here (RS256 JWTs with an ``x5c`` header, as docker/distribution
  verifies them); it accepts Basic credentials and OAuth2 refresh tokens
  (:attr:`TokenServer.refresh_token`, for kubelet's ``identity_token``).

Each :class:`Registry` has ``host`` ("127.0.0.1:PORT"), ``url`` and :meth:`Registry.push`;
use it as a context manager or call :meth:`Registry.stop` (the process is ended by pid).

Pytest fixtures (import them into a conftest.py): ``registry`` (function scope, anonymous),
``module_registry`` (module scope) and ``registries_conf`` (a registries.conf writer).

Public names such as ``docker.io/library/busybox`` are redirected to a test registry only
with a registries.conf ``location`` rewrite (:func:`rewrite_conf`), never with a mirror that
could fall back to the real host.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from tests.support import imagebuilder as ib

REGISTRY_BIN = Path("/usr/bin/docker-registry")
#: a line of docker-registry's access log (combined log format): method, path
_ACCESS_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" [0-9]{3} ')
AuthMode = Literal["none", "htpasswd", "token"]


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A docker/distribution token service on 127.0.0.1 (thread).

    GET ``/token?service=...&scope=repository:NAME:pull`` with Basic credentials, or POST
    ``grant_type=refresh_token&refresh_token=...``, returns ``{"token", "access_token",
    "expires_in"}``. Wrong credentials get 401. ``requests`` counts token requests."""

    def __init__(self, workdir: Path, username: str, password: str, service: str = "cri-shim-test",
                 issuer: str = "cri-shim-test-issuer") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.username, self.password = username, password
        self.service, self.issuer = service, issuer
        self.refresh_token = secrets.token_hex(16)
        self.requests = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cri-shim test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                server.requests += 1
                q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                ok = False
                if auth.startswith("Basic "):
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    ok = (user, pw) == (server.username, server.password)
                if not ok:
                    self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                    return
                self._answer(200, server.issue(q.get("scope", [""])[0], server.username))

            def do_POST(self) -> None:
                server.requests += 1
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [server.refresh_token]:
                    self._answer(401, {"error": "invalid_grant"})
                    return
                body = server.issue(form.get("scope", [""])[0], server.username)
                body["refresh_token"] = server.refresh_token
                self._answer(200, body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def issue(self, scope: str, subject: str) -> dict[str, Any]:
        """A signed token granting ``scope`` ("repository:NAME:pull,push")."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        if scope:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{signing_input}.{_b64url(sig)}"
        return {"token": token, "access_token": token, "expires_in": 300}

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class Registry:
    """A running docker-registry. ``username``/``password`` are set for auth registries."""

    host: str
    workdir: Path
    auth: AuthMode
    process: subprocess.Popen[bytes]
    username: str = ""
    password: str = ""
    token_server: TokenServer | None = None
    log_path: Path = field(default_factory=Path)
    tls: bool = False
    #: (cert, key) the test's own requests present (a registry with ``client_ca`` requires one).
    client_cert: tuple[Path, Path] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What the test's own requests verify with (nothing: throw-away certificates),
        with :attr:`client_cert` loaded."""
        if self.client_cert is None:
            return False
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
        return ctx

    @property
    def credentials(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.auth != "none" else None

    def push(self, repository: str, tag: str, image: ib.BuiltImage | ib.BuiltIndex) -> str:
        """Push ``image`` as ``repository:tag``; returns the top-level manifest digest."""
        return ib.push(self.url, repository, tag, image, auth=self.credentials, verify=self.ssl_context())

    def ref(self, repository: str, tag: str = "latest") -> str:
        return f"{self.host}/{repository}:{tag}"

    def requests(self, method: str, path_part: str = "") -> list[str]:
        """Paths of the ``method`` requests whose path contains ``path_part``, in the order the
        registry logged them (it must run with ``access_log=True``; a line is written as its
        request ends)."""
        text = self.log_path.read_text(errors="replace")
        return [m.group(2) for m in _ACCESS_LINE.finditer(text) if m.group(1) == method and path_part in m.group(2)]

    def delete_manifest(self, repository: str, digest: str) -> None:
        with httpx.Client(verify=self.ssl_context(), timeout=30) as c:
            r = c.delete(f"{self.url}/v2/{repository}/manifests/{digest}", auth=self.credentials)
        if r.status_code != 202:
            raise RuntimeError(f"delete {repository}@{digest}: {r.status_code} {r.text}")

    def stop(self) -> None:
        """End the registry process (by pid) and its token server; remove its storage."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.token_server is not None:
            self.token_server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def self_signed(workdir: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate and key for ``host`` (an IP address or a DNS name), as PEM
    files; it is its own CA, so a client trusts it by loading it as one."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "tls.crt", workdir / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _config(workdir: Path, port: int, auth: AuthMode, username: str, password: str,
            token: TokenServer | None, tls: bool = False, address: str = "127.0.0.1",
            tls_files: tuple[Path, Path] | None = None, client_ca: Path | None = None,
            access_log: bool = False) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        f"    disabled: {'false' if access_log else 'true'}",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {workdir / 'data'}",
        "  delete:",
        "    enabled: true",
        "  cache:",
        "    blobdescriptor: inmemory",
        "http:",
        f"  addr: {address}:{port}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if tls:
        cert, key = tls_files or self_signed(workdir)
        lines += ["  tls:", f"    certificate: {cert}", f"    key: {key}"]
        if client_ca is not None:  # docker-registry then requires a client certificate signed by it
            lines += ["    clientcas:", f"      - {client_ca}"]
    if auth == "htpasswd":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # bcrypt through libxcrypt; docker-registry's htpasswd wants bcrypt
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4))
        (workdir / "htpasswd").write_text(f"{username}:{hashed}\n")
        lines += ["auth:", "  htpasswd:", "    realm: cri-shim-test", f"    path: {workdir / 'htpasswd'}"]
    elif auth == "token":
        assert token is not None
        lines += ["auth:", "  token:", f"    realm: {token.realm}", f"    service: {token.service}",
                  f"    issuer: {token.issuer}", f"    rootcertbundle: {token.cert_path}"]
    return "\n".join(lines) + "\n"


def start_registry(parent: Path | None = None, *, auth: AuthMode = "none", username: str = "testuser",
                   password: str | None = None, timeout: float = 20.0, tls: bool = False,
                   address: str = "127.0.0.1", tls_files: tuple[Path, Path] | None = None,
                   client_ca: Path | None = None, client_cert: tuple[Path, Path] | None = None,
                   access_log: bool = False) -> Registry:
    """Start docker-registry on ``address`` (a loopback address; random free port) with
    storage in a new temp dir under ``parent``; waits until ``/v2/`` answers. Retries with
    another port if the chosen one was taken meanwhile. ``tls=True`` serves HTTPS with a
    fresh self-signed certificate, or with ``tls_files`` (cert, key) when given;
    ``client_ca`` makes it require client certificates signed by that CA, and
    ``client_cert`` is what the test's own pushes present. ``access_log`` writes a line per
    request to the registry's log (:meth:`Registry.requests` reads them)."""
    tls = tls or tls_files is not None
    if not REGISTRY_BIN.exists():
        raise RuntimeError(f"{REGISTRY_BIN} is missing: apt-get install docker-registry")
    password = password or secrets.token_hex(8)
    last_error = ""
    for _attempt in range(5):
        workdir = Path(tempfile.mkdtemp(prefix="registry-", dir=parent))
        token = TokenServer(workdir, username, password) if auth == "token" else None
        port = free_port(address)
        cfg = workdir / "config.yml"
        cfg.write_text(_config(workdir, port, auth, username, password, token, tls, address, tls_files, client_ca,
                               access_log))
        log_path = workdir / "registry.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen([str(REGISTRY_BIN), "serve", str(cfg)], stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                    "OTEL_TRACES_EXPORTER": "none"})
        reg = Registry(f"{address}:{port}", workdir, auth, proc, username if auth != "none" else "",
                       password if auth != "none" else "", token, log_path, tls, client_cert)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"{reg.url}/v2/", timeout=2, verify=reg.ssl_context())
                if r.status_code in (200, 401):
                    return reg
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        last_error = log_path.read_text(errors="replace")[-2000:]
        reg.stop()
    raise RuntimeError(f"docker-registry did not start: {last_error}")


@contextlib.contextmanager
def running_registry(parent: Path | None = None, **kw: Any) -> Iterator[Registry]:
    reg = start_registry(parent, **kw)
    try:
        yield reg
    finally:
        reg.stop()


# -- registries.conf -----------------------------------------------------------------------------


def rewrite_conf(rewrites: Mapping[str, str], insecure: Sequence[str] = (), blocked: Sequence[str] = (),
                 mirrors: Mapping[str, tuple[str, Sequence[str]]] | None = None) -> str:
    """registries.conf v2 text: ``rewrites`` prefix → location (e.g. ``docker.io/library`` →
    ``127.0.0.1:PORT/library``); ``mirrors`` prefix → (location, [mirror locations])."""
    out = []
    for prefix, location in rewrites.items():
        out.append(f'[[registry]]\nprefix = "{prefix}"\nlocation = "{location}"\n'
                   + ("insecure = true\n" if location in insecure else ""))
    for prefix, (location, ms) in (mirrors or {}).items():
        out.append(f'[[registry]]\nprefix = "{prefix}"\nlocation = "{location}"\n')
        for m in ms:
            out.append(f'[[registry.mirror]]\nlocation = "{m}"\n')
    for b in blocked:
        out.append(f'[[registry]]\nprefix = "{b}"\nlocation = "{b}"\nblocked = true\n')
    return "\n".join(out)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """An anonymous registry for one test."""
    with running_registry(tmp_path) as reg:
        yield reg


@pytest.fixture(scope="module")
def module_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous registry shared by a module's tests (push under unique names)."""
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg
