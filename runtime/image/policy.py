"""containers-policy.json(5): which images a pull may accept (``image.signature_policy``).

Read as containers/image's ``signature`` package reads it (CRI-O and podman use it):

- ``{"default": [requirements], "transports": {"docker": {SCOPE: [requirements]}}}``;
  ``default`` is mandatory, a requirement list must not be empty, unknown fields in a
  requirement are an error (the whole file is refused: every pull fails with
  FailedPrecondition naming the file, never silently accepting). Only the ``docker``
  transport applies to pulls; other transports' sections are ignored.
- Scope lookup (``docker/policyconfiguration``): for ``reg.example:5000/ns/app:v1`` the
  scopes tried in order are the image itself (``reg.example:5000/ns/app:v1``, or
  ``...@sha256:...`` by digest), ``reg.example:5000/ns/app``, ``reg.example:5000/ns``,
  ``reg.example:5000``, then ``*.example`` (wildcards of the host without its port), then
  the transport's ``""``, then ``default``. The first scope present decides alone.
- The scope is the image as kubelet names it, before registries.conf rewrites or mirrors
  (containers/image: "this MUST reflect user intent").
- All requirements of the list must accept the image:
  ``insecureAcceptAnything`` accepts, ``reject`` rejects, ``sigstoreSigned`` with
  ``keyPath``/``keyPaths``/``keyData``/``keyDatas`` needs one signature made by one of the
  keys whose claims match the image (:mod:`runtime.image.sigstore`); its ``signedIdentity``
  is one of ``matchRepoDigestOrExact`` (default), ``matchExact``, ``matchRepository``,
  ``exactReference``, ``exactRepository``, ``remapIdentity``.
- Not supported, refused with FailedPrecondition naming the requirement (never treated as
  accepting): ``signedBy`` (GPG simple signing: no maintained pure-Python OpenPGP
  verifier exists), ``sigstoreSigned`` with ``fulcio``, ``pki`` or ``rekorPublicKey*``.

A missing file accepts every image, as cri-shim did before it read a policy (containers/image
refuses to run without one; CRI-O ships one with ``insecureAcceptAnything``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.image.reference import Reference, parse

log = logging.getLogger(__name__)

MAX_POLICY_BYTES = 4 << 20
ACCEPT, REJECT, SIGSTORE, UNSUPPORTED = "insecureAcceptAnything", "reject", "sigstoreSigned", "unsupported"
IDENTITY_TYPES = ("matchExact", "matchRepoDigestOrExact", "matchRepository", "exactReference", "exactRepository",
                  "remapIdentity")


@dataclass(frozen=True, slots=True)
class Identity:
    """A ``signedIdentity``: how a signature's claimed docker-reference must relate to the image."""

    type: str = "matchRepoDigestOrExact"
    reference: str = ""  # exactReference's dockerReference / exactRepository's dockerRepository
    prefix: str = ""  # remapIdentity
    signed_prefix: str = ""

    def matches(self, image: Reference, signed: str) -> bool:
        """True when a signature claiming ``signed`` is acceptable for ``image``
        (containers/image ``signature/policy_reference_match.go``)."""
        try:
            sig = parse(signed, default_tag=False)
        except InvalidArgument:
            return False
        if self.type == "matchExact":
            return _exact(sig) and _text(sig) == _text(image)
        if self.type == "matchRepoDigestOrExact":
            return _repo_digest_or_exact(image, sig)
        if self.type == "matchRepository":
            return sig.name == image.name
        if self.type in ("exactReference", "exactRepository"):
            try:
                want = parse(self.reference, default_tag=False)
            except InvalidArgument:
                return False
            if self.type == "exactRepository":
                return sig.name == want.name
            return _exact(want) and _exact(sig) and _text(sig) == _text(want)
        # remapIdentity: the image's prefix replaced by the signed prefix, then as the default.
        name = image.name
        if name == self.prefix or name.startswith(self.prefix + "/"):
            try:
                image = parse(_text(image).replace(self.prefix, self.signed_prefix, 1))
            except InvalidArgument:
                return False
        return _repo_digest_or_exact(image, sig)


def _exact(ref: Reference) -> bool:
    return bool(ref.tag or ref.digest)


def _text(ref: Reference) -> str:
    """``name:tag``, ``name@digest`` or ``name:tag@digest``: the reference as written out."""
    return ref.name + (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")


def _repo_digest_or_exact(image: Reference, sig: Reference) -> bool:
    if not _exact(sig):
        return False
    if image.digest:  # pulled by digest: the repository must match (the digest is checked apart)
        return sig.name == image.name
    return _text(sig) == _text(image)


@dataclass(frozen=True, slots=True)
class Requirement:
    """One requirement object. sigstoreSigned: ``keys`` are PEM public keys given inline,
    ``key_paths`` files holding them (read at each check); ``why`` says what is unsupported
    about an ``unsupported`` one."""

    type: str
    keys: tuple[bytes, ...] = ()
    identity: Identity = field(default_factory=Identity)
    why: str = ""
    key_paths: tuple[Path, ...] = ()

    def public_keys(self, where: str) -> tuple[bytes, ...]:
        """The PEM keys, key files read now (blocking); FailedPrecondition naming a file
        that cannot be read."""
        out = list(self.keys)
        for p in self.key_paths:
            try:
                out.append(p.read_bytes())
            except OSError as exc:
                raise FailedPrecondition(f"{where}: key file {p}: {exc.strerror}") from None
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Policy:
    default: tuple[Requirement, ...]
    docker: dict[str, tuple[Requirement, ...]] = field(default_factory=dict)

    def requirements_for(self, ref: Reference) -> tuple[str, tuple[Requirement, ...]]:
        """(the scope that decided, its requirements) for ``ref``; the scope is
        ``"default"`` for the global default and ``"docker"`` for the transport's ``""``."""
        for scope in scopes(ref):
            if scope in self.docker:
                return scope, self.docker[scope]
        if "" in self.docker:
            return "docker", self.docker[""]
        return "default", self.default


def scopes(ref: Reference) -> list[str]:
    """The scopes tried for ``ref``, most specific first (``DockerReferenceNamespaces``)."""
    out = [ref.digested if ref.digest else ref.tagged]
    name = ref.name
    while True:
        out.append(name)
        if "/" not in name:
            break
        name = name.rsplit("/", 1)[0]
    host = name.split(":", 1)[0] if not name.startswith("[") else name
    while "." in host:
        host = host.split(".", 1)[1]
        out.append("*." + host)
    return out


# -- parsing ---------------------------------------------------------------------------------------


def _fail(path: Path, where: str, msg: str) -> FailedPrecondition:
    return FailedPrecondition(f"signature policy {path}: {where}: {msg}")


def _fields(path: Path, where: str, obj: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _fail(path, where, f"unknown field {unknown[0]!r}")


def _identity(path: Path, where: str, raw: Any) -> Identity:
    if raw is None:
        return Identity()
    if not isinstance(raw, dict) or raw.get("type") not in IDENTITY_TYPES:
        raise _fail(path, where, f"signedIdentity type must be one of {', '.join(IDENTITY_TYPES)}")
    kind = raw["type"]
    if kind == "exactReference":
        _fields(path, where, raw, {"type", "dockerReference"})
        return Identity(kind, reference=str(raw.get("dockerReference", "")))
    if kind == "exactRepository":
        _fields(path, where, raw, {"type", "dockerRepository"})
        return Identity(kind, reference=str(raw.get("dockerRepository", "")))
    if kind == "remapIdentity":
        _fields(path, where, raw, {"type", "prefix", "signedPrefix"})
        prefix, signed = raw.get("prefix"), raw.get("signedPrefix")
        if not isinstance(prefix, str) or not isinstance(signed, str) or not prefix or not signed:
            raise _fail(path, where, "remapIdentity needs prefix and signedPrefix")
        return Identity(kind, prefix=prefix, signed_prefix=signed)
    _fields(path, where, raw, {"type"})
    return Identity(kind)


def _key_sources(path: Path, where: str, raw: dict[str, Any]) -> tuple[tuple[bytes, ...], tuple[Path, ...]]:
    """(key data, key files): files are read when a pull is checked, so a rotated key file
    is used without a policy change (containers/image reads them per evaluation too)."""
    sources = [k for k in ("keyPath", "keyPaths", "keyData", "keyDatas") if k in raw]
    if len(sources) != 1:
        raise _fail(path, where, "sigstoreSigned needs exactly one of keyPath, keyPaths, keyData, keyDatas, "
                                 "fulcio and pki")
    key = sources[0]
    values = raw[key] if key.endswith("s") else [raw[key]]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise _fail(path, where, f"{key} must be a non-empty string" + (" list" if key.endswith("s") else ""))
    if key.startswith("keyPath"):
        if not all(Path(v).is_absolute() for v in values):
            raise _fail(path, where, f"{key} must be absolute paths")
        return (), tuple(Path(v) for v in values)
    out = []
    for v in values:
        try:
            out.append(base64.b64decode(v, validate=True))
        except binascii.Error:
            raise _fail(path, where, f"{key} is not base64") from None
    return tuple(out), ()


def _requirement(path: Path, where: str, raw: Any) -> Requirement:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise _fail(path, where, "a requirement must be an object with a type")
    kind = raw["type"]
    if kind in (ACCEPT, REJECT):
        _fields(path, where, raw, {"type"})
        return Requirement(kind)
    if kind == "signedBy":
        return Requirement(UNSUPPORTED, why="signedBy (GPG simple signing) is not supported by cri-shim; "
                                            "use sigstoreSigned with a public key")
    if kind == "signedBaseLayer":
        return Requirement(UNSUPPORTED, why="signedBaseLayer is not supported by cri-shim")
    if kind != SIGSTORE:
        raise _fail(path, where, f"unknown requirement type {kind!r}")
    rekor = ("rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas")
    _fields(path, where, raw, {"type", "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki",
                               "signedIdentity", *rekor})
    identity = _identity(path, where, raw.get("signedIdentity"))
    unsupported = [k for k in ("fulcio", "pki", *rekor) if k in raw]
    if unsupported:
        return Requirement(UNSUPPORTED, identity=identity,
                           why=f"sigstoreSigned with {unsupported[0]} is not supported by cri-shim "
                               "(public keys only)")
    keys, key_paths = _key_sources(path, where, raw)
    return Requirement(SIGSTORE, keys, identity, key_paths=key_paths)


def _requirements(path: Path, where: str, raw: Any) -> tuple[Requirement, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(path, where, "must be a non-empty list of requirements")
    return tuple(_requirement(path, where, r) for r in raw)


def parse_policy(path: Path, data: bytes) -> Policy:
    """Parse policy.json text; raises FailedPrecondition naming the file and the scope."""
    try:
        doc: Any = json.loads(data)
    except ValueError as exc:
        raise FailedPrecondition(f"signature policy {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail(path, "top level", "not a JSON object")
    _fields(path, "top level", doc, {"default", "transports"})
    if "default" not in doc:
        raise _fail(path, "top level", "\"default\" is required")
    default = _requirements(path, "default", doc["default"])
    transports = doc.get("transports", {})
    if not isinstance(transports, dict):
        raise _fail(path, "transports", "not an object")
    docker = transports.get("docker", {})
    if not isinstance(docker, dict):
        raise _fail(path, "transports.docker", "not an object")
    scoped = {str(scope): _requirements(path, f"transports.docker[{scope!r}]", reqs) for scope, reqs in docker.items()}
    return Policy(default, scoped)


class PolicyCache:
    """The policy at ``path``, re-read when the file's mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._policy: Policy | None = None
        self._missing_logged = False

    @property
    def path(self) -> Path:
        return self._path

    def get(self) -> Policy | None:
        """The policy, or None when the file does not exist (blocking: call from a thread).
        Raises FailedPrecondition for an unreadable or invalid file."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            if not self._missing_logged:
                log.info("signature policy %s does not exist: every image is accepted", self._path)
                self._missing_logged = True
            self._stamp, self._policy = None, None
            return None
        except OSError as exc:
            raise FailedPrecondition(f"signature policy {self._path}: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._policy is None:
            if st.st_size > MAX_POLICY_BYTES:
                raise FailedPrecondition(f"signature policy {self._path} is larger than {MAX_POLICY_BYTES} bytes")
            try:
                data = self._path.read_bytes()
            except OSError as exc:
                raise FailedPrecondition(f"signature policy {self._path}: {exc.strerror}") from None
            self._policy = parse_policy(self._path, data)
            self._stamp = stamp
            self._missing_logged = False
            log.info("signature policy %s loaded: %d docker scopes", self._path, len(self._policy.docker))
        return self._policy
