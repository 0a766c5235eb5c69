"""Registry credentials (kubelet's AuthConfig) and WWW-Authenticate challenges.

Credentials are never logged: :class:`RegistryAuth` hides its secrets from ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from runtime.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """CRI AuthConfig: username/password, or ``auth`` (base64 "user:password"), or an
    ``identity_token`` (OAuth2 refresh token for the realm), or a ``registry_token`` (a bearer
    token sent as is). ``server_address``, when set, names the registry the credentials are
    for; they are then not sent anywhere else."""

    username: str = ""
    password: str = field(default="", repr=False)
    auth: str = field(default="", repr=False)
    server_address: str = ""
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    def basic(self) -> tuple[str, str] | None:
        """(user, password) from username/password or the ``auth`` field; None if neither."""
        if self.username or self.password:
            return self.username, self.password
        if self.auth:
            try:
                decoded = base64.b64decode(self.auth, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidArgument("auth config: 'auth' is not base64 of user:password") from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("auth config: 'auth' does not decode to user:password")
            return user, password
        return None

    def is_empty(self) -> bool:
        return not (self.username or self.password or self.auth or self.identity_token or self.registry_token)

    def applies_to(self, host: str) -> bool:
        """True when these credentials may be sent to registry ``host``."""
        if not self.server_address:
            return True
        server = self.server_address
        for scheme in ("https://", "http://"):
            if server.startswith(scheme):
                server = server[len(scheme) :]
        server = server.split("/", 1)[0]
        if server in ("index.docker.io", "registry-1.docker.io"):
            server = "docker.io"
        if host in ("index.docker.io", "registry-1.docker.io"):
            host = "docker.io"
        return server == host


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_.\-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse one WWW-Authenticate header value (RFC 7235) into challenges."""
    out: list[Challenge] = []
    text = header.strip()
    while text:
        m = re.match(r"([A-Za-z][A-Za-z0-9_\-]*)\s*", text)
        if not m:
            break
        scheme = m.group(1).lower()
        text = text[m.end() :]
        params: dict[str, str] = {}
        while True:
            pm = _PARAM.match(text)
            if not pm:
                break
            key = pm.group(1).lower()
            value = pm.group(2) if pm.group(2) is not None else (pm.group(3) or "")
            params[key] = re.sub(r"\\(.)", r"\1", value)
            text = text[pm.end() :]
        out.append(Challenge(scheme, params))
        text = text.lstrip(", ")
    return out
