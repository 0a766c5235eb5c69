"""The node's registry credentials: a containers-auth.json(5) file (``image.auth_file``).

Used for a pull source when kubelet sent no AuthConfig, or one for another registry (its
``server_address``), as CRI-O's ``global_auth_file``. Format and lookup as
containers/image's ``pkg/docker/config`` reads it:

- ``{"auths": {KEY: {"auth": base64("user:password"), "identitytoken": "..."}}}``;
- KEY is a registry host (``quay.io``, ``localhost:5000``) or a repository namespace
  (``quay.io/team``, ``quay.io/team/app``). For ``quay.io/team/app`` the keys are tried
  from the most specific: ``quay.io/team/app``, ``quay.io/team``, ``quay.io``; then, as
  ``docker login`` wrote them, keys with a scheme (``https://index.docker.io/v1/``) by
  their host, where ``docker.io``, ``index.docker.io`` and ``registry-1.docker.io`` are one;
- an entry whose ``auth`` does not decode to ``user:password`` gives no credentials (the
  pull goes anonymous, as in containers/image) and a warning without its content;
- ``credHelpers`` (programs that hand out credentials) are not run: a warning says so.

The credentials are bound to the registry host they were found for: the registry client
never sends them to another host (:meth:`RegistryAuth.applies_to`).

The file is re-read when its mtime or size changes. A missing file means no credentials;
an unreadable or malformed one fails pulls that would use it with FailedPrecondition naming
the file (never its content).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import FailedPrecondition
from runtime.image.auth import RegistryAuth

log = logging.getLogger(__name__)

MAX_AUTH_FILE = 1 << 20
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True, slots=True)
class _Entry:
    username: str
    password: str
    identity_token: str


def _normalize_registry(host: str) -> str:
    return "index.docker.io" if host in _DOCKER_HUB else host


def _legacy_key_host(key: str) -> str:
    """A key written with a scheme (``https://host/v1/``) → its host, normalised."""
    stripped = key.removeprefix("http://").removeprefix("https://")
    if stripped != key:
        stripped = stripped.split("/", 1)[0]
    return _normalize_registry(stripped)


def _decode(path: Path, key: str, value: Any) -> _Entry | None:
    if not isinstance(value, dict):
        raise FailedPrecondition(f"auth file {path}: entry {key!r} is not an object")
    auth = value.get("auth", "")
    token = value.get("identitytoken", "")
    if not isinstance(auth, str) or not isinstance(token, str):
        raise FailedPrecondition(f"auth file {path}: entry {key!r}: auth and identitytoken must be strings")
    try:
        decoded = base64.b64decode(auth, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    user, sep, password = decoded.partition(":")
    if not sep:
        if auth:
            log.warning("auth file %s: the auth field of entry %r is not base64 of user:password; ignored", path, key)
        return None
    return _Entry(user, password.strip("\x00"), token)


class AuthFile:
    """The parsed file, re-read on change. ``path`` None disables it."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._auths: dict[str, Any] = {}
        self._helpers: frozenset[str] = frozenset()

    @property
    def path(self) -> Path | None:
        return self._path

    def _load(self) -> None:
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._stamp, self._auths, self._helpers = None, {}, frozenset()
            return
        except OSError as exc:
            raise FailedPrecondition(f"auth file {self._path}: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        if st.st_size > MAX_AUTH_FILE:
            raise FailedPrecondition(f"auth file {self._path} is larger than {MAX_AUTH_FILE} bytes")
        try:
            data: Any = json.loads(self._path.read_bytes())
        except OSError as exc:
            raise FailedPrecondition(f"auth file {self._path}: {exc.strerror}") from None
        except ValueError:
            raise FailedPrecondition(f"auth file {self._path} is not valid JSON") from None
        if not isinstance(data, dict):
            raise FailedPrecondition(f"auth file {self._path}: not a JSON object")
        auths = data.get("auths", {})
        if not isinstance(auths, dict):
            raise FailedPrecondition(f"auth file {self._path}: \"auths\" is not an object")
        helpers = data.get("credHelpers", {})
        self._auths = auths
        self._helpers = frozenset(helpers) if isinstance(helpers, dict) else frozenset()
        self._stamp = stamp
        log.info("auth file %s loaded: %d entries", self._path, len(auths))

    def lookup(self, host: str, repository: str) -> RegistryAuth | None:
        """Credentials for ``host``/``repository`` or None (blocking: may read the file).
        Raises FailedPrecondition when the file is unreadable or malformed."""
        if self._path is None:
            return None
        self._load()
        if host in self._helpers:
            log.warning("auth file %s: credHelpers are not supported; %s is looked up in auths", self._path, host)
        key = f"{host}/{repository}"
        while True:
            if key in self._auths:
                return self._credentials(key, host)
            if "/" not in key:
                break
            key = key.rsplit("/", 1)[0]
        registry = _normalize_registry(host)
        for k in self._auths:
            if _legacy_key_host(k) == registry:
                return self._credentials(k, host)
        return None

    def _credentials(self, key: str, host: str) -> RegistryAuth | None:
        assert self._path is not None
        entry = _decode(self._path, key, self._auths[key])
        if entry is None:
            return None
        log.debug("registry %s: credentials from auth file %s (entry %r)", host, self._path, key)
        return RegistryAuth(username=entry.username, password=entry.password,
                            identity_token=entry.identity_token, server_address=host)
